"""What happens during a run, as plain events; subscribers turn them into rows and displays.

The scheduler only emits. The job store, the progress display, webhooks and metrics
subscribe, so none of them is a dependency of the scheduler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


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
class Bus:
    """A tiny synchronous fan-out; a failing subscriber must not stop the run."""

    subscribers: list[Subscriber] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def subscribe(self, fn: Subscriber) -> None:
        self.subscribers.append(fn)

    def emit(self, event: Event) -> None:
        for fn in self.subscribers:
            try:
                fn(event)
            except Exception as exc:  # a display or webhook bug must not lose the run
                self.errors.append(exc)
