"""Runs a plan's jobs in dependency order, a bounded number at a time.

The failure policy is explicit: a transient failure is retried with exponential backoff;
any other failure is final, and every job downstream of it is skipped while independent
jobs go on. A job that runs past its timeout is cancelled (the runner's job function
interrupts it on the server) and fails as `timeout`.

The scheduler calls the injected `run_job` and, for every event of a job's life, awaits
the injected `record` before it emits the event on the bus: recording is a step of the
run (its failure ends the run loudly), displays are not. It knows nothing of ComfyUI, the
database or the terminal, so tests drive it with plain coroutines and a fake clock.

Ready jobs start in plan order, with one exception when a `family` function is given: a
ready remote job of the same family as the last remote job started goes first. ComfyUI
reuses a node's output only when the prompt it ran just before had the same node, so jobs
sharing expensive nodes (bridge.affinity) run back to back instead of interleaved.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import networkx as nx

from bridge.errors import BackendError, BridgeError, JobTimeout
from bridge.events import (
    Bus,
    Event,
    JobCached,
    JobFailed,
    JobProgress,
    JobSkipped,
    JobStarted,
    JobSucceeded,
)
from bridge.plan import Job, Plan
from bridge.states import JobState

__all__ = ["Family", "JobState", "Policy", "Record", "RunJob", "Scheduler"]

log = logging.getLogger(__name__)

ProgressHook = Callable[[float, float], None]
RunJob = Callable[[Job, int, ProgressHook], Awaitable[Any]]
Record = Callable[[Event], Awaitable[None]]
Family = Callable[[Job], str]


async def _nothing(event: Event) -> None:
    return None


@dataclass(frozen=True)
class Policy:
    max_remote: int = 3  # remote jobs in flight (MAX_CONCURRENT_JOBS plus queue prefetch)
    max_local: int = 2  # local ffmpeg jobs at once
    timeout: float = 900.0  # seconds without finishing, counted from the job's first progress
    retries: int = 3  # extra attempts after a transient failure
    backoff: float = 1.0  # first retry delay; doubles each time, capped at 30 s


class Scheduler:
    def __init__(
        self,
        plan: Plan,
        run_job: RunJob,
        *,
        policy: Policy | None = None,
        bus: Bus | None = None,
        record: Record = _nothing,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] | None = None,
        family: Family | None = None,
    ) -> None:
        self.plan = plan
        self.family = family  # remote jobs of the last started one's family go first
        self.run_job = run_job
        self.policy = policy or Policy()
        self.bus = bus or Bus()
        self.record = record
        self.sleep = sleep
        self.clock = clock or (lambda: asyncio.get_running_loop().time())
        self.states: dict[str, JobState] = dict.fromkeys(plan.order, JobState.PENDING)
        self.index = {job_id: i for i, job_id in enumerate(plan.order)}
        self.results: dict[str, Any] = {}
        self.errors: dict[str, str] = {}

    async def run(self, cached: dict[str, Any] | None = None) -> dict[str, JobState]:
        """Run everything not in `cached`; returns the final state of every job.

        Ready jobs start in plan order as slots free up (families back to back, when
        grouped), so with one slot and no families the run order is the plan's exactly.
        """
        for job_id, result in (cached or {}).items():
            self.states[job_id] = JobState.CACHED
            self.results[job_id] = result
            await self._event(JobCached(job_id, result))
        graph = self.plan.graph
        index = self.index
        waiting = {
            j: sum(1 for d in graph.predecessors(j) if self.states[d] is not JobState.CACHED)
            for j in self.plan.order
            if self.states[j] is JobState.PENDING
        }
        limits = {True: self.policy.max_remote, False: self.policy.max_local}
        ready = {True: _Ready(self.family), False: _Ready(None)}
        running = {True: 0, False: 0}
        attempts: dict[str, int] = {}
        tasks: dict[asyncio.Future[Any], tuple[str, bool]] = {}  # task -> (job, is an attempt)

        def make_ready(job_id: str) -> None:
            log.debug("ready %s", job_id)
            job = self.plan.job(job_id)
            ready[job.kind.remote].push(index[job_id], job)

        def pump() -> None:
            for remote, heap in ready.items():
                while heap and running[remote] < limits[remote]:
                    job_id = heap.pop()
                    running[remote] += 1
                    attempts[job_id] = attempts.get(job_id, 0) + 1
                    task = asyncio.create_task(self._attempt(job_id, attempts[job_id]))
                    tasks[task] = (job_id, True)
                    log.debug(
                        "start %s, attempt %d (%d of %d %s slots busy)",
                        *(job_id, attempts[job_id], running[remote], limits[remote]),
                        "remote" if remote else "local",
                    )
                if heap:
                    log.debug(
                        "%d ready %s job(s) wait for a slot (all %d busy)",
                        *(len(heap), "remote" if remote else "local", limits[remote]),
                    )

        for job_id, count in waiting.items():
            if count == 0:
                make_ready(job_id)
        pump()
        try:
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: index[tasks[t][0]]):
                    job_id, is_attempt = tasks.pop(task)
                    if not is_attempt:  # a backoff delay ended
                        make_ready(job_id)
                        continue
                    running[self.plan.job(job_id).kind.remote] -= 1
                    outcome = task.result()
                    if outcome == "ok":
                        for child in graph.successors(job_id):
                            if child in waiting:
                                waiting[child] -= 1
                                if waiting[child] == 0 and self.states[child] is JobState.PENDING:
                                    make_ready(child)
                    elif outcome == "retry":
                        delay = min(30.0, self.policy.backoff * 2 ** (attempts[job_id] - 1))
                        log.debug("retry %s in %.1f s", job_id, delay)
                        tasks[asyncio.ensure_future(self.sleep(delay))] = (job_id, False)
                    else:
                        await self._skip_downstream(job_id, waiting)
                pump()
        except BaseException:  # cancelled, or a record could not be written
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for job_id, state in self.states.items():
                if state in (JobState.PENDING, JobState.RUNNING):
                    self.states[job_id] = JobState.CANCELLED
            raise
        return dict(self.states)

    async def _event(self, event: Event) -> None:
        """Record the event, then show it: a display never runs ahead of the record."""
        await self.record(event)
        self.bus.emit(event)

    async def _skip_downstream(self, failed: str, waiting: dict[str, int]) -> None:
        log.debug("%s failed for good; skipping what depends on it", failed)
        for job_id in sorted(nx.descendants(self.plan.graph, failed), key=self.index.__getitem__):
            if self.states[job_id] is JobState.PENDING:
                self.states[job_id] = JobState.SKIPPED
                waiting.pop(job_id, None)
                await self._event(JobSkipped(job_id, failed))

    async def _attempt(self, job_id: str, attempt: int) -> str:
        """One try at a job: 'ok', 'retry' (transient, budget left) or 'failed'."""
        job = self.plan.job(job_id)
        self.states[job_id] = JobState.RUNNING
        await self._event(JobStarted(job_id, attempt))
        started = self.clock()
        try:
            result = await self._with_timeout(job, attempt)
        except asyncio.CancelledError:
            self.states[job_id] = JobState.CANCELLED
            await self._event(JobFailed(job_id, "cancelled", "cancelled", attempt, True))
            raise
        except BridgeError as exc:
            kind = _kind(exc)
            retry = kind == "transient" and attempt <= self.policy.retries
            await self._event(JobFailed(job_id, exc.message, kind, attempt, not retry))
            if retry:
                self.states[job_id] = JobState.PENDING
                return "retry"
            self._fail(job_id, exc.message)
            return "failed"
        except Exception as exc:  # a bug in a job function fails that job only
            message = f"internal error: {type(exc).__name__}: {exc}"
            await self._event(JobFailed(job_id, message, "internal", attempt, True))
            self._fail(job_id, message)
            return "failed"
        self.states[job_id] = JobState.SUCCEEDED
        self.results[job_id] = result
        await self._event(JobSucceeded(job_id, self.clock() - started, result))
        return "ok"

    def _fail(self, job_id: str, message: str) -> None:
        self.states[job_id] = JobState.FAILED
        self.errors[job_id] = message

    async def _with_timeout(self, job: Job, attempt: int) -> Any:
        """Run the job; fail it as a timeout when it outlives its deadline.

        The deadline restarts when the job reports it was submitted (progress with max 0)
        and again at its first real progress, so a job waiting for a free server, or in a
        server's queue behind another, is not charged for the wait.
        """
        timeout = self.policy.timeout
        deadline = self.clock() + timeout
        resets = {"submitted", "running"}

        def progress(value: float, maximum: float) -> None:
            nonlocal deadline
            phase = "submitted" if maximum == 0 else "running"
            if phase in resets:
                resets.discard(phase)
                deadline = self.clock() + timeout
            if maximum:
                self.bus.emit(JobProgress(job.id, value, maximum))

        task = asyncio.ensure_future(self.run_job(job, attempt, progress))
        try:
            while True:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                    raise JobTimeout(f"ran past the {timeout:g} s WORKFLOW_TIMEOUT; interrupted")
                done, _ = await asyncio.wait({task}, timeout=remaining)
                if done:
                    return task.result()
        except asyncio.CancelledError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise


class _Ready:
    """Ready jobs: the earliest in plan order, or (with `family`) the earliest of the last
    popped job's family while it has any ready, so a family's jobs leave back to back."""

    def __init__(self, family: Family | None) -> None:
        self.family = family
        self.first: list[tuple[int, str, str]] = []  # (index, job, family) of ready jobs
        self.by_family: dict[str, list[tuple[int, str]]] = {}
        self.taken: Counter[tuple[int, str]] = Counter()  # popped, still in `first`
        self.current = ""
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def push(self, index: int, job: Job) -> None:
        fam = ""
        if self.family is not None:
            fam = self.family(job)
            heapq.heappush(self.first, (index, job.id, fam))
        heapq.heappush(self.by_family.setdefault(fam, []), (index, job.id))
        self.size += 1

    def pop(self) -> str:
        own = self.by_family.get(self.current)
        if not own:  # the family ran out: the earliest ready job's family is next
            while self.taken[self.first[0][:2]]:
                self.taken[heapq.heappop(self.first)[:2]] -= 1
            self.current = self.first[0][2]
            own = self.by_family[self.current]
            log.debug("%s starts family %s (%d ready)", own[0][1], self.current, len(own))
        entry = heapq.heappop(own)
        if self.family is not None:
            self.taken[entry] += 1
        self.size -= 1
        return entry[1]


def _kind(exc: BridgeError) -> str:
    if isinstance(exc, JobTimeout):
        return "timeout"
    if isinstance(exc, BackendError):
        return "transient" if exc.transient else "permanent"
    return "permanent"
