"""Handing a run to the workers, and following it from anywhere.

`submit` writes the run's rows (why each job runs, which are cached), records its priority
and queues the jobs that are ready at once; the workers do the rest. `follow` turns the job
rows' changes into the same events `bridge run` shows, until the run has ended.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

from bridge import events as ev
from bridge import farm_runs, freshness, queue
from bridge.db import farm
from bridge.db.models import JobRecord, Run
from bridge.db.store import WORKERS_BACKEND, Store
from bridge.errors import UsageError
from bridge.plan import Plan
from bridge.record import Recorder
from bridge.runner import Selection
from bridge.settings import Settings
from bridge.spec.model import Spec
from bridge.states import JobState, RunState
from bridge.webhooks import Notifier


async def submit(
    settings: Settings,
    store: Store,
    spec: Spec,
    plan: Plan,
    selection: Selection,
    *,
    priority: int,
) -> int:
    """The run's id; its ready jobs are queued for the workers when this returns."""
    app = queue.app_for(settings.database)
    root = settings.output_path
    if not Path(spec.file).is_file():
        raise UsageError(
            f"project {spec.project.id!r} is held only in the database; workers render from "
            "a spec file: `bridge export` it, then submit the file"
        )
    public = settings.public()
    public[farm_runs.SPEC_PATH] = str(Path(spec.file).resolve())
    public[farm_runs.SPEC_FOLDER] = str(spec.folder.resolve())
    public[farm_runs.DIRECTION] = farm_runs.direction_digest(Path(spec.file))
    # the workers compile the spec while this writes its rows; the run names that compile
    public[farm_runs.PREPARED] = uuid.uuid4().hex
    await asyncio.to_thread(
        farm.announce_spec,
        store.engine,
        public[farm_runs.PREPARED],
        public[farm_runs.SPEC_PATH],
        public[farm_runs.SPEC_FOLDER],
    )
    reasons = await asyncio.to_thread(
        freshness.reasons, store, plan, root, spec.templates, force=selection.force
    )
    recorder = Recorder(store, spec, plan, root=root, hooks=[], webhooks=Notifier(), detach=True)
    public[farm_runs.SELECTION] = {
        "scene_ids": list(selection.scene_ids),
        "only": list(selection.only),
        "force": selection.force,
    }
    run_id = await asyncio.to_thread(
        recorder.start,
        reasons,
        backend=WORKERS_BACKEND,
        preview=False,
        settings=public,
        priority=priority,
    )
    await asyncio.to_thread(farm.announce_run, store.engine, run_id)
    async with app.open_async():
        await queue.ensure_schema(app, store.engine)
        lanes = len(await asyncio.to_thread(farm.server_counts, store.engine))
        await queue.defer_ready(
            app,
            store.engine,
            run_id,
            plan,
            priority,
            group=settings.affinity,
            lanes=lanes,
            lease=settings.lease_seconds,
            settle=queue.FIRST_POSTED_WAIT,
        )
    ctx = farm_runs.RunContext(run_id, spec, plan, priority)
    runs = farm_runs.Runs(store, root, {}, Notifier())
    await asyncio.to_thread(runs.finish_if_done, ctx)  # everything was cached
    return run_id


async def follow(
    store: Store,
    run_id: int,
    emit: Callable[[object], None],
    *,
    interval: float = 0.5,
) -> Run:
    """Emit each job's changes as run events until the run ends; returns its final row."""
    seen: dict[str, str] = {}
    while True:
        run = await asyncio.to_thread(store.run, run_id)
        if run is None:
            raise LookupError(f"there is no run {run_id}")
        rows = await asyncio.to_thread(store.jobs, run_id)
        for row in rows:
            before = seen.get(row.job_id)
            if before == row.state:
                continue
            seen[row.job_id] = row.state
            for event in _events(row, before):
                emit(event)
        if run.status != RunState.RUNNING.value:
            return run
        await asyncio.sleep(interval)


def _events(row: JobRecord, before: str | None) -> list[object]:
    state = JobState(row.state)
    out: list[object] = []
    started = before in (JobState.SUBMITTED, JobState.RUNNING)
    if state in (JobState.SUBMITTED, JobState.RUNNING) and not started:
        out.append(ev.JobStarted(row.job_id, max(1, row.attempts)))
    elif state is JobState.SUCCEEDED:
        out.append(ev.JobSucceeded(row.job_id, row.seconds or 0.0))
    elif state is JobState.CACHED:
        out.append(ev.JobCached(row.job_id))
    elif state in (JobState.FAILED, JobState.CANCELLED):
        error = row.error or state.value
        out.append(
            ev.JobFailed(row.job_id, error, row.error_kind or "permanent", row.attempts, True)
        )
    elif state is JobState.SKIPPED:
        because = (row.error or "").removeprefix("skipped: ").removesuffix(" failed")
        out.append(ev.JobSkipped(row.job_id, because))
    return out
