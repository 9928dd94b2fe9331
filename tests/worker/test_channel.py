"""The worker's Channel in-process, over a socketpair: which thread receives, and when.

The main thread receives while it waits for work; the standby reader takes over while a task
(everything between two next_message() calls) runs longer than TAKEOVER_SECONDS.
"""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from protocol import messages
from protocol.frames import encode_frame
from tests.support.frames import FrameReader
from tests.support.waiting import wait_until
from worker import channel as channel_module
from worker.channel import Channel

# Far above TAKEOVER_SECONDS: how long a test waits for an answer the reader owes.
ANSWER_TIMEOUT = 2.0


class Pair:
    """A Channel on one end of a socketpair; the test plays the daemon on the other."""

    def __init__(self) -> None:
        self.daemon, worker = socket.socketpair()
        self.daemon.settimeout(ANSWER_TIMEOUT)
        self.replies = FrameReader(self.daemon)
        self.abandoned: list[int] = []
        self.channel = Channel(worker, self.abandoned.append)
        before = set(threading.enumerate())
        self.channel.start_reader()
        (self.reader,) = [t for t in threading.enumerate()
                          if t not in before and t.name == "frame-reader"]

    def send(self, *frames: dict) -> None:
        """Several frames in one write: they arrive together."""
        self.daemon.sendall(b"".join(encode_frame(f) for f in frames))

    def recv(self) -> dict:
        message = self.replies.next()
        assert message is not None, "the worker's end closed"
        return message

    def reader_takes_over(self, seq: int = 99) -> None:
        """A PING during a task, answered: only the standby reader receives during a task, so
        it has taken over (however long the machine took to run it)."""
        self.send(messages.ping(seq))
        assert self.recv() == messages.pong(seq)

    def wait_parked(self) -> None:
        wait_until(lambda: self.channel.reader_parked, ANSWER_TIMEOUT, 0.01, "the reader parked")

    def next_message(self, timeout: float = ANSWER_TIMEOUT) -> dict | None:
        """next_message() on a helper thread, so a test cannot hang on it."""
        box: list = []
        thread = threading.Thread(target=lambda: box.append(self.channel.next_message()))
        thread.start()
        thread.join(timeout)
        assert box, "next_message() did not return"
        return box[0]


@pytest.fixture
def pair() -> Iterator[Pair]:
    pair = Pair()
    yield pair
    pair.daemon.close()


def predict(batch_id: int, *ids: str) -> dict:
    return messages.predict(batch_id, [messages.request(i, [], []) for i in ids])


def test_idle_main_thread_answers_ping_and_returns_work(pair):
    pair.send(messages.ping(1), predict(1, "a"))
    assert pair.next_message()["batch_id"] == 1
    assert pair.recv() == messages.pong(1)


def test_everything_that_arrived_is_read_before_a_batch_starts(pair, monkeypatch):
    # The standby reader never takes over here: only the main thread can answer this PING.
    monkeypatch.setattr(channel_module, "TAKEOVER_SECONDS", 60.0)
    pair.send(predict(1, "a"), predict(2, "b", "c"), messages.ping(3))
    assert pair.next_message()["batch_id"] == 1
    # The PING came in the same read: answered before batch 1 (the task now running) began.
    assert pair.recv() == messages.pong(3)
    assert pair.next_message()["batch_id"] == 2


def test_reader_answers_ping_during_a_long_task(pair):
    pair.send(predict(1, "a"))
    assert pair.next_message()["batch_id"] == 1
    time.sleep(channel_module.TAKEOVER_SECONDS * 3)  # the batch runs on
    sent = time.monotonic()
    pair.send(messages.ping(7), predict(2, "b"))
    assert pair.recv() == messages.pong(7)
    assert time.monotonic() - sent < 1.0
    # The task ends: frames the reader queued come first, in order, then the main thread
    # receives again.
    assert pair.next_message()["batch_id"] == 2
    pair.send(messages.describe())
    assert pair.next_message() == messages.describe()


def test_ping_during_a_task_that_began_after_the_reader_parked(pair, monkeypatch):
    monkeypatch.setattr(channel_module, "PARK_AFTER_SECONDS", 0.05)
    waiting: list = []
    idle = threading.Thread(target=lambda: waiting.append(pair.channel.next_message()))
    idle.start()  # the main thread waits for work long enough for the reader to park
    pair.wait_parked()
    pair.send(predict(1, "a"))
    idle.join(ANSWER_TIMEOUT)
    assert waiting[0]["batch_id"] == 1  # a long task begins: it wakes the reader
    time.sleep(channel_module.TAKEOVER_SECONDS * 3)
    pair.send(messages.ping(9))
    assert pair.recv() == messages.pong(9)


def test_reader_lets_go_when_the_task_ends(pair, monkeypatch):
    monkeypatch.setattr(channel_module, "PARK_AFTER_SECONDS", 0.05)
    pair.send(predict(1, "a"))
    assert pair.next_message()["batch_id"] == 1
    pair.reader_takes_over()   # the reader receives for the task
    assert not pair.channel.reader_parked
    idle = threading.Thread(target=pair.channel.next_message)
    idle.start()  # the task ends with nothing more to read: the reader must be told
    pair.wait_parked()
    pair.send(messages.describe())
    idle.join(ANSWER_TIMEOUT)
    assert not idle.is_alive()


def test_many_tasks_short_and_long_keep_every_frame_in_order(pair):
    for batch_id in range(1, 60):
        pair.send(predict(batch_id, "r"), messages.ping(batch_id))
        assert pair.next_message()["batch_id"] == batch_id
        assert pair.recv() == messages.pong(batch_id)
        if batch_id % 10 == 0:
            time.sleep(channel_module.TAKEOVER_SECONDS * 2)  # now and then the reader takes over


def test_frames_larger_than_one_read_and_split_frames(pair):
    body = bytes(range(256)) * 4096  # 1 MiB: several reads
    big = messages.predict(1, [messages.request("a", [], [messages.parameter("b", None, body)])])
    frame = encode_frame(big)
    pair.daemon.sendall(frame[:3])  # even the header arrives in pieces
    got: list = []
    thread = threading.Thread(target=lambda: got.append(pair.channel.next_message()))
    thread.start()
    time.sleep(0.05)
    pair.daemon.sendall(frame[3:])
    thread.join(ANSWER_TIMEOUT)
    assert got == [big]


def test_eof_while_idle_ends_without_protocol_error(pair):
    pair.send(messages.shutdown())
    pair.daemon.shutdown(socket.SHUT_WR)
    assert pair.next_message() == messages.shutdown()  # frames before EOF still count
    assert pair.next_message() is None
    assert pair.next_message() is None
    assert pair.channel.protocol_error is False


@pytest.mark.parametrize("garbage", [b"\x00\x00\x00\x03abc", b"\x00\x00"])
def test_bad_or_truncated_frame_is_a_protocol_error(pair, garbage):
    pair.daemon.sendall(garbage)
    pair.daemon.shutdown(socket.SHUT_WR)
    assert pair.next_message() is None
    assert pair.channel.protocol_error is True


def eof_during_a_taken_over_task(pair, monkeypatch, grace: float) -> None:
    """A task runs long enough for the standby reader to take over; then the daemon hangs up."""
    monkeypatch.setattr(channel_module, "EOF_GRACE_SECONDS", grace)
    pair.send(predict(1, "a"))
    assert pair.next_message()["batch_id"] == 1
    pair.reader_takes_over()
    pair.daemon.shutdown(socket.SHUT_WR)
    wait_until(lambda: pair.channel.closed, ANSWER_TIMEOUT, 0.01, "the reader read the EOF")


def test_eof_during_a_long_task_abandons_after_the_grace_period(pair, monkeypatch):
    eof_during_a_taken_over_task(pair, monkeypatch, 0.2)
    wait_until(lambda: pair.abandoned, ANSWER_TIMEOUT, 0.01, "the task abandoned")
    assert pair.abandoned == [0]
    assert pair.next_message() is None


def test_eof_during_a_task_that_finishes_in_time_is_not_abandoned(pair, monkeypatch):
    eof_during_a_taken_over_task(pair, monkeypatch, 30.0)   # "in time": well within it
    assert pair.next_message() is None
    pair.channel.finished()
    pair.reader.join(ANSWER_TIMEOUT)   # the reader's last act: abandon, or not
    assert not pair.reader.is_alive()
    assert pair.abandoned == []


def test_take_arrived_takes_everything_without_waiting(pair):
    assert pair.channel.take_arrived(wait=False) == []
    pair.send(predict(1, "a"), messages.ping(4), predict(2, "b"))
    arrived = wait_until(lambda: pair.channel.take_arrived(wait=False), ANSWER_TIMEOUT, 0.01,
                         "frames taken")
    assert [m["batch_id"] for m in arrived] == [1, 2]   # the PING is not among them ...
    assert pair.recv() == messages.pong(4)   # ... but answered


def test_take_arrived_waits_for_one_when_asked_and_ends_with_none(pair):
    box: list = []
    thread = threading.Thread(target=lambda: box.append(pair.channel.take_arrived(wait=True)))
    thread.start()
    pair.send(predict(1, "a"))
    thread.join(ANSWER_TIMEOUT)
    assert [m["batch_id"] for m in box[0]] == [1]
    pair.send(predict(2, "b"))
    pair.daemon.shutdown(socket.SHUT_WR)
    arrived = wait_until(lambda: pair.channel.closed and pair.channel.take_arrived(wait=False),
                         ANSWER_TIMEOUT, 0.01, "frames and the end taken")
    assert arrived[-1] is None and [m["batch_id"] for m in arrived[:-1]] == [2]
    assert pair.channel.take_arrived(wait=True) == [None]


def test_frames_that_arrive_during_a_long_step_are_taken_before_the_next(pair):
    assert pair.channel.take_arrived(wait=False) == []   # a step begins
    pair.reader_takes_over()   # the standby reader receives during the step ...
    pair.send(predict(3, "c"))
    # ... and queues what comes for the next take
    arrived = wait_until(lambda: pair.channel.take_arrived(wait=False), ANSWER_TIMEOUT, 0.01,
                         "the frame taken")
    assert [m["batch_id"] for m in arrived] == [3]


def test_receive_message_reads_alone_while_the_standby_reader_parks(pair, monkeypatch):
    monkeypatch.setattr(channel_module, "PARK_AFTER_SECONDS", 0.05)
    pair.send(messages.ping(1), predict(1, "a"))
    assert pair.channel.receive_message()["batch_id"] == 1
    assert pair.recv() == messages.pong(1)
    pair.wait_parked()
    pair.daemon.shutdown(socket.SHUT_WR)
    assert pair.channel.receive_message() is None
