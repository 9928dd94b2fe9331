"""torchd replicas behind a real HAProxy on one machine, the way a Kubernetes Service or a
cloud load balancer sees them: each replica on its own loopback address (127.0.0.2, .3, ...)
with the same ports, one shared read-only model store, one shared config.properties naming
the models every replica loads (what a ConfigMap is to the pods of a Deployment), and HAProxy
sending traffic only to replicas whose /v2/health/ready answers 200.

Used by scripts/replicas (a user runs it) and tests/integration/test_deploy_replicas.py. Every
process is started here and stopped by its pid.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parent.parent
PORT_NAMES = ("inference", "management", "metrics")
# gRPC listens too (TorchServe's 7070/7071 by default): each replica on its own host's ports
GRPC_PORT_NAMES = ("grpc-inference", "grpc-management")


def free_ports(hosts: list[str], count: int) -> list[int]:
    """``count`` ports that are free on every one of ``hosts``."""
    ports: list[int] = []
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = probe.getsockname()[1]
        if port not in ports and all(_bindable(host, port) for host in hosts):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"no {count} ports free on all of {hosts}")


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_for(check, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout} s")
        time.sleep(interval)


@dataclass
class Replica:
    """One `torchd serve` on ``host``: the shared config file, and on its command line what
    differs between replicas (its addresses, its log directory)."""

    name: str
    host: str
    ports: dict[str, int]
    workdir: Path
    config: Path
    proc: subprocess.Popen | None = None
    known: dict[int, psutil.Process] = field(default_factory=dict)

    def url(self, api: str, path: str) -> str:
        return f"http://{self.host}:{self.ports[api]}{path}"

    def start(self, timeout: float = 120) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Started, without waiting for it (several replicas then start side by side)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        addresses = [f"--{api}-address=http://{self.host}:{self.ports[api]}"
                     for api in PORT_NAMES]
        addresses += [f"--{api}-address={self.host}:{self.ports[api]}"
                      for api in GRPC_PORT_NAMES]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("TS_CONFIG_FILE", None)
        with open(self.workdir / "torchd.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon.ops.cli", "serve", "--ts-config",
                 str(self.config), "--ncs", *addresses,
                 f"--log-location={self.workdir / 'logs'}"], cwd=self.workdir, env=env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.known[self.proc.pid] = psutil.Process(self.proc.pid)

    def wait_ready(self, timeout: float = 120) -> None:
        wait_for(self._ready, timeout, f"replica {self.name} ready")
        self._track()

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"replica {self.name} exited with {self.proc.returncode}:\n"
                               f"{self.log()[-4000:]}")
        try:
            return requests.get(self.url("inference", "/v2/health/ready"), timeout=2).ok
        except requests.RequestException:
            return False

    def _track(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.known.setdefault(child.pid, child)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM (what Kubernetes sends first) and wait for the exit status."""
        self.ask_to_stop()
        return self.proc.wait(timeout)

    def ask_to_stop(self) -> None:
        """SIGTERM without waiting (several replicas then serve out their shutdown_delay side
        by side)."""
        self._track()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the daemon alone, as a node failure or the OOM killer would."""
        self._track()
        self.proc.kill()
        self.proc.wait(10)

    def cleanup(self, asked: bool = False) -> None:
        """Stopped (SIGTERM, unless ``asked`` already), then whatever it left killed by pid."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                if asked:
                    self.proc.wait(30)
                else:
                    self.terminate(30)
        for proc in self.known.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.is_running():
                    proc.kill()

    def model_names(self) -> list[str]:
        listing = requests.get(self.url("management", "/models"), timeout=10).json()
        return [model["modelName"] for model in listing["models"]]

    def inflight(self) -> float:
        text = requests.get(self.url("metrics", "/metrics"), timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("torchd_inflight_requests{"))

    def log(self) -> str:
        try:
            return (self.workdir / "torchd.log").read_text(errors="replace")
        except OSError:
            return ""


HAPROXY_CONFIG = """\
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
{retries}
frontend torchd
    bind {front}
    default_backend replicas
frontend stats
    bind {stats}
    stats enable
    stats uri /stats
backend replicas
    balance roundrobin
    option httpchk GET /v2/health/ready
    http-check expect status 200
    # two failed checks mark a replica DOWN (0.4 s, well within shutdown_delay); a check may
    # take a while on a saturated machine without counting as failed
    timeout check 2s
    default-server inter {interval}ms fall 2 rise 2
{servers}
"""


# A connection refused is retried on another server; a request a server took is never sent
# twice (POST /predictions may not be idempotent).
RETRYING = """\
    retries 3
    option redispatch
    retry-on conn-failure"""
# No retry at all: what a Kubernetes Service (kube-proxy) does with a connection.
NO_RETRY = "    retries 0"


class HAProxy:
    """haproxy -db (foreground) with active health checks on every replica's readiness;
    ``retry``: whether a refused connection is tried on another replica."""

    def __init__(self, workdir: Path, replicas: list[Replica], retry: bool,
                 interval_ms: int = 200) -> None:
        self.binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
        if self.binary is None:
            raise FileNotFoundError("haproxy is not installed (apt-get install haproxy)")
        self.front_port, self.stats_port = free_ports(["127.0.0.1"], 2)
        servers = "\n".join(f"    server {r.name} {r.host}:{r.ports['inference']} check"
                            for r in replicas)
        kind = "retrying" if retry else "no-retry"
        self.config = workdir / f"haproxy-{kind}.cfg"
        self.config.write_text(HAPROXY_CONFIG.format(
            front=f"127.0.0.1:{self.front_port}", stats=f"127.0.0.1:{self.stats_port}",
            retries=RETRYING if retry else NO_RETRY, interval=interval_ms, servers=servers))
        self.log_path = workdir / f"haproxy-{kind}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.front_port}"

    def start(self) -> None:
        check = subprocess.run([self.binary, "-c", "-f", str(self.config)], capture_output=True,
                               text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejects its config: {check.stdout}{check.stderr}")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "-db", "-f", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def states(self) -> dict[str, str]:
        """Each replica's state as HAProxy sees it now: UP, DOWN, ..."""
        try:
            text = requests.get(f"http://127.0.0.1:{self.stats_port}/stats;csv",
                                timeout=5).text
        except requests.RequestException:
            return {}
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {row["svname"]: row["status"].split()[0] for row in rows
                if row["pxname"] == "replicas" and row["svname"] not in ("FRONTEND",
                                                                         "BACKEND")}

    def wait_state(self, name: str, state: str, timeout: float = 30) -> None:
        wait_for(lambda: self.states().get(name) == state, timeout,
                 f"haproxy sees {name} {state}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class ClosedLoopLoad:
    """``clients`` threads, each sending its next request as soon as the last one is answered,
    until stopped; every outcome counted (a status code, or the exception's name)."""

    def __init__(self, url: str, clients: int, body: dict) -> None:
        self.url, self.clients, self.body = url, clients, body
        self.outcomes: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True)
                         for _ in range(clients)]

    def _client(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    outcome = str(session.post(self.url, json=self.body, timeout=30).status_code)
                except requests.RequestException as exc:
                    outcome = type(exc).__name__
                with self._lock:
                    self.outcomes[outcome] += 1

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.outcomes)

    @property
    def failures(self) -> int:
        return sum(n for outcome, n in self.snapshot().items() if outcome != "200")

    def __enter__(self) -> ClosedLoopLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


@dataclass
class Proxies:
    """Two HAProxies in front of the same replicas: one that never retries (as a Kubernetes
    Service), one that retries refused connections elsewhere (as HAProxy or Envoy usually do)."""

    no_retry: HAProxy
    retrying: HAProxy

    def all(self) -> list[HAProxy]:
        return [self.no_retry, self.retrying]

    def wait_state(self, name: str, state: str, timeout: float = 30) -> None:
        for proxy in self.all():
            proxy.wait_state(name, state, timeout)


@contextlib.contextmanager
def replica_set(workdir: Path, model_store: Path, models: list[str], count: int = 3,
                shutdown_delay: float = 2.0) -> Iterator[tuple[list[Replica], Proxies]]:
    """``count`` replicas on 127.0.0.2, .3, ... and the two HAProxies in front; all stopped
    afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    hosts = [f"127.0.0.{2 + index}" for index in range(count)]
    names = PORT_NAMES + GRPC_PORT_NAMES
    ports = dict(zip(names, free_ports(hosts, len(names))))
    config = workdir / "config.properties"
    settings = {"model_store": model_store, "load_models": ",".join(models),
                "default_workers_per_model": 1, "shutdown_delay": shutdown_delay,
                "enable_model_api": "false"}
    config.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    replicas = [Replica(f"r{index + 1}", host, ports, workdir / f"r{index + 1}", config)
                for index, host in enumerate(hosts)]
    proxies = Proxies(HAProxy(workdir, replicas, retry=False),
                      HAProxy(workdir, replicas, retry=True))
    try:
        for replica in replicas:
            replica.launch()
        for replica in replicas:
            replica.wait_ready()
        for proxy in proxies.all():
            proxy.start()
        for replica in replicas:
            proxies.wait_state(replica.name, "UP")
        yield replicas, proxies
    finally:
        for proxy in proxies.all():
            proxy.stop()
        for replica in replicas:
            if replica.proc is not None:
                replica.ask_to_stop()
        for replica in replicas:
            replica.cleanup(asked=True)


def rolling_restart(replica: Replica, proxies: Proxies) -> int:
    """What a Deployment rollout does to one pod: SIGTERM, wait for the exit, start it again;
    returns the exit status once every proxy sends it traffic again."""
    status = replica.terminate()
    replica.start()
    proxies.wait_state(replica.name, "UP")
    return status
