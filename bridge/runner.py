"""The one entry the front doors share: plan → backends → checked outputs → records.

Thin wiring of three parts: `freshness` says why each job would run, `execute` runs the
jobs, `record` writes what happened. A Runner is long-lived in `bridge watch` and `bridge
serve` (one pool, one global job limit for every spec) and lives for one run in `bridge run`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import networkx as nx
from sqlalchemy.exc import DBAPIError

from bridge import affinity, freshness, manifest, preflight
from bridge.backends.comfyui import ComfyUIBackend
from bridge.backends.pool import ServerPool
from bridge.backends.preview import PreviewBackend
from bridge.db.store import Store
from bridge.errors import ConfigError, PreflightError, TransientBackendError, UsageError
from bridge.events import Bus
from bridge.execute import Executor
from bridge.plan import JobKind, Plan
from bridge.record import Recorder, RunReport
from bridge.scheduler import JobState, Policy, Scheduler
from bridge.settings import Settings
from bridge.spec.model import Spec
from bridge.states import RunState
from bridge.webhooks import Hook, Notifier, hooks_from_spec

__all__ = ["RunReport", "Runner", "Selection", "run_cancellable"]

PREVIEW_NOTICE = (
    "PREVIEW: no ComfyUI server answered, so bridge rendered an animatic with ffmpeg "
    "(shot cards of the right size, fps and length), not real renders. "
    "Set COMFYUI_URL to render on ComfyUI."
)
DEFAULT_URL = "http://127.0.0.1:8188"
T = TypeVar("T")


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


class Runner:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        notify: Callable[[str], None] = lambda _: None,
        policy: Policy | None = None,
        detach: bool = False,
        outlive_outages: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or Store(settings.database)
        self.notify = notify
        self.policy = policy
        # detach: a cancelled run leaves its prompts on the servers, recorded as detached,
        # for the next start to re-attach to (the watch daemon's SIGTERM).
        self.detach = detach
        # A daemon's accepted run outlives a database outage: it runs again once it is back.
        self.outlive_outages = outlive_outages
        self.environ = dict(environ or {})
        self.webhooks = Notifier(backoff=settings.webhook_retry)
        self._projects: dict[str, asyncio.Lock] = {}
        self.pool: ServerPool | None = None
        self.preview = False
        self.bus = Bus()
        self._pool_lock = asyncio.Lock()

    async def close(self) -> None:
        """Outstanding webhooks finish (up to BRIDGE_WEBHOOK_DRAIN) before the store closes."""
        try:
            await self.webhooks.drain(self.settings.webhook_drain)
        finally:
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
        priority: int | None = None,
    ) -> RunReport:
        """Render `plan`; returns when every job has ended. Cancelling the task stops the
        run: queued prompts are deleted, running ones interrupted, and it is recorded.
        `on_run` hears the run's id as soon as it exists (the API answers with it).
        `priority` (else the spec's) orders this run's jobs against other runs' for slots."""
        selection = selection or Selection()
        pool = await self.backend()
        all_hooks = [*hooks_from_spec(spec.webhooks, self.environ), *hooks]
        started: list[int] = []

        def heard(run_id: int) -> None:
            if started:  # a run again after an outage: the cut-short run says which
                self.store.log(started[-1], "continued_as", data={"run_id": run_id})
            started.append(run_id)
            if on_run is not None:
                on_run(run_id)

        while True:
            try:
                # Runs of one project take turns, so the same spec dropped twice renders once.
                async with self._projects.setdefault(plan.project, asyncio.Lock()):
                    found = await self._fresh(spec, plan, selection, pool)
                    return await self._run(
                        spec,
                        plan,
                        found,
                        pool,
                        bus or Bus(),
                        all_hooks,
                        heard,
                        spec.priority if priority is None else priority,
                        started[0] if started else 0,
                    )
            except DBAPIError:
                if not (self.outlive_outages and started):
                    raise  # before the run was accepted: the caller refuses or waits
                if await asyncio.to_thread(self.store.check):
                    raise  # not an outage
                await self._after_outage(plan.project, started[-1])

    async def _after_outage(self, project: str, run_id: int) -> None:
        """The database went away under a daemon's run: wait for it, record the run as
        interrupted, and let the caller's loop run the plan again (its posted prompts are
        re-attached, its finished outputs reused)."""
        self.notify(
            f"the database went away during run {run_id} of {project}; "
            "it runs again once the database is back"
        )
        await self.store.wait_available(first_delay=0.5, max_delay=10.0)
        with contextlib.suppress(DBAPIError):  # gone again: the next create_run marks it
            await asyncio.to_thread(self.store.finish_run, run_id, RunState.INTERRUPTED, {}, None)

    async def _fresh(
        self, spec: Spec, plan: Plan, selection: Selection, pool: ServerPool
    ) -> dict[str, freshness.Reason]:
        """What is fresh, read from the database while the servers' /object_info is fetched
        for the preflight; nothing is recorded before the preflight has passed."""
        reading = asyncio.ensure_future(
            asyncio.to_thread(
                freshness.reasons,
                self.store,
                plan,
                self.settings.output_path,
                spec.templates,
                force=selection.force,
            )
        )
        try:
            if not self.preview:
                await self._preflight(pool, plan)
        except BaseException:
            with contextlib.suppress(Exception):
                await reading  # the store is not closed under a running read
            raise
        return await reading

    async def _run(
        self,
        spec: Spec,
        plan: Plan,
        found: dict[str, freshness.Reason],
        pool: ServerPool,
        bus: Bus,
        hooks: list[Hook],
        on_run: Callable[[int], None] | None,
        priority: int,
        answered: int,
    ) -> RunReport:
        root = self.settings.output_path
        backend = ", ".join(pool.names)
        recorder = Recorder(
            self.store,
            spec,
            plan,
            root=root,
            hooks=hooks,
            webhooks=self.webhooks,
            detach=self.detach,
            answered=answered,
        )

        def opening() -> int:
            return recorder.start(
                found,
                backend=backend,
                preview=self.preview,
                settings=self.settings.public(),
                priority=priority,
            )

        # A big plan's opening writes (a row per job) run off the event loop, so the API's
        # health stays live meanwhile; a cancel arriving then lets them finish and records
        # the run as cancelled.
        opened = asyncio.ensure_future(asyncio.to_thread(opening))
        try:
            run_id = await asyncio.shield(opened)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(opened)
            if recorder.run_id and self.detach:
                self.store.detach_unfinished(recorder.run_id)
                self.store.finish_run(recorder.run_id, RunState.DETACHED, {}, None)
            elif recorder.run_id:
                self.store.end_pending(recorder.run_id, JobState.CANCELLED)
                self.store.finish_run(recorder.run_id, RunState.CANCELLED, {}, None)
            raise
        if on_run is not None:
            on_run(run_id)
        execute = Executor(
            plan,
            pool,
            recorder,
            root=root,
            quality_threshold=self.settings.quality_threshold,
            resumable=recorder.resumable(),
            detach=self.detach,
            notify=self.notify,
            priority=priority,
        )
        cached = recorder.cached(j for j, r in found.items() if not r.runs)
        execute.results.update(cached)
        # The pool's slots cap what is on the servers (MAX_CONCURRENT_JOBS); the scheduler
        # may run as many again that are downloading or being checked, so a slot freed by
        # a finished prompt is refilled while the last output is still being probed.
        policy = self.policy or Policy(
            max_remote=2 * pool.slots, timeout=self.settings.workflow_timeout
        )
        # Jobs sharing expensive nodes run back to back: the server's cache keeps only the
        # last prompt's outputs (BRIDGE_AFFINITY=0: plan order).
        family = (lambda job: affinity.job_family(job.workflow)) if self.settings.affinity else None
        scheduler = Scheduler(plan, execute, policy=policy, bus=bus, record=recorder, family=family)
        started = manifest.now()
        states: dict[str, JobState] = {}
        try:
            states = await scheduler.run(dict(cached))
        finally:
            report = RunReport(
                run_id=run_id,
                project=plan.project,
                states=states or dict(scheduler.states),
                errors=dict(scheduler.errors),
                manifest=None,
                preview=self.preview,
                backend=backend,
                submitted=execute.submitted,
                results=execute.results,
                detached=self.detach,
            )
            report.manifest = recorder.finish(
                report,
                {
                    "backend": backend,
                    "preview": self.preview,
                    "notice": PREVIEW_NOTICE if self.preview else None,
                    "started_at": started,
                    "finished_at": manifest.now(),
                    "settings": self.settings.public(),
                    "submitted": execute.submitted,
                },
            )
        return report

    async def _preflight(self, pool: ServerPool, plan: Plan) -> None:
        """Every healthy server asked, at once, for the node classes the plan uses."""
        remote = [j for j in plan.jobs() if j.kind.remote]
        classes = {node["class_type"] for j in remote for node in j.workflow.values()}
        servers = pool.healthy()
        infos = await asyncio.gather(*(b.object_info(classes) for b in servers))
        found = [
            f"{backend.name}: {p}"
            for backend, info in zip(servers, infos, strict=True)
            for p in preflight.problems(remote, info)
        ]
        if found:
            raise PreflightError(found)


async def run_cancellable(coro: Awaitable[T], again: Callable[[], None] | None = None) -> T:
    """Run `coro` so SIGINT and SIGTERM cancel it (and it records why) instead of killing;
    a second signal calls `again`, if given, instead of cancelling it once more."""
    import signal

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coro)
    signalled = False

    def stop() -> None:
        nonlocal signalled
        if signalled and again is not None:
            again()
            return
        signalled = True
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)
    try:
        return await task
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
