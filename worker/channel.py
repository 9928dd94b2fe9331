"""The worker's end of its socket: who receives frames, and when.

While the main thread waits for work it receives frames itself, so a PREDICT reaches the
handler without a thread switch. Whatever the main thread does between two ``next_message()``
calls (a batch, the load, a describe) is a *task*. Once a task has run for TAKEOVER_SECONDS,
the standby reader thread takes over the receiving side until the task ends: it answers PING
(heartbeats keep working during a long batch) and queues every other frame for the main
thread. One lock (``_recv_lock``) makes sure that only one thread reads and
decodes at a time; the reader reads only while the task it took over is still running, and
the main thread only between tasks. All sends share another lock.
"""
from __future__ import annotations

import logging
import os
import queue
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from protocol import messages
from protocol.frames import DEFAULT_MAX_FRAME, FrameDecoder, ProtocolError, encode_frame
from worker import pipes
from worker.exits import EXIT_OK, EXIT_PROTOCOL

logger = logging.getLogger(__name__)

# After EOF, how long a busy main thread may keep running before the process exits anyway:
# nobody can receive its result.
EOF_GRACE_SECONDS = 1.0
# A task running this long gets the standby reader receiving for it (PING is answered at
# most about this late while a batch runs; heartbeats allow seconds).
TAKEOVER_SECONDS = 0.02
# With no task started for this long, the standby reader stops looking and waits to be woken.
PARK_AFTER_SECONDS = 0.5
# Bigger frames take several reads; a bigger buffer would be private memory in every worker.
RECV_BUFFER_BYTES = 64 * 1024


class Channel:
    """Frames in and out of one socket, shared by the main thread and the standby reader."""

    def __init__(self, sock: socket.socket, on_abandoned: Callable[[int], None]) -> None:
        self._sock = sock
        self._on_abandoned = on_abandoned
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()  # guards the socket's receiving side and _decoder
        self._decoder = FrameDecoder(DEFAULT_MAX_FRAME)
        self._buffer = memoryview(bytearray(RECV_BUFFER_BYTES))
        # Frames received but not yet taken by the main thread; None marks the end.
        self._inbox: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._closed = False  # EOF or a bad frame was read: the socket is not read again
        self._finished = threading.Event()
        self._standby = StandbyReader(self)
        self.protocol_error = False

    def send(self, message: dict[str, Any]) -> None:
        self.send_encoded(encode_frame(message))

    def send_encoded(self, frame: bytes) -> None:
        with self._send_lock:
            self._sock.sendall(frame)

    def accept_frames_up_to(self, size: int) -> None:
        """The daemon's batches may be this big (LOAD says so: batch size x request size).

        No lock: the standby reader may hold it while blocked in recv, and until LOADED is
        sent the daemon sends nothing but small PINGs, which either limit lets through."""
        self._decoder.max_size = size

    def start_reader(self) -> None:
        self._standby.start()

    def next_message(self) -> dict[str, Any] | None:
        """The next frame for the main thread; None once the daemon has hung up.

        The main thread's previous task ends here and the returned frame starts the next one.
        """
        self._standby.task_ended()
        with self._recv_lock:
            if not self._inbox.empty():
                # Queued by the reader during the last task; frames that arrived after it let
                # go are read too, so a PING among them is answered before that batch starts.
                self._receive(block=False)
            while self._inbox.empty() and not self._closed:
                self._receive(block=True)
            message = None if self._inbox.empty() else self._inbox.get_nowait()
        if message is not None:
            self._standby.task_started()
        return message

    def take_arrived(self, wait: bool) -> list[dict[str, Any] | None]:
        """Every frame that has arrived, in order, None last once the daemon has hung up
        (continuous batching takes them all before each step). ``wait``: at least one, waiting
        for it; else possibly none.

        Like next_message(), it ends the main thread's task and starts the next one (the
        step that follows, even when nothing arrived)."""
        self._standby.task_ended()
        with self._recv_lock:
            self._receive(block=False)
            while wait and self._inbox.empty() and not self._closed:
                self._receive(block=True)
            arrived: list[dict[str, Any] | None] = []
            while not self._inbox.empty():
                arrived.append(self._inbox.get_nowait())
        if wait and not arrived:
            arrived.append(None)   # closed, and its end taken by an earlier call
        if arrived[-1:] != [None]:
            self._standby.task_started()
        return arrived

    def receive_message(self) -> dict[str, Any] | None:
        """The next frame, for a thread that does nothing but receive (async mode); None once
        the daemon has hung up. No task ever runs, so the standby reader stays parked and
        this thread alone reads."""
        self._standby.task_ended()
        with self._recv_lock:
            while self._inbox.empty() and not self._closed:
                self._receive(block=True)
            return None if self._inbox.empty() else self._inbox.get_nowait()

    def finished(self) -> None:
        """The main thread is done: the reader need not force an exit after EOF."""
        self._finished.set()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def reader_parked(self) -> bool:
        """True while the standby reader waits for the next task to start (for tests)."""
        return self._standby.parked

    def receive_for(self, task: int) -> bool:
        """Reader side: receive what has arrived if ``task`` still runs; False if it ended."""
        with self._recv_lock:
            if not self._standby.running(task):
                return False  # the main thread receives again (or is about to)
            self._receive(block=True)
            return True

    def fileno(self) -> int:
        return self._sock.fileno()

    def abandon_if_unfinished(self) -> None:
        """Reader side, after EOF: give the busy main thread a grace period, then exit."""
        if not self._finished.wait(EOF_GRACE_SECONDS):
            logger.warning("daemon hung up while a batch was running; exiting")
            self._on_abandoned(EXIT_PROTOCOL if self.protocol_error else EXIT_OK)

    def _receive(self, block: bool) -> None:
        """Read and dispatch what the socket holds, waiting for data if ``block``. Call with
        _recv_lock held. EOF or a bad frame closes the channel: None is queued after the frames
        that came before it."""
        if self._closed:
            return
        try:
            ended = self._read(block)
        except ProtocolError as exc:
            logger.error("bad frame from the daemon: %s", exc)
            self.protocol_error = True
            ended = True
        except OSError as exc:
            logger.info("socket closed: %s", exc)
            ended = True
        if ended:
            self._closed = True
            self._inbox.put(None)

    def _read(self, block: bool) -> bool:
        """Dispatch every whole frame that has arrived; True at EOF. One read normally does:
        a Unix stream socket hands over all it holds, up to the buffer's size."""
        flags = 0 if block else socket.MSG_DONTWAIT
        while True:
            try:
                count = self._sock.recv_into(self._buffer, 0, flags)
            except BlockingIOError:
                return False
            if count == 0:
                self._decoder.close()  # a frame cut short by EOF is a protocol error
                return True
            for message in self._decoder.feed(self._buffer[:count]):
                self._dispatch(message)
            if count < len(self._buffer):
                return False
            flags = socket.MSG_DONTWAIT  # the buffer was filled: more may be waiting

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message.get("kind") == messages.PING:
            self.send(messages.pong(message.get("seq", 0)))
        else:
            self._inbox.put(message)


class StandbyReader:
    """The thread that receives while the main thread runs a task longer than
    TAKEOVER_SECONDS.

    The main thread only records when a task starts and ends (no wake-up, no lock): this
    thread looks about every TAKEOVER_SECONDS while tasks keep coming, and parks on an event
    (which the next task start sets) once none has started for PARK_AFTER_SECONDS. When a
    task it took over ends, the main thread writes a byte to a pipe to get it out of poll().
    """

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._started = 0  # tasks started so far; the latest one's token
        self._task: tuple[int, float] | None = None  # (token, monotonic start) while one runs
        self._receiving = False
        self._parked = False
        self._unpark = threading.Event()
        self._kick_r, self._kick_w = os.pipe()
        os.set_blocking(self._kick_r, False)
        os.set_blocking(self._kick_w, False)

    def start(self) -> None:
        threading.Thread(target=self._run, name="frame-reader", daemon=True).start()

    def task_started(self) -> None:
        """Main thread: a task begins now."""
        self._started += 1
        self._task = (self._started, time.monotonic())
        if self._parked:
            self._unpark.set()

    def task_ended(self) -> None:
        """Main thread: the task is over; the main thread will receive again."""
        self._task = None
        if self._receiving:
            self._kick()

    @property
    def parked(self) -> bool:
        return self._parked

    def running(self, token: int) -> bool:
        task = self._task
        return task is not None and task[0] == token

    def _kick(self) -> None:
        try:
            os.write(self._kick_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of kicks already: the reader will wake

    def _run(self) -> None:
        seen, quiet_since = self._started, time.monotonic()
        while not self._channel.closed:
            task, now = self._task, time.monotonic()
            if task is None:
                if self._started != seen:
                    seen, quiet_since = self._started, now
                if now - quiet_since < PARK_AFTER_SECONDS:
                    time.sleep(TAKEOVER_SECONDS)
                else:
                    self._park()
                    seen, quiet_since = self._started, time.monotonic()
                continue
            token, started = task
            due = started + TAKEOVER_SECONDS - now
            if due > 0:
                time.sleep(due)
            elif not self._receive_during(token):
                self._channel.abandon_if_unfinished()
                return

    def _park(self) -> None:
        self._unpark.clear()
        self._parked = True
        if self._task is None:  # checked after announcing: a task that began meanwhile counts
            self._unpark.wait()
        self._parked = False

    def _receive_during(self, token: int) -> bool:
        """Receive until task ``token`` ends; False once the channel has closed (EOF)."""
        poller = select.poll()
        poller.register(self._channel.fileno(), select.POLLIN)
        poller.register(self._kick_r, select.POLLIN)
        self._receiving = True
        try:
            # Set before checking: task_ended() either sees it and kicks, or this sees the end.
            while self.running(token) and not self._channel.closed:
                events = dict(poller.poll())
                if self._kick_r in events:
                    pipes.drain(self._kick_r)
                if self._channel.fileno() in events and not self._channel.receive_for(token):
                    break  # the task ended while this thread waited for the receive lock
        finally:
            self._receiving = False
        return not self._channel.closed
