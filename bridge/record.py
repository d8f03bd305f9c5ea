"""What a run leaves behind: its rows in the job store, its manifest and its webhooks.

Every write here is a step the run awaits (the scheduler awaits `Recorder.__call__` on each
event of a job's life before any display hears of it), so a write that fails ends the run
with its error instead of leaving a record that silently lacks it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError

from bridge import manifest, outputs
from bridge.db.models import GeneratedAsset
from bridge.db.store import Asset, Resumable, Store
from bridge.events import Event, JobFailed, JobSkipped, JobStarted, JobSucceeded
from bridge.freshness import Reason, as_text
from bridge.manifest import JobResult, OutputFile
from bridge.plan import Job, Plan
from bridge.spec.model import Spec
from bridge.states import JobState, RunState
from bridge.webhooks import Hook, Notifier


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
    detached: bool = False  # stopped by a daemon's SIGTERM: what is unfinished resumes later

    @property
    def ok(self) -> bool:
        return all(s in (JobState.SUCCEEDED, JobState.CACHED) for s in self.states.values())

    @property
    def status(self) -> RunState:
        if JobState.CANCELLED in set(self.states.values()):
            return RunState.DETACHED if self.detached else RunState.CANCELLED
        return RunState.SUCCEEDED if self.ok else RunState.FAILED

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for state in self.states.values():
            out[state.value] = out.get(state.value, 0) + 1
        return dict(sorted(out.items()))


def recorded_file(root: Path, asset: GeneratedAsset) -> OutputFile:
    """A job's main output as its asset row recorded it (path relative to OUTPUT_PATH)."""
    return OutputFile(
        path=root / asset.path,
        sha256=asset.sha256,
        bytes=asset.bytes,
        probe=asset.probe,
        quality=asset.quality,
    )


class Recorder:
    """The records of one run of one plan."""

    def __init__(
        self,
        store: Store,
        spec: Spec,
        plan: Plan,
        *,
        root: Path,
        hooks: list[Hook],
        webhooks: Notifier,
        detach: bool,
        answered: int = 0,
    ) -> None:
        self.store = store
        self.spec = spec
        self.plan = plan
        self.root = root
        self.hooks = hooks
        self.webhooks = webhooks
        # detach: a cancelled job is recorded as detached (its prompt re-attached later)
        self.detach = detach
        # the run id the client was given, when this run continues one an outage cut short
        self.answered = answered
        self.run_id = 0
        self.database_lost = False

    def start(
        self,
        reasons: Mapping[str, Reason],
        *,
        backend: str,
        preview: bool,
        settings: Mapping[str, Any],
        priority: int = 0,
    ) -> int:
        """The run's row, its spec's rows and one row per job; returns the run's id."""
        store = self.store
        store.sync_spec(self.spec)
        self.run_id = store.create_run(
            self.spec,
            backend,
            preview=preview,
            settings=settings,
            jobs=self.plan.jobs(),
            reasons=as_text(reasons),
            cached={job_id for job_id, reason in reasons.items() if not reason.runs},
            priority=priority,
        )
        store.log(self.run_id, "run_started", data={"spec": self.spec.file, "jobs": len(self.plan)})
        return self.run_id

    def cached(self, job_ids: Iterable[str]) -> dict[str, JobResult]:
        """The recorded outputs of jobs that will not run, as if they had just finished."""
        ids = set(job_ids)
        assets = self.store.find_assets(self.plan.project, (self.plan.job(j).hash for j in ids))
        out = {}
        for job_id in ids:
            asset = assets[self.plan.job(job_id).hash]
            out[job_id] = JobResult(
                files=(recorded_file(self.root, asset),),
                server="cache",
                meta={"cached_from_run": asset.run_id},
            )
        return out

    def resumable(self) -> dict[str, Resumable]:
        return self.store.resumable(self.plan.project, (j.hash for j in self.plan.jobs()))

    # -- steps of a job's life -----------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Notes a database that went away, so cancelled jobs leave their prompts on the
        servers for the run that continues this one to re-attach to."""
        try:
            yield
        except DBAPIError:
            self.database_lost = True
            raise

    async def __call__(self, event: Event) -> None:
        """The scheduler's record: the rows for one event, then its webhook."""
        with self._writing():
            self._record(event)

    def _record(self, event: Event) -> None:
        store, run_id = self.store, self.run_id
        match event:
            case JobStarted(job_id, attempt):
                store.mark_running(run_id, job_id, attempt)
            case JobSucceeded(job_id, seconds, result):
                done = isinstance(result, JobResult) and result.files
                asset = self._asset(result.files[0]) if done else None
                job = self.plan.job(job_id)
                store.succeeded(run_id, self.spec, job, seconds=seconds, asset=asset)
                files = [str(f.path) for f in result.files] if result else []
                self._notify(
                    "job_finished",
                    {
                        "run_id": run_id,
                        "job_id": job_id,
                        "status": JobState.SUCCEEDED.value,
                        "outputs": files,
                    },
                )
            case JobFailed(job_id, error, kind, attempt, final):
                cancelled = kind == "cancelled"
                if final:
                    state = JobState.FAILED
                    if cancelled:
                        state = JobState.DETACHED if self.detach else JobState.CANCELLED
                    store.mark_done(run_id, job_id, state, error=error, error_kind=kind)
                store.log(
                    run_id,
                    "job_failed",
                    job_id,
                    data={"error": error, "kind": kind, "attempt": attempt, "final": final},
                )
                if final and not cancelled:
                    self._notify(
                        "job_failed",
                        {
                            "run_id": run_id,
                            "job_id": job_id,
                            "status": JobState.FAILED.value,
                            "error": error,
                        },
                    )
            case JobSkipped(job_id, because):
                skipped = f"skipped: {because} failed"
                store.mark_done(run_id, job_id, JobState.SKIPPED, error=skipped)

    async def submitting(self, job: Job, prompt_id: str, server: str, attempt: int) -> None:
        """Committed before the prompt is posted: what makes a killed run resumable."""
        with self._writing():
            self.store.mark_submitting(self.run_id, job.id, prompt_id, server, attempt)

    def take_over(self, job: Job) -> None:
        self.store.take_over(self.run_id, job.hash)

    def quality_failed(self, job: Job, reason: str, reseed: int) -> None:
        self.store.log(
            self.run_id, "quality_failed", job.id, data={"reason": reason, "reseed": reseed}
        )

    def _asset(self, main: OutputFile) -> Asset:
        path = main.path
        return Asset(
            path=path.relative_to(self.root).as_posix()
            if path.is_relative_to(self.root)
            else str(path),
            sha256=main.sha256,
            bytes=main.bytes,
            probe=main.probe,
            quality=main.quality,
        )

    # -- the run's end -------------------------------------------------------------------

    def finish(self, report: RunReport, run: Mapping[str, Any]) -> Path:
        """The manifest, the run's final row and its notice; returns the manifest's path."""
        project_root = outputs.project_dir(self.root, self.plan.project)
        document = manifest.build(
            self.plan,
            root=project_root,
            run={"id": str(self.run_id), "status": report.status.value, **run},
            states={k: v.value for k, v in report.states.items()},
            results=report.results,
            errors=report.errors,
        )
        path = manifest.write(project_root, document)
        counts = report.counts()
        if report.status is RunState.CANCELLED:
            self.store.end_pending(self.run_id, JobState.CANCELLED)
        elif report.status is RunState.DETACHED:
            self.store.detach_unfinished(self.run_id)
        self.store.finish_run(self.run_id, report.status, counts, str(path))
        self.store.log(self.run_id, "run_finished", data={"status": report.status.value, **counts})
        notice = run_finished(
            self.run_id, self.plan.project, report, path, job_id=self.answered or self.run_id
        )
        self._notify("run_finished", notice)
        return path

    def _notify(self, event: str, payload: dict[str, Any]) -> None:
        if not self.hooks:
            return
        run_id, job_id = self.run_id, payload.get("job_id")

        def delivered(kind: str, data: Mapping[str, Any]) -> None:
            self.store.log(run_id, kind, job_id, data=data)

        self.webhooks.send(self.hooks, event, payload, delivered)


def run_finished(
    run_id: int, project: str, report: RunReport, manifest: Path, *, job_id: int | None = None
) -> dict[str, Any]:
    """The run-level notice (schemas/webhook.schema.json). Its first fields are what the old
    Content Generation Bridge's handlers read: `job_id` (the id the API answered with: the
    run's, or the one it continues after a database outage) and `status` `completed`, or
    `failed` with an `error`; bridge's own state is `run_status`."""
    ok = report.status is RunState.SUCCEEDED
    payload: dict[str, Any] = {
        "job_id": job_id or run_id,
        "status": "completed" if ok else "failed",
    }
    if not ok:
        payload["error"] = _run_error(report)
    return payload | {
        "run_id": run_id,
        "project": project,
        "run_status": report.status.value,
        "counts": report.counts(),
        "manifest": str(manifest),
        "errors": report.errors,
        "preview": report.preview,
    }


def _run_error(report: RunReport) -> str:
    if report.status is RunState.CANCELLED:
        return "the run was cancelled before it finished"
    if report.status is RunState.DETACHED:
        return "bridge stopped before the run finished; it resumes at the next start"
    if report.errors:
        job, error = next(iter(report.errors.items()))
        more = len(report.errors) - 1
        return f"{job}: {error}" + (f" (and {more} more failed job(s))" if more else "")
    return f"the run ended {report.status.value}"
