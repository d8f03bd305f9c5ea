"""The seam between the scheduler and whatever renders a job.

A backend takes one job at a time per slot. The scheduler owns ordering, retries and
records; a backend owns the wire. Every failure a backend raises is a BackendError whose
subclass says whether a retry can help.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bridge.plan import Job


@dataclass(frozen=True, slots=True)
class Progress:
    """A step of progress inside one job, as ComfyUI reports it (value of max, on a node)."""

    job_id: str
    value: float
    max: float
    node: str | None = None


@dataclass(frozen=True)
class Attempt:
    """One try at a job: the ids the server will know it by, chosen before anything is sent.

    `prompt_id` is written to the job store before submission, so a restarted bridge can
    find the prompt on the server instead of submitting it twice (`resume=True`).
    """

    job: Job
    prompt_id: str
    dest: Path  # folder the outputs go to: OUTPUT_PATH/<project>/<scene>/<shot>
    start_image: Path | None = None  # local file to upload and bind, if the job needs one
    resume: bool = False
    workflow: Mapping[str, Any] = field(default_factory=dict)  # job.workflow after binding
    # called once the server has finished executing it, before its outputs are downloaded
    rendered: Callable[[], None] = field(default=lambda: None, compare=False)


@dataclass(frozen=True)
class Outcome:
    """What a finished attempt produced: downloaded files, first the job's main output."""

    files: tuple[Path, ...]
    server: str
    prompt_id: str
    cached: bool = False  # the server re-used outputs it already had
    submitted: bool = True  # False when a resumed attempt found the prompt already there
    workflow: Mapping[str, Any] | None = None  # exactly what the server ran, start image bound


ProgressFn = Callable[[Progress], None]


class Backend(Protocol):
    name: str  # shown in logs, manifest and DB: a server URL or "preview"
    slots: int  # jobs it should be given at once to stay busy
    # False while it does not answer: the pool leases it no jobs, health and metrics show it
    healthy: bool

    async def start(self) -> None:
        """Open connections; raise TransientBackendError when the backend cannot be reached."""

    async def close(self) -> None:
        """Release connections; never raises."""

    async def object_info(self, classes: Collection[str] | None = None) -> Mapping[str, Any]:
        """The node classes the backend can run, in ComfyUI's /object_info shape: all of
        them, or those of `classes` it has."""

    async def execute(self, attempt: Attempt, progress: ProgressFn) -> Outcome:
        """Run one attempt to completion and download its outputs into attempt.dest."""

    async def cancel(self, attempt: Attempt) -> None:
        """Stop an attempt: delete it if pending, interrupt it if running. Never raises."""
