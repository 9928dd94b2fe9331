"""The daemon's end of a worker socket, over a real socket pair (the worker end is blocking)."""
from __future__ import annotations

import asyncio
import gc
import socket

import pytest

from daemon.workers.connection import ConnectionLost, WorkerConnection
from protocol import messages
from protocol.frames import encode_frame

pytestmark = pytest.mark.timeout(10)


async def connected() -> tuple[WorkerConnection, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = WorkerConnection(max_frame=1024)
    await asyncio.get_running_loop().connect_accepted_socket(lambda: conn, ours)
    return conn, theirs


async def greeted() -> tuple[WorkerConnection, socket.socket]:
    """A connection past its handshake."""
    conn, worker = await connected()
    worker.sendall(hello())
    await conn.handshake(2)
    return conn, worker


def read_to_eof(sock: socket.socket) -> bool:
    sock.settimeout(2)
    while sock.recv(65536):
        pass
    return True


def hello() -> bytes:
    return encode_frame({"kind": messages.HELLO, "pid": 1})


def test_frames_split_and_coalesced_reach_their_waiters():
    async def main():
        conn, worker = await connected()
        first = hello() + encode_frame({"kind": messages.LOADED, "ok": True})
        worker.sendall(first[:3])
        await asyncio.sleep(0.01)
        reply = asyncio.ensure_future(conn.request({"kind": messages.LOAD}, messages.LOADED, 2))
        worker.sendall(first[3:])
        assert (await conn.handshake(2))["kind"] == messages.HELLO
        assert (await reply)["ok"] is True
        worker.close()
        assert isinstance(await asyncio.wait_for(conn.lost, 2), ConnectionLost)
    asyncio.run(main())


def test_a_result_for_another_batch_never_answers_this_one():
    async def main():
        conn, worker = await greeted()
        answered = []
        result = conn.start_batch(7, [], lambda part: None, answered.append)
        worker.sendall(encode_frame(messages.result(6, [])) + encode_frame(messages.result(7, [])))
        assert (await asyncio.wait_for(result, 2))["batch_id"] == 7
        assert [m["batch_id"] for m in answered] == [7]
        worker.close()
    asyncio.run(main())


def test_garbage_or_oversized_frames_lose_the_connection_and_fail_waiters():
    async def main():
        for junk in (b"\x00\x00\x00\x03abc", b"\x00\x10\x00\x00"):
            conn, worker = await greeted()
            result = conn.start_batch(1, [], lambda part: None, lambda message: None)
            worker.sendall(junk)
            with pytest.raises(ConnectionLost, match="broken"):
                await asyncio.wait_for(result, 2)
            assert await asyncio.to_thread(read_to_eof, worker)   # the daemon closed its end
            worker.close()
    asyncio.run(main())


def test_a_truncated_frame_at_eof_is_a_broken_connection():
    async def main():
        conn, worker = await connected()
        worker.sendall(hello() + encode_frame(messages.result(1, []))[:5])
        await conn.handshake(2)
        worker.shutdown(socket.SHUT_WR)
        reason = await asyncio.wait_for(conn.lost, 2)
        assert "inside a frame" in str(reason)
        worker.close()
    asyncio.run(main())


def test_first_frame_must_be_hello():
    async def main():
        conn, worker = await connected()
        worker.sendall(encode_frame({"kind": messages.LOADED, "ok": True}))
        with pytest.raises(ConnectionLost, match="expected hello"):
            await conn.handshake(2)
        worker.close()
    asyncio.run(main())


def test_a_silent_worker_times_out_the_handshake():
    async def main():
        conn, worker = await connected()
        with pytest.raises(asyncio.TimeoutError):
            await conn.handshake(0.05)
        worker.close()
    asyncio.run(main())


def test_poisoned_connection_refuses_sends_and_closes_the_socket():
    async def main():
        conn, worker = await greeted()
        conn.close()
        with pytest.raises(ConnectionLost):
            conn.send(messages.ping(1))
        assert await asyncio.to_thread(read_to_eof, worker)
        worker.close()
    asyncio.run(main())


def test_a_lost_batch_that_nobody_awaits_leaves_no_unretrieved_exception():
    """Async workers and continuous batching keep no handle on a batch's future (they learn of
    a loss from ``lost``): its death must not log "Future exception was never retrieved"."""
    async def main():
        reported: list[str] = []
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: reported.append(context["message"]))
        conn, worker = await greeted()
        conn.start_batch(1, [], lambda part: None, lambda message: None)
        conn.join(2, [], [], 0, lambda part: None, lambda message: None)
        worker.close()
        assert isinstance(await asyncio.wait_for(conn.lost, 2), ConnectionLost)
        gc.collect()
        assert reported == []
    asyncio.run(main())
