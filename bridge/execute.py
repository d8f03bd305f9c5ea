"""The scheduler's job function: one function per kind of job, quality retries and resume.

Remote jobs (keyframes and renders) go to a backend leased from the pool; frames and
assemblies are local ffmpeg work. Every output is probed and checked before it counts;
a render whose output fails its checks is rendered again with a new seed as often as
its `quality.retries` allows. What it decides it records through the run's Recorder.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from bridge import outputs
from bridge.backends.base import Attempt, Backend, Outcome, Progress
from bridge.db.store import Resumable
from bridge.errors import BridgeError, TransientBackendError
from bridge.hashing import background_file_digest, derive_seed
from bridge.manifest import JobResult, OutputFile
from bridge.plan import Job, JobKind, Plan
from bridge.record import Recorder

ProgressHook = Callable[[float, float], None]


class Leases(Protocol):
    """Where remote jobs get a server: the ServerPool in one process, or a worker's view of
    the global slots shared by every worker (bridge.worker)."""

    def lease(
        self, prefer: str | None = None, priority: int = 0
    ) -> AbstractAsyncContextManager[Backend]: ...

    def rendered(self) -> None:
        """The lease holder's prompt finished executing (its outputs still download)."""


class QualityFailed(BridgeError):
    """An output was readable but did not pass its quality checks."""


class Executor:
    """Runs the jobs of one run; `results` holds every finished job's outputs."""

    def __init__(
        self,
        plan: Plan,
        pool: Leases,
        recorder: Recorder,
        *,
        root: Path,
        quality_threshold: float,
        resumable: dict[str, Resumable],
        detach: bool,
        notify: Callable[[str], None],
        priority: int = 0,
    ) -> None:
        self.plan = plan
        self.pool = pool
        self.recorder = recorder
        self.root = root
        self.quality_threshold = quality_threshold  # for jobs whose spec names none
        self.resumable = resumable
        # detach: a cancelled job's prompt stays on its server, to be re-attached later
        self.detach = detach
        self.notify = notify
        self.priority = priority  # of the run: orders it against other runs for slots
        self.results: dict[str, JobResult] = {}
        self.submitted = 0

    async def __call__(self, job: Job, attempt: int, progress: ProgressHook) -> JobResult:
        dest = outputs.job_dir(self.root, self.plan.project, job)
        dest.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        if job.kind is JobKind.FRAME:
            result = await self._frame(job, dest)
        elif job.kind is JobKind.ASSEMBLE:
            result = await self._assemble(job, dest)
        else:
            result = await self._render(job, attempt, dest, progress)
        result = replace(result, seconds=time.monotonic() - started)
        self.results[job.id] = result
        return result

    async def _frame(self, job: Job, dest: Path) -> JobResult:
        from bridge import media  # ffmpeg-python: not on `bridge run`'s way to its first prompt

        source = self.results[job.deps[0]].main
        target = dest / f"frame-{job.hash[:12]}.png"
        await media.last_frame(source, target)
        return await self._finish(job, (target,), server="local")

    async def _assemble(self, job: Job, dest: Path) -> JobResult:
        from bridge import media

        inputs = [self.results[d].main for d in job.deps]
        target = dest / ("scene.mp4" if job.scene else f"{self.plan.project}.mp4")
        e = job.expect
        assert e is not None
        trimmed = e.frames if job.meta.get("trim_frames") else None  # to the scene's frame_count
        await media.concat(
            inputs, target, width=e.width, height=e.height, fps=e.fps or 24.0, frames=trimmed
        )
        return await self._finish(job, (target,), server="local")

    async def _render(self, job: Job, attempt: int, dest: Path, report: ProgressHook) -> JobResult:
        start = None
        if job.start_image is not None:
            start = (
                Path(job.start_image.file)
                if job.start_image.file
                else self.results[job.start_image.job or ""].main
            )
        retries = job.quality.retries
        last: QualityFailed | None = None
        for reseed in range(retries + 1):
            seed = _seed(job, reseed)
            workflow = _reseeded(job, seed) if reseed else dict(job.workflow)
            resume = self.resumable.pop(job.hash, None) if reseed == 0 else None
            if resume is not None:
                self.recorder.take_over(job)
            prompt_id = resume.prompt_id if resume else str(uuid.uuid4())
            outcome = await self._execute(
                job, attempt, dest, start, workflow, prompt_id, resume, report
            )
            workflow_file = dest / f"{job.kind.value}-{job.hash[:12]}.workflow.json"
            # fsynced: on a shared OUTPUT_PATH (NFS) that may take long, so not on the loop
            await asyncio.to_thread(
                outputs.atomic_write_json, workflow_file, outcome.workflow or workflow
            )
            try:
                return await self._finish(
                    job,
                    outcome.files,
                    server=outcome.server,
                    prompt_id=outcome.prompt_id,
                    attempts=attempt + reseed,
                    workflow=workflow_file,
                    meta={"seed": seed, "cached_on_server": outcome.cached},
                )
            except QualityFailed as exc:
                last = exc
                self.recorder.quality_failed(job, exc.message, reseed)
                if reseed < retries:
                    self.notify(f"{job.id}: {exc.message}; retrying with a new seed")
        assert last is not None
        raise last

    async def _execute(
        self,
        job: Job,
        attempt: int,
        dest: Path,
        start: Path | None,
        workflow: dict[str, Any],
        prompt_id: str,
        resume: Resumable | None,
        report: ProgressHook,
    ) -> Outcome:
        def progress(p: Progress) -> None:
            report(p.value, p.max)

        prefer = resume.server if resume else None
        async with self.pool.lease(prefer=prefer, priority=self.priority) as backend:
            await self.recorder.submitting(job, prompt_id, backend.name, attempt)
            report(0, 0)  # submitted: the WORKFLOW_TIMEOUT clock starts now
            try_ = Attempt(
                job=job,
                prompt_id=prompt_id,
                dest=dest,
                start_image=start,
                resume=resume is not None,
                workflow=workflow,
                rendered=self.pool.rendered,
            )
            try:
                outcome = await backend.execute(try_, progress)
            except TransientBackendError:
                # The server may have the prompt: the next attempt asks before posting again.
                self.resumable[job.hash] = Resumable(prompt_id, backend.name)
                raise
            except asyncio.CancelledError:
                if not (self.detach or self.recorder.database_lost):
                    await asyncio.shield(backend.cancel(try_))
                raise
            if outcome.submitted:
                self.submitted += 1
            return outcome

    async def _finish(
        self,
        job: Job,
        files: tuple[Path, ...],
        *,
        server: str,
        prompt_id: str | None = None,
        attempts: int = 1,
        workflow: Path | None = None,
        meta: dict[str, Any] | None = None,
    ) -> JobResult:
        """Probe and check the main output, and describe the result (its asset is recorded
        with the job's success)."""
        from bridge import probe  # needed once an output exists, not before the first prompt

        main = files[0]
        assert job.expect is not None, "the compiler gives every job what it must produce"
        q = job.quality
        threshold = self.quality_threshold if q.threshold is None else q.threshold
        try:
            facts, quality = await probe.check(
                main,
                job.expect,
                threshold=threshold,
                detect_black=q.detect_black,
                detect_frozen=q.detect_frozen,
            )
        except BridgeError as exc:
            raise QualityFailed(f"{main.name}: {exc.message}") from None
        if not quality.passed:
            failed = [c for c in quality.checks if not c.ok]
            reasons = "; ".join(f"{c.name}: {c.reason}" for c in failed) or "low score"
            raise QualityFailed(
                f"{main.name} failed its checks (score {quality.score:.2f}): {reasons}"
            )
        records = []
        for i, path in enumerate(files):
            sha = await background_file_digest(path)
            records.append(
                OutputFile(
                    path=path,
                    sha256=sha,
                    bytes=path.stat().st_size,
                    probe=facts.as_dict() if i == 0 else None,
                    quality=quality.as_dict() if i == 0 else None,
                    workflow=workflow if i == 0 else None,
                )
            )
        result = JobResult(
            files=tuple(records),
            server=server,
            prompt_id=prompt_id,
            attempts=attempts,
            meta=meta or {},
        )
        self.results[job.id] = result
        return result


def _seed(job: Job, reseed: int) -> int | None:
    """The compiled seed first; each quality retry a new one derived from the job's hash."""
    if reseed == 0 or job.seed is None:
        return job.seed
    return derive_seed(job.hash, str(reseed))


def _reseeded(job: Job, seed: int | None) -> dict[str, Any]:
    """The job's workflow with `seed` written wherever its template binds the seed."""
    workflow = dict(job.workflow)
    for b in job.seed_bindings:
        node = workflow[b.node]
        value = seed % b.mod if b.mod and seed is not None else seed
        workflow[b.node] = {**node, "inputs": {**node["inputs"], b.input: value}}
    return workflow
