"""The one entry the front doors share: plan → backends → checked outputs → records.

This is the only module that wires the job store, the event bus, the backends and the
outputs together; everything below it is unaware of the others. A Runner is long-lived in
`bridge watch` and `bridge serve` (one pool, one global job limit for every spec) and
lives for one run in `bridge run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import networkx as nx
import orjson

from bridge import manifest, media, outputs, preflight, probe
from bridge.backends.base import Attempt, Outcome, Progress
from bridge.backends.comfyui import ComfyUIBackend
from bridge.backends.pool import ServerPool
from bridge.backends.preview import PreviewBackend
from bridge.db.store import Resumable, Store
from bridge.errors import BridgeError, ConfigError, TransientBackendError, UsageError
from bridge.events import Bus, Event, JobFailed, JobSkipped, JobStarted, JobSucceeded
from bridge.hashing import derive_seed, file_digest
from bridge.manifest import JobResult, OutputFile
from bridge.plan import Job, JobKind, Plan
from bridge.scheduler import JobState, Policy, Scheduler
from bridge.settings import Settings
from bridge.spec.model import Spec
from bridge.templates import Template
from bridge.webhooks import Hook, Notifier, hooks_from_spec

log = logging.getLogger(__name__)

PREVIEW_NOTICE = (
    "PREVIEW: no ComfyUI server answered, so bridge rendered an animatic with ffmpeg "
    "(shot cards of the right size, fps and length), not real renders. "
    "Set COMFYUI_URL to render on ComfyUI."
)
DEFAULT_URL = "http://127.0.0.1:8188"


class QualityFailed(BridgeError):
    """An output was readable but did not pass its quality checks."""


@dataclass(frozen=True)
class Selection:
    """Which part of a spec to run: the seed's scene filter, `--only` shots, and forcing."""

    scene_ids: tuple[str, ...] = ()
    only: tuple[str, ...] = ()  # "scene/shot" or "shot"
    force: bool = False

    def narrow(self, plan: Plan) -> Plan:
        """The plan cut down to the selected shots, what they need, and their assemblies."""
        if not self.scene_ids and not self.only:
            return plan
        keep = {
            job.id
            for job in plan.jobs()
            if job.kind is JobKind.RENDER
            and (not self.scene_ids or job.scene in self.scene_ids)
            and (not self.only or f"{job.scene}/{job.shot}" in self.only or job.shot in self.only)
        }
        if not keep:
            wanted = ", ".join((*self.scene_ids, *self.only))
            raise UsageError(f"the selection ({wanted}) matches no shot in this spec")
        needed = set(keep)
        for job_id in keep:
            needed |= nx.ancestors(plan.graph, job_id)
        for job_id in plan.order:  # an assembly whose every input is selected comes along
            job = plan.job(job_id)
            if job.kind is JobKind.ASSEMBLE and all(d in needed for d in job.deps):
                needed.add(job_id)
        graph = plan.graph.subgraph(needed).copy()
        return replace(plan, graph=graph, order=tuple(j for j in plan.order if j in needed))


@dataclass
class RunReport:
    run_id: int
    project: str
    states: dict[str, JobState]
    errors: dict[str, str]
    manifest: Path | None
    preview: bool
    backend: str
    submitted: int = 0
    results: dict[str, JobResult] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(s in (JobState.SUCCEEDED, JobState.CACHED) for s in self.states.values())

    @property
    def status(self) -> str:
        states = set(self.states.values())
        if JobState.CANCELLED in states:
            return "cancelled"
        return "succeeded" if self.ok else "failed"

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for state in self.states.values():
            out[state.value] = out.get(state.value, 0) + 1
        return dict(sorted(out.items()))


def plan_reasons(
    store: Store,
    plan: Plan,
    root: Path,
    templates: Mapping[str, Template],
    *,
    force: bool = False,
) -> dict[str, str]:
    """Why each job would run: cached, new, changed (and what), output missing or forced."""
    assets = store.find_assets(plan.project, (j.hash for j in plan.jobs()))
    previous = store.latest_by_job(plan.project)
    reasons: dict[str, str] = {}
    for job_id in plan.order:  # inputs before the jobs that use them
        job = plan.job(job_id)
        asset = assets.get(job.hash)
        if force:
            reasons[job.id] = "forced"
        elif asset is not None and outputs.unchanged(root / asset.path, asset.sha256, asset.bytes):
            reasons[job.id] = "cached"
        elif asset is not None:
            reasons[job.id] = "output missing"
        elif job.id in previous:
            old = root / previous[job.id].path
            reasons[job.id] = "changed " + _what_changed(job, old, templates, reasons)
        else:
            reasons[job.id] = "new"
    return reasons


def _what_changed(
    job: Job, old_output: Path, templates: Mapping[str, Template], reasons: Mapping[str, str]
) -> str:
    """The parameters whose bound values differ from the last render's saved workflow, and
    the inputs that are rendered again."""
    names: list[str] = []
    template = templates.get(job.template or "")
    if template is not None:
        try:
            old = orjson.loads(old_output.with_suffix(".workflow.json").read_bytes())
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict):
            for param, bindings in template.bind.items():
                if param in ("filename_prefix", "start_image"):
                    continue
                if any(_value(job.workflow, b) != _value(old, b) for b in bindings):
                    names.append(param)
            if template.lora and _loras(job.workflow, template) != _loras(old, template):
                names.append("loras")
    names += [f"input {d}" for d in job.deps if reasons.get(d) != "cached"]
    return ", ".join(names) if names else "(template or settings)"


def _value(workflow: Mapping[str, Any], b: Any) -> Any:
    return workflow.get(b.node, {}).get("inputs", {}).get(b.input)


def _loras(workflow: Mapping[str, Any], template: Template) -> list[str]:
    slot = template.lora
    assert slot is not None
    cls = template.workflow[slot.node]["class_type"]
    return sorted(
        str([n["inputs"].get(slot.name), *(n["inputs"].get(k) for k in slot.strength)])
        for n in workflow.values()
        if isinstance(n, dict) and n.get("class_type") == cls
    )


class Runner:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        notify: Callable[[str], None] = lambda _: None,
        policy: Policy | None = None,
        detach: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or Store(settings.database)
        self.notify = notify
        self.policy = policy
        # detach: a cancelled run leaves its prompts on the servers, still recorded as
        # submitted, for the next start to re-attach to (the watch daemon's SIGTERM).
        self.detach = detach
        self.environ = dict(environ or {})
        self.webhooks = Notifier()
        self._projects: dict[str, asyncio.Lock] = {}
        self.pool: ServerPool | None = None
        self.preview = False
        self.bus = Bus()
        self._pool_lock = asyncio.Lock()
        self._remote_slots: asyncio.Semaphore | None = None

    async def close(self) -> None:
        await self.webhooks.drain()
        if self.pool is not None:
            await self.pool.close()
        self.store.close()

    async def backend(self) -> ServerPool:
        """The pool, started once: ComfyUI when one answers, else the preview animatic."""
        async with self._pool_lock:
            if self.pool is None:
                self.pool = await self._start_pool()
            return self.pool

    async def _start_pool(self) -> ServerPool:
        s = self.settings
        if s.backend != "preview":
            urls = s.comfyui_urls or (DEFAULT_URL,)
            per_server = max(1, -(-self.max_remote // len(urls)))
            pool = ServerPool([ComfyUIBackend(u, slots=per_server) for u in urls])
            try:
                await pool.start()
            except TransientBackendError as exc:
                await pool.close()
                if s.backend == "comfyui" or s.comfyui_urls:
                    raise ConfigError(f"no ComfyUI server answered: {exc.message}") from None
            else:
                return pool
        self.preview = True
        self.notify(PREVIEW_NOTICE)
        pool = ServerPool([PreviewBackend()])
        await pool.start()
        return pool

    @property
    def max_remote(self) -> int:
        return self.settings.max_concurrent_jobs

    async def run(
        self,
        spec: Spec,
        plan: Plan,
        selection: Selection | None = None,
        *,
        bus: Bus | None = None,
        hooks: Sequence[Hook] = (),
        on_run: Callable[[int], None] | None = None,
    ) -> RunReport:
        """Render `plan`; returns when every job has ended. Cancelling the task stops the
        run: queued prompts are deleted, running ones interrupted, and it is recorded.
        `on_run` hears the run's id as soon as it exists (the API answers with it)."""
        selection = selection or Selection()
        pool = await self.backend()
        if not self.preview:
            await self._preflight(pool, plan)
        all_hooks = [*hooks_from_spec(spec.webhooks, self.environ), *hooks]
        # Runs of one project take turns, so the same spec dropped twice renders once.
        async with self._projects.setdefault(plan.project, asyncio.Lock()):
            run = _Run(self, spec, plan, selection, pool, bus or Bus(), all_hooks, on_run)
            return await run.go()

    async def _preflight(self, pool: ServerPool, plan: Plan) -> None:
        remote = [j for j in plan.jobs() if j.kind.remote]
        found = []
        for backend in pool.healthy():
            info = await backend.object_info()
            found += [f"{backend.name}: {p}" for p in preflight.problems(remote, info)]
        if found:
            raise preflight.PreflightError(found)


class _Run:
    """One run of one plan: the scheduler's job function and the records it leaves."""

    def __init__(
        self,
        runner: Runner,
        spec: Spec,
        plan: Plan,
        selection: Selection,
        pool: ServerPool,
        bus: Bus,
        hooks: list[Hook],
        on_run: Callable[[int], None] | None,
    ) -> None:
        self.runner = runner
        self.hooks = hooks
        self.on_run = on_run
        self.spec = spec
        self.plan = plan
        self.selection = selection
        self.pool = pool
        self.bus = bus
        self.store = runner.store
        self.root = runner.settings.output_path
        self.project_root = outputs.project_dir(self.root, plan.project)
        self.results: dict[str, JobResult] = {}
        self.submitted = 0
        self.run_id = 0
        self.resumable: dict[str, Resumable] = {}

    def _open(self) -> dict[str, str]:
        """The run's opening writes, one per job for a big plan: run in a thread (`go`)."""
        store = self.store
        reasons = plan_reasons(
            store, self.plan, self.root, self.spec.templates, force=self.selection.force
        )
        store.sync_spec(self.spec)
        self.run_id = store.create_run(
            self.spec,
            ", ".join(self.pool.names),
            preview=self.runner.preview,
            settings=self.runner.settings.public(),
        )
        store.add_jobs(self.run_id, self.plan.jobs(), reasons)
        return reasons

    async def go(self) -> RunReport:
        store = self.store
        # Off the event loop, so the API's health and status stay live meanwhile. A cancel
        # arriving meanwhile lets the writes finish, then records the run as cancelled.
        opening = asyncio.ensure_future(asyncio.to_thread(self._open))
        try:
            reasons = await asyncio.shield(opening)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(opening)
            if self.run_id:
                store.finish_run(self.run_id, "cancelled", {}, None)
            raise
        if self.on_run is not None:
            self.on_run(self.run_id)
        store.log(self.run_id, "run_started", spec=self.spec.file, jobs=len(self.plan))
        self.resumable = store.resumable(self.plan.project, (j.hash for j in self.plan.jobs()))
        cached = self._cached(reasons)
        # The pool's slots cap what is on the servers (MAX_CONCURRENT_JOBS); the scheduler
        # may run as many again that are downloading or being checked, so a slot freed by
        # a finished prompt is refilled while the last output is still being probed.
        policy = self.runner.policy or Policy(
            max_remote=2 * self.pool.slots,
            timeout=self.runner.settings.workflow_timeout,
        )
        self.bus.subscribe(self._record)
        scheduler = Scheduler(self.plan, self._job, policy=policy, bus=self.bus)
        started = manifest.now()
        states: dict[str, JobState] = {}
        try:
            states = await scheduler.run(cached)
        finally:
            states = states or dict(scheduler.states)
            report = RunReport(
                run_id=self.run_id,
                project=self.plan.project,
                states=states,
                errors=dict(scheduler.errors),
                manifest=None,
                preview=self.runner.preview,
                backend=", ".join(self.pool.names),
                submitted=self.submitted,
                results=self.results,
            )
            report.manifest = self._write_manifest(report, started)
            store.finish_run(self.run_id, report.status, report.counts(), str(report.manifest))
            store.log(self.run_id, "run_finished", status=report.status, **report.counts())
            self._notify(
                "run_finished",
                {
                    "run_id": self.run_id,
                    "project": self.plan.project,
                    "status": report.status,
                    "counts": report.counts(),
                    "manifest": str(report.manifest),
                    "errors": report.errors,
                    "preview": report.preview,
                },
            )
        return report

    def _notify(self, event: str, payload: dict[str, Any]) -> None:
        if not self.hooks:
            return
        run_id = self.run_id

        def record(kind: str, data: Mapping[str, Any]) -> None:
            self.store.log(run_id, kind, payload.get("job_id"), **data)

        self.runner.webhooks.send(self.hooks, event, payload, record)

    def _cached(self, reasons: Mapping[str, str]) -> dict[str, JobResult]:
        cached_ids = {j for j, r in reasons.items() if r == "cached"}
        assets = self.store.find_assets(
            self.plan.project, (self.plan.job(j).hash for j in cached_ids)
        )
        out = {}
        for job_id in cached_ids:
            asset = assets[self.plan.job(job_id).hash]
            out[job_id] = JobResult(
                files=(
                    OutputFile(
                        path=self.root / asset.path,
                        sha256=asset.sha256,
                        bytes=asset.bytes,
                        probe=asset.probe,
                        quality=asset.quality,
                    ),
                ),
                server="cache",
                meta={"cached_from_run": asset.run_id},
            )
        self.results.update(out)
        return out

    def _write_manifest(self, report: RunReport, started: str) -> Path:
        document = manifest.build(
            self.plan,
            root=self.project_root,
            run={
                "id": str(self.run_id),
                "status": report.status,
                "backend": report.backend,
                "preview": self.runner.preview,
                "notice": PREVIEW_NOTICE if self.runner.preview else None,
                "started_at": started,
                "finished_at": manifest.now(),
                "settings": self.runner.settings.public(),
                "submitted": self.submitted,
            },
            states={k: v.value for k, v in report.states.items()},
            results=self.results,
            errors=report.errors,
        )
        return manifest.write(self.project_root, document)

    def _record(self, event: Event) -> None:
        store, run_id = self.store, self.run_id
        match event:
            case JobStarted(job_id, attempt):
                store.mark_running(run_id, job_id, attempt)
            case JobSucceeded(job_id, seconds, result):
                store.mark_done(run_id, job_id, "succeeded", seconds=seconds)
                store.log(run_id, "job_succeeded", job_id, seconds=round(seconds, 3))
                files = [str(f.path) for f in result.files] if result else []
                self._notify(
                    "job_finished",
                    {"run_id": run_id, "job_id": job_id, "status": "succeeded", "outputs": files},
                )
            case JobFailed(job_id, error, kind, attempt, final):
                state = "cancelled" if kind == "cancelled" else "failed"
                if kind == "cancelled" and self.runner.detach:
                    pass  # left on the server as submitted, to be re-attached
                elif final:
                    store.mark_done(run_id, job_id, state, error=error, error_kind=kind)
                if final and kind != "cancelled":
                    self._notify(
                        "job_failed",
                        {"run_id": run_id, "job_id": job_id, "status": "failed", "error": error},
                    )
                store.log(
                    run_id,
                    "job_failed",
                    job_id,
                    error=error,
                    kind=kind,
                    attempt=attempt,
                    final=final,
                )
            case JobSkipped(job_id, because):
                store.mark_done(run_id, job_id, "skipped", error=f"skipped: {because} failed")

    # -- the job function --------------------------------------------------------------

    async def _job(
        self, job: Job, attempt: int, progress: Callable[[float, float], None]
    ) -> JobResult:
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
        source = self.results[job.deps[0]].main
        target = dest / f"frame-{job.hash[:12]}.png"
        await media.last_frame(source, target)
        return await self._finish(job, (target,), server="local")

    async def _assemble(self, job: Job, dest: Path) -> JobResult:
        inputs = [self.results[d].main for d in job.deps]
        name = "scene.mp4" if job.scene else f"{self.plan.project}.mp4"
        target = dest / name
        e = job.expect
        await media.concat(inputs, target, width=e.width, height=e.height, fps=e.fps or 24.0)
        return await self._finish(job, (target,), server="local")

    async def _render(
        self, job: Job, attempt: int, dest: Path, report: Callable[[float, float], None]
    ) -> JobResult:
        start = None
        if job.start_image is not None:
            start = (
                Path(job.start_image.file)
                if job.start_image.file
                else self.results[job.start_image.job or ""].main
            )
        retries = int(job.meta.get("quality_retries") or 0)
        last: QualityFailed | None = None
        for reseed in range(retries + 1):
            workflow = self._reseeded(job, reseed)
            resume = self.resumable.pop(job.hash, None) if reseed == 0 else None
            if resume is not None:
                self.store.take_over(self.run_id, job.hash)
            prompt_id = resume.prompt_id if resume else str(uuid.uuid4())
            outcome = await self._execute(
                job, attempt, dest, start, workflow, prompt_id, resume, report
            )
            workflow_file = dest / f"{job.kind.value}-{job.hash[:12]}.workflow.json"
            outputs.atomic_write_json(workflow_file, outcome.workflow or workflow)
            try:
                return await self._finish(
                    job,
                    outcome.files,
                    server=outcome.server,
                    prompt_id=outcome.prompt_id,
                    attempts=attempt + reseed,
                    workflow=workflow_file,
                    meta={"seed": self._seed(job, reseed), "cached_on_server": outcome.cached},
                )
            except QualityFailed as exc:
                last = exc
                self.store.log(
                    self.run_id, "quality_failed", job.id, reason=exc.message, reseed=reseed
                )
                if reseed < retries:
                    self.runner.notify(f"{job.id}: {exc.message}; retrying with a new seed")
        assert last is not None
        raise last

    def _seed(self, job: Job, reseed: int) -> int | None:
        seed = job.meta.get("seed")
        if reseed == 0 or seed is None:
            return seed
        return derive_seed(job.hash, str(reseed))

    def _reseeded(self, job: Job, reseed: int) -> dict[str, Any]:
        """The job's workflow, with a fresh seed for a quality retry."""
        workflow = dict(job.workflow)
        if reseed == 0 or job.template is None:
            return workflow
        seed = self._seed(job, reseed)
        for b in self.spec.templates[job.template].bind.get("seed", ()):
            node = workflow[b.node]
            value = seed % b.mod if b.mod and seed is not None else seed
            workflow[b.node] = {**node, "inputs": {**node["inputs"], b.input: value}}
        return workflow

    async def _execute(
        self,
        job: Job,
        attempt: int,
        dest: Path,
        start: Path | None,
        workflow: dict[str, Any],
        prompt_id: str,
        resume: Resumable | None,
        report: Callable[[float, float], None],
    ) -> Outcome:
        def progress(p: Progress) -> None:
            report(p.value, p.max)

        async with self.pool.lease(prefer=resume.server if resume else None) as backend:
            self.store.mark_submitting(self.run_id, job.id, prompt_id, backend.name, attempt)
            report(0, 0)  # submitted: the WORKFLOW_TIMEOUT clock starts now
            try_ = Attempt(
                job=job,
                prompt_id=prompt_id,
                dest=dest,
                start_image=start,
                resume=resume is not None,
                workflow=workflow,
            )
            try:
                outcome = await backend.execute(try_, progress)
            except asyncio.CancelledError:
                if not self.runner.detach:
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
        meta: Mapping[str, Any] | None = None,
    ) -> JobResult:
        """Probe and check the main output, record the asset, and describe the result."""
        main = files[0]
        template = self.spec.templates.get(job.template or "")
        threshold = job.meta.get("quality_threshold") or self.runner.settings.quality_threshold
        try:
            # Soft checks judge what a model made: not a still-by-design template's flat
            # card, and not assemblies or frames, whose every input was checked already.
            judged = job.kind in (JobKind.RENDER, JobKind.KEYFRAME) and not (
                template and template.still
            )
            facts, quality = await probe.check(
                main,
                job.expect,
                threshold=float(threshold),
                detect_black=judged,
                detect_frozen=judged,
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
            sha = await asyncio.to_thread(file_digest, path)
            size = path.stat().st_size
            records.append(
                OutputFile(
                    path=path,
                    sha256=sha,
                    bytes=size,
                    probe=facts.as_dict() if i == 0 else None,
                    quality=quality.as_dict() if i == 0 else None,
                    workflow=workflow if i == 0 else None,
                )
            )
        main_record = records[0]
        self.store.add_asset(
            self.run_id,
            self.spec,
            job,
            path=main.relative_to(self.root).as_posix()
            if main.is_relative_to(self.root)
            else str(main),
            sha256=main_record.sha256,
            size=main_record.bytes,
            probe=main_record.probe,
            quality=main_record.quality,
        )
        result = JobResult(
            files=tuple(records),
            server=server,
            prompt_id=prompt_id,
            attempts=attempts,
            meta=dict(meta or {}),
        )
        self.results[job.id] = result
        return result


async def run_cancellable(coro: Any) -> Any:
    """Run `coro` so SIGINT and SIGTERM cancel it (and it records why) instead of killing."""
    import signal

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coro)
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
