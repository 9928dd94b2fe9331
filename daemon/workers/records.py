"""What the Supervisor wants and remembers for each model version, apart from its processes.

Like supervisord's process record, a ``VersionRecord`` outlives the worker handles: a worker that
crashes is forgotten and replaced, but the restart history of the slot it filled stays here, so
nothing is copied from a dead handle into its replacement. The version's configured range
(min/max workers) is the registry's (``mv.settings``, written by the model manager); the record
holds what the Supervisor decides within it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from daemon.workers.states import RestartPolicy

RECOVERY_GRACE = 300.0      # /ping tolerates a model below minWorkers this long while (re)starting


@dataclass
class ScaleOutcome:
    """What a synchronous scale saw when its wait ended."""

    ready: int
    target: int
    error: str | None = None


@dataclass
class SlotHistory:
    """One worker slot's restart history, across the processes that fill it in turn."""

    crashes: int = 0             # consecutive deaths, for the backoff delay
    start_failures: int = 0      # consecutive failures to reach READY (FAILED at the limit)
    failing_since: float | None = None   # its first failure since a worker of it was READY
    gpu: int | None = None       # chosen when the slot opens; a replacement keeps it


@dataclass
class VersionRecord:
    target: int                          # workers wanted now, within [min, max] (autoscaled)
    stop_timeout: float | None = None    # from the last scale call, for scale-down drains
    deep_since: float | None = None      # the queue has stayed deep since
    below_min_since: float | None = None
    start_failures: int = 0              # every failure to start, ever (waiters diff it)
    last_error: str | None = None
    restarts: int = 0                    # deaths of READY workers
    slots: dict[int, SlotHistory] = field(default_factory=dict)
    # preloadModel (daemon/workers/template_supervision.py)
    preload_off: str | None = None       # why its workers load the model themselves after all
    template_failures: int = 0           # templates that ended unasked, in a row
    template_retry_at: float = 0.0       # when the next template may start

    def slot(self, number: int) -> SlotHistory:
        return self.slots.setdefault(number, SlotHistory())

    def open_slot(self, taken: set[int], gpu: int | None = None) -> int:
        """The lowest slot number no worker fills, with a fresh history, on ``gpu``."""
        number = 0
        while number in taken:
            number += 1
        self.slots[number] = SlotHistory(gpu=gpu)
        return number

    # The restart rules: the Supervisor reports what happened, the record says what follows.

    def started(self, slot: int) -> None:
        """A worker in ``slot`` reached READY: its start failures stop counting, and its
        failure run (maxRetryTimeoutInSec's) is over."""
        history = self.slot(slot)
        history.start_failures = 0
        history.failing_since = None

    def start_failed(self, slot: int, error: str, policy: RestartPolicy, now: float,
                     retry_window: float) -> float | None:
        """A worker in ``slot`` failed to start: the delay before the next try, or None when
        the slot gives up (FAILED until the next scale call): the policy's count of start
        failures in a row is reached, or the slot has been failing for ``retry_window`` seconds
        (the model's maxRetryTimeoutInSec) since its first failure."""
        self.start_failures += 1
        self.last_error = error
        history = self.slot(slot)
        history.start_failures += 1
        history.crashes += 1
        if history.failing_since is None:
            history.failing_since = now
        if policy.gives_up(history.start_failures) or _out_of_time(history, now, retry_window):
            return None
        return policy.delay(history.crashes)

    def crashed(self, slot: int, ready_for: float | None, answered: int,
                policy: RestartPolicy, now: float, retry_window: float) -> float | None:
        """A READY worker in ``slot`` died after ``ready_for`` seconds and ``answered`` batches:
        the delay before its replacement, or None when the model's retry window is 0 (its
        first failure ends the slot in FAILED, as in TorchServe).

        A worker that answered a batch, or stayed READY for ``policy.reset_after``, had proven
        itself: the count starts over and the replacement starts at once. A death from outside
        (the OOM killer, an operator's kill, a GPU reset) then costs one quick restart however
        often it happens, while a handler that kills its worker on every call never answers a
        batch, and backs off."""
        self.restarts += 1
        history = self.slot(slot)
        proven = answered > 0 or (ready_for is not None and ready_for >= policy.reset_after)
        history.crashes = 1 if proven else history.crashes + 1
        history.failing_since = now   # it was READY: a failure run starts
        if _out_of_time(history, now, retry_window):
            return None
        return policy.delay(history.crashes)

    def template_ended(self, ready_for: float | None, policy: RestartPolicy,
                       now: float) -> float:
        """A template ended unasked (died, failed to load, or could not be forked) after
        ``ready_for`` seconds READY: the delay before the next one may start. One READY for
        ``policy.reset_after`` had proven itself, as a worker does."""
        proven = ready_for is not None and ready_for >= policy.reset_after
        self.template_failures = 1 if proven else self.template_failures + 1
        delay = policy.delay(self.template_failures)
        self.template_retry_at = now + delay
        return delay

    def failing_for(self, slot: int, now: float) -> float:
        """Seconds the slot's current failure run has lasted (0 when it is not failing)."""
        since = self.slot(slot).failing_since
        return 0.0 if since is None else now - since

    def recovering(self, now: float) -> bool:
        """Below min_workers for less than RECOVERY_GRACE seconds: its workers are starting
        (a new version, a scale-up) or restarting after crashes. ``below_min_since`` is unset
        until the Supervisor's next reconcile sees the version short: just registered, or
        short since a moment ago, which is recovering too. (/ping said Unhealthy for every
        model while one registered, as only restarts counted; TorchServe counts a starting
        worker healthy, and a liveness probe must not kill a server for loading a model.)"""
        since = self.below_min_since
        return since is None or now - since < RECOVERY_GRACE


def _out_of_time(history: SlotHistory, now: float, retry_window: float) -> bool:
    """TorchServe's WorkerThread.isHealthy turned around: retries go on only while the slot's
    failure run is younger than the window (0: none at all)."""
    return history.failing_since is not None and now - history.failing_since >= retry_window
