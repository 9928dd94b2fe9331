"""``MicroBatching``: a handler's batch cut into micro-batches that flow through its
preprocess, inference and postprocess as a pipeline, each step on its own threads.

TorchServe 0.12's interface, used as its example does::

    class Handler(ImageClassifier):
        def __init__(self):
            super().__init__()
            self.handle = MicroBatching(self, micro_batch_size=4)

        def initialize(self, context):
            super().initialize(context)
            self.handle.parallelism = {"preprocess": 2, "inference": 1, "postprocess": 2}

While micro-batch 1 is in inference, micro-batch 2 can be in preprocess and micro-batch 0 in
postprocess. Answers come back in the batch's order. Where torchd differs: an exception in a
step fails the whole call with that exception (TorchServe's thread dies with it and the call
waits forever), and a step needs at least one thread.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from copy import copy
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

HANDLER_METHODS = ["preprocess", "inference", "postprocess"]


@dataclass
class _MicroBatch:
    """One micro-batch on its way through the steps: its value after the last step it ran,
    or the exception that ended it; ``done`` receives it after the last step."""

    index: int
    value: Any
    done: queue.Queue
    error: BaseException | None = None


class _Inbox:
    """A step's queue of micro-batches, taken by any of its threads. A thread that is told to
    stop leaves at once, without taking more work."""

    def __init__(self) -> None:
        self._items: collections.deque[_MicroBatch] = collections.deque()
        self._ready = threading.Condition()

    def put(self, item: _MicroBatch) -> None:
        with self._ready:
            self._items.append(item)
            self._ready.notify()

    def take(self, stop: threading.Event) -> _MicroBatch | None:
        with self._ready:
            self._ready.wait_for(lambda: self._items or stop.is_set())
            if stop.is_set():
                if self._items:
                    self._ready.notify()   # the wake-up it got was for work: pass it on
                return None
            return self._items.popleft()

    def wake_all(self) -> None:
        with self._ready:
            self._ready.notify_all()


@dataclass
class WorkerThread:
    """One thread of a step, and the event that stops it."""

    event: threading.Event
    thread: threading.Thread = field(repr=False)


class MicroBatching:
    """Callable as a handler's ``handle(data, context)``; see the module's docstring."""

    def __init__(self, parent_handler: Any, micro_batch_size: int = 1,
                 parallelism: dict[str, int] | None = None) -> None:
        self.handler = parent_handler
        self.micro_batch_size = micro_batch_size
        self._parallelism: dict[str, int] = {}
        self.thread_groups: dict[str, list[WorkerThread]] = {m: [] for m in HANDLER_METHODS}
        self._inboxes = {method: _Inbox() for method in HANDLER_METHODS}
        self.thread_local_data = threading.local()
        self._resize_lock = threading.Lock()
        self.parallelism = parallelism or {}

    @property
    def parallelism(self) -> dict[str, int]:
        """Threads per step (1 for a step never set)."""
        return copy(self._parallelism)

    @parallelism.setter
    def parallelism(self, parallelism: dict[str, int]) -> None:
        """Change the thread count of the steps named; the others keep theirs."""
        unknown = set(parallelism) - set(HANDLER_METHODS)
        if unknown:
            raise ValueError(f"parallelism names unknown steps {sorted(unknown)}; the steps are "
                             f"{', '.join(HANDLER_METHODS)}")
        if any(int(count) < 1 for count in parallelism.values()):
            raise ValueError(f"every step needs at least one thread: {parallelism}")
        self._parallelism.update({step: int(count) for step, count in parallelism.items()})
        with self._resize_lock:
            for method in HANDLER_METHODS:
                self._resize(method, self._parallelism.get(method, 1))

    def _resize(self, method: str, target: int) -> None:
        group = self.thread_groups[method]
        while len(group) < target:
            stop = threading.Event()
            thread = threading.Thread(target=self._run_step, args=(method, stop), daemon=True,
                                      name=f"micro-batching-{method}-{len(group)}")
            thread.start()
            group.append(WorkerThread(stop, thread))
        while len(group) > target:
            leaving = group.pop()
            leaving.event.set()
            self._inboxes[method].wake_all()
            leaving.thread.join()

    def shutdown(self) -> None:
        """Stop every thread (a handler's own clean-up; the worker's exit ends them too)."""
        with self._resize_lock:
            for method in HANDLER_METHODS:
                self._resize(method, 0)

    def __del__(self) -> None:
        try:
            self.shutdown()
        except Exception:   # interpreter shutdown: the threads are daemons and go with it
            pass

    def _run_step(self, method: str, stop: threading.Event) -> None:
        step = getattr(self.handler, method)
        position = HANDLER_METHODS.index(method)
        following = HANDLER_METHODS[position + 1] if position + 1 < len(HANDLER_METHODS) else None
        inbox = self._inboxes[method]
        while (item := inbox.take(stop)) is not None:
            if item.error is None:
                self.thread_local_data.micro_batch_idx = item.index
                try:
                    item.value = step(item.value)
                except BaseException as exc:   # carried to the caller, which raises it
                    item.error = exc
            if following is None:
                item.done.put(item)
            else:
                self._inboxes[following].put(item)

    def handle(self, data: list[Any]) -> list[Any]:
        """``data`` through the pipeline in micro-batches of ``micro_batch_size``; the outputs
        in order. The first failing micro-batch's exception is raised once all are back."""
        size = max(1, int(self.micro_batch_size))
        chunks = [data[start:start + size] for start in range(0, len(data), size)]
        done: queue.Queue = queue.Queue()
        for index, chunk in enumerate(chunks):
            self._inboxes[HANDLER_METHODS[0]].put(_MicroBatch(index, chunk, done))
        finished = sorted((done.get() for _ in chunks), key=lambda item: item.index)
        for item in finished:
            if item.error is not None:
                raise item.error
        return [row for item in finished for row in item.value]

    def get_micro_batch_idx(self) -> int | None:
        """The index of the micro-batch the calling step's thread works on."""
        return getattr(self.thread_local_data, "micro_batch_idx", None)

    def __call__(self, data: list[Any], context: Any) -> list[Any]:
        """BaseHandler.handle with the pipeline in place of the three steps."""
        started = time.perf_counter()
        handler = self.handler
        handler.context = context
        if handler._is_describe():
            output = [handler.describe_handle()]
        elif handler._is_explain():
            output = handler.explain_handle(handler.preprocess(data), data)
        else:
            output = self.handle(data)
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        context.metrics.add_time("HandlerTime", elapsed_ms, None, "ms")
        return output
