"""The in-memory worker channel and the model stand-in that the dispatcher tests share (the
batch dispatcher's, and the async, continuous and sequence dispatchers')."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from daemon.errors import InternalServerError
from daemon.models.dispatcher import Dispatcher
from daemon.models.job import Failure, Job
from daemon.models.queue import JobQueue
from daemon.models.registry import ModelSettings


class MemoryChannel:
    def __init__(self, refuse: bool = False, fault: Exception | None = None) -> None:
        self.lost = asyncio.get_running_loop().create_future()
        self.refuse = refuse
        self.fault = fault   # raised by start_batch: a bug on the daemon's side
        self.batches: list[tuple[list[dict], Any, asyncio.Future]] = []
        self.closed = False
        self.holders: set[str] = set()   # jobs holding the channel (flow control)

    def start_batch(self, batch_id, requests, on_part, on_result) -> asyncio.Future:
        if self.refuse:
            raise ConnectionResetError("worker closed its socket")
        if self.fault is not None:
            raise self.fault
        result = asyncio.get_running_loop().create_future()
        self.batches.append((requests, on_result, result))
        return result

    def answer(self) -> None:
        requests, on_result, result = self.batches[-1]
        message = {"responses": [{"id": r["id"], "body": b"ok"} for r in requests]}
        on_result(message)
        result.set_result(message)

    def lose(self) -> None:
        self.lost.set_result(ConnectionResetError("worker closed its socket"))
        for _, _, result in self.batches:
            if not result.done():
                result.set_exception(self.lost.result())

    def end_batch(self, batch_id: int | None = None) -> None:
        self.holders.clear()

    def close(self) -> None:
        self.closed = True

    def hold(self, job_id: str) -> None:
        self.holders.add(job_id)

    def release(self, job_id: str) -> None:
        self.holders.discard(job_id)


def model(batch_size: int = 1, delay_ms: int = 0, timeout: int = 10,
          redispatch: bool = True, **more: Any) -> SimpleNamespace:
    loop = asyncio.get_running_loop()
    settings = ModelSettings(batch_size=batch_size, max_batch_delay=delay_ms,
                             response_timeout=timeout, redispatch=redispatch, **more)
    return SimpleNamespace(name="m", version="1.0", settings=settings,
                           queue=JobQueue(10, clock=loop.time))


def failed(event):
    """The error a Failure event carries (anything else fails the test)."""
    assert isinstance(event, Failure), event
    return event.error


def submit(mv: SimpleNamespace, name: str) -> Job:
    job = Job(id=name, request={"id": name}, arrival=asyncio.get_running_loop().time())
    mv.queue.submit(job)
    return job


def dispatcher(mv: SimpleNamespace, channel: MemoryChannel) -> Dispatcher:
    return Dispatcher(mv, channel, asyncio.get_running_loop().time,
                      death_error=lambda: InternalServerError("Worker died."))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)



class Observer:
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gaps: list[float] = []

    def observe_batch(self, model: str, version: str, size: int) -> None:
        self.batches.append(size)

    def observe_idle_gap(self, model: str, version: str, seconds: float) -> None:
        self.gaps.append(seconds)


def observed(mv: SimpleNamespace, channel: MemoryChannel) -> tuple[Dispatcher, Observer]:
    observer = Observer()
    return Dispatcher(mv, channel, asyncio.get_running_loop().time,
                      death_error=lambda: InternalServerError("Worker died."),
                      observer=observer), observer


def sent_ids(channel: MemoryChannel) -> list[list[str]]:
    return [[r["id"] for r in requests] for requests, _, _ in channel.batches]

