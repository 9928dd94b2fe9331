"""Exec entry point: ``python -m worker --socket PATH --worker-id ID --daemon-pid PID ...``."""
from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker", description="torchd model worker")
    parser.add_argument("--socket", required=True, help="Unix socket the daemon listens on")
    parser.add_argument("--worker-id", required=True, help="worker id, e.g. 9003")
    parser.add_argument("--daemon-pid", type=int, required=True,
                        help="exit when this process dies (<= 0: never)")
    parser.add_argument("--title", default=None, help="process title (default: torchd worker ID)")
    parser.add_argument("--python-path", default=None,
                        help="the model's own packages, searched before everything else")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads: also OMP/MKL_NUM_THREADS, which the OpenMP and MKL "
                             "runtimes read once as torch loads them (0: their defaults)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:   # before anything imports torch
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    if args.python_path:
        sys.path.insert(0, args.python_path)
    from worker.process import run_worker   # after the path: the model's packages come first
    run_worker(args.socket, args.worker_id, args.daemon_pid,
               args.title or f"torchd worker {args.worker_id}")


if __name__ == "__main__":
    main()
