"""What happens during a run, as plain events, for displays to follow.

The scheduler awaits its recorder (the job store) on each event first and only then
emits it here, so nothing recorded depends on a subscriber. Subscribers are displays:
the progress bars, the watch log. One that raises is logged with its traceback and
counted (`/metrics` shows the count), and the run goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobStarted:
    job_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class JobProgress:
    job_id: str
    value: float
    max: float


@dataclass(frozen=True, slots=True)
class JobSucceeded:
    job_id: str
    seconds: float
    result: Any = None


@dataclass(frozen=True, slots=True)
class JobFailed:
    job_id: str
    error: str
    kind: str  # transient | permanent | timeout | quality | cancelled | internal
    attempt: int
    final: bool  # False when the scheduler will retry


@dataclass(frozen=True, slots=True)
class JobSkipped:
    job_id: str
    because: str  # the failed job upstream


@dataclass(frozen=True, slots=True)
class JobCached:
    job_id: str
    result: Any = None


Event = JobStarted | JobProgress | JobSucceeded | JobFailed | JobSkipped | JobCached
Subscriber = Callable[[Event], None]


@dataclass
class Tally:
    """A process-wide count, read by the metrics collector."""

    value: int = 0


SUBSCRIBER_ERRORS = Tally()


@dataclass
class Bus:
    """A tiny synchronous fan-out; a failing subscriber must not stop the run."""

    subscribers: list[Subscriber] = field(default_factory=list)

    def subscribe(self, fn: Subscriber) -> None:
        self.subscribers.append(fn)

    def emit(self, event: Event) -> None:
        for fn in self.subscribers:
            try:
                fn(event)
            except Exception:  # a display bug must not lose the run
                SUBSCRIBER_ERRORS.value += 1
                log.exception("event subscriber %r failed on %r", fn, event)
