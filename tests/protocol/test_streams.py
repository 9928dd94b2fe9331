"""protocol/streams.py over real sockets: the asyncio adapter on a socketpair and a Unix socket,
the blocking writer on a socketpair, and the two talking to each other (daemon ↔ worker).

The blocking side reads as the worker and the zygote do, through FrameDecoder (its edge cases are
tests/protocol/test_frames.py's)."""
from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.frames import HEADER, ProtocolError, encode_frame
from protocol.streams import read_frame, send_frame, write_frame
from tests.support.frames import FrameReader
from tests.protocol.samples import BINARY, SAMPLES

MESSAGES = list(SAMPLES.values())
BIG = {"kind": "predict", "body": BINARY * 8000}  # ~6 MB, under the 6553500-byte default limit


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for Unix sockets (their paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="torchd-t-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run(coro, timeout: float = 10):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def streams_on(sock: socket.socket):
    sock.setblocking(False)
    return await asyncio.open_connection(sock=sock)


# ---------------------------------------------------------------------------- blocking

def test_blocking_round_trip(pair):
    a, b = pair
    for message in MESSAGES:
        send_frame(a, message)
    reader = FrameReader(b)
    assert [reader.next() for _ in MESSAGES] == MESSAGES


def test_blocking_large_frame_across_many_recvs(pair):
    a, b = pair
    sender = threading.Thread(target=send_frame, args=(a, BIG))
    sender.start()
    assert FrameReader(b).next() == BIG
    sender.join(5)
    assert not sender.is_alive()


# ----------------------------------------------------------------------------- asyncio

def test_async_round_trip_on_socketpair(pair):
    async def main():
        _, writer = await streams_on(pair[0])
        reader, peer = await streams_on(pair[1])

        async def send() -> None:
            for message in [*MESSAGES, BIG]:
                write_frame(writer, message)
                await writer.drain()

        async def receive() -> list:
            return [await read_frame(reader) for _ in range(len(MESSAGES) + 1)]

        # BIG is larger than the socket buffers: reading and writing must overlap.
        _, got = await asyncio.gather(send(), receive())
        writer.close()
        await writer.wait_closed()
        assert await read_frame(reader) is None  # clean EOF
        peer.close()
        return got

    assert run(main()) == [*MESSAGES, BIG]


def test_async_split_writes(pair):
    a, b = pair
    stream = b"".join(encode_frame(msg) for msg in MESSAGES)

    async def main():
        reader, writer = await streams_on(b)
        loop = asyncio.get_running_loop()

        def trickle() -> None:
            for i in range(len(stream)):
                a.sendall(stream[i:i + 1])
            a.shutdown(socket.SHUT_WR)

        sending = loop.run_in_executor(None, trickle)
        got = []
        while (message := await read_frame(reader)) is not None:
            got.append(message)
        await sending
        writer.close()
        return got

    assert run(main()) == MESSAGES


@pytest.mark.parametrize("data, words", [
    (encode_frame(SAMPLES["load"])[:2], "truncated"),
    (encode_frame(SAMPLES["load"])[:4], "truncated"),
    (encode_frame(SAMPLES["load"])[:-1], "truncated"),
    (HEADER.pack(3) + b"\x92\x01\x02", "expected a map"),  # [1, 2]
    (HEADER.pack(1) + b"\xc1", "undecodable"),
])
def test_async_truncated_and_garbage_raise(pair, data, words):
    a, b = pair
    a.sendall(data)
    a.shutdown(socket.SHUT_WR)

    async def main():
        reader, writer = await streams_on(b)
        try:
            with pytest.raises(ProtocolError, match=words):
                await read_frame(reader)
        finally:
            writer.close()

    run(main())


def test_async_oversize_refused_before_payload(pair):
    a, b = pair
    a.sendall(HEADER.pack(10_000_000))  # stays open: waiting for the payload would hang

    async def main():
        reader, writer = await streams_on(b)
        try:
            with pytest.raises(ProtocolError, match="exceeds the limit"):
                await asyncio.wait_for(read_frame(reader), 2)
        finally:
            writer.close()

    run(main())


def test_async_unix_socket_echo(short_dir):
    path = str(short_dir / "s.sock")

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (message := await read_frame(reader)) is not None:
            write_frame(writer, message)
            await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_unix_server(echo, path)
        async with server:
            reader, writer = await asyncio.open_unix_connection(path)
            for message in MESSAGES:
                write_frame(writer, message)
            await writer.drain()
            got = [await read_frame(reader) for _ in MESSAGES]
            writer.write_eof()
            assert await read_frame(reader) is None
            writer.close()
            await writer.wait_closed()
        return got

    assert run(main()) == MESSAGES


def test_async_daemon_and_blocking_worker_over_unix_socket(short_dir):
    """The real arrangement: the daemon (asyncio) listens, a worker (blocking) connects."""
    path = str(short_dir / "w.sock")

    def worker() -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(path)
            send_frame(sock, SAMPLES["hello"])
            frames = FrameReader(sock)
            while (message := frames.next()) is not None:
                if message["kind"] == "predict":
                    send_frame(sock, {"kind": "result", "batch_id": message["batch_id"],
                                      "responses": [{"id": r["id"], "n": len(r["parameters"])}
                                                    for r in message["requests"]]})

    async def main():
        connected: asyncio.Future = asyncio.get_running_loop().create_future()
        server = await asyncio.start_unix_server(
            lambda r, w: connected.set_result((r, w)), path)
        async with server:
            thread = threading.Thread(target=worker)
            thread.start()
            reader, writer = await connected
            hello = await read_frame(reader)
            write_frame(writer, SAMPLES["predict"])
            await writer.drain()
            result = await read_frame(reader)
            writer.close()
            await writer.wait_closed()
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 5)
        return hello, result

    hello, result = run(main())
    assert hello == SAMPLES["hello"]
    assert result == {"kind": "result", "batch_id": 7,
                      "responses": [{"id": "r-1", "n": 2}, {"id": "r-2", "n": 0}]}
