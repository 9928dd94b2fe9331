"""The inference listener (daemon/ops/listeners.py): uvicorn over a socket torchd bound, with
TCP_NODELAY on every accepted connection and the daemon's own shutdown (no signal handlers)."""
from __future__ import annotations

import asyncio
import signal
import socket

import uvloop

from daemon.config.values import BindAddress
from daemon.ops.listeners import (InferenceServer, NoDelayHttpTools, set_nodelay,
                                  uvicorn_config)


async def answer(scope, receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


class SocketTransport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str):
        return self.sock if name == "socket" else None


def nodelay(sock) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_set_nodelay_turns_nagle_off_on_tcp_and_leaves_unix_sockets_alone():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    left, right = socket.socketpair(socket.AF_UNIX)
    try:
        accepted.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        set_nodelay(SocketTransport(accepted))
        assert nodelay(accepted) == 1
        set_nodelay(SocketTransport(left))   # no TCP options on a Unix socket: no error
    finally:
        for sock in (server, client, accepted, left, right):
            sock.close()


def test_the_inference_server_sets_nodelay_and_leaves_the_signals_to_the_daemon():
    async def main():
        before = signal.getsignal(signal.SIGTERM)
        sock = socket.create_server(("127.0.0.1", 0))
        address = BindAddress("http", host="127.0.0.1", port=0)
        server = InferenceServer(uvicorn_config(answer, address, config=None))
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        try:
            while not server.started:
                await asyncio.sleep(0.01)
            assert signal.getsignal(signal.SIGTERM) is before   # uvicorn installed none
            reader, writer = await asyncio.open_connection(*sock.getsockname())
            for _ in range(2):   # keep-alive: the same connection answers twice
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\nok")
                assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            (connection,) = server.server_state.connections
            assert isinstance(connection, NoDelayHttpTools)
            assert nodelay(connection.transport.get_extra_info("socket")) == 1
            writer.close()
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 10)
    uvloop.run(main())
