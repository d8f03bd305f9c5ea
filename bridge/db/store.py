"""The job store: every state change of a run, written as it happens.

Writes are small and synchronous; a run does a few per job, far fewer than the seconds
each job takes, so they are not worth a thread. SQLite runs in WAL mode so `bridge status`
can read while a run writes. Ordering matters in one place: `mark_submitting` commits the
prompt_id before the prompt is posted, which is what makes a killed run resumable.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, insert, or_, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlmodel import Session, col, create_engine, select

from bridge.db.models import (
    Character,
    EventRecord,
    GeneratedAsset,
    JobRecord,
    Project,
    Run,
    Scene,
    Shot,
    SsotTracking,
    utcnow,
)
from bridge.db.schema import ensure_schema
from bridge.errors import ConfigError
from bridge.masking import mask_url
from bridge.plan import Job
from bridge.spec import rows
from bridge.spec.model import Spec
from bridge.states import RESUMABLE, UNFINISHED, JobState, RunState

logger = logging.getLogger(__name__)
WORKERS_BACKEND = "workers"  # a run submitted to `bridge worker`s


def _in_chunks(values: Iterable[str], size: int = 500) -> Iterator[list[str]]:
    """Distinct `values` in lists short enough for one IN (...) on either database."""
    wanted = sorted(set(values))
    for start in range(0, len(wanted), size):
        yield wanted[start : start + size]


@dataclass(frozen=True)
class Asset:
    """A job's main output as it is recorded: path relative to OUTPUT_PATH where it can be."""

    path: str
    sha256: str
    bytes: int
    probe: Mapping[str, Any] | None
    quality: Mapping[str, Any] | None


@dataclass(frozen=True)
class Resumable:
    """A prompt an earlier, interrupted run posted and never saw finish."""

    prompt_id: str
    server: str | None


def resumable_in(conn: Connection, project_id: str, hashes: list[str]) -> dict[str, Resumable]:
    """Store.resumable on a connection already open (a worker's claim transaction)."""
    rows = conn.execute(
        select(JobRecord.hash, JobRecord.prompt_id, JobRecord.server)
        .join(Run, col(Run.id) == JobRecord.run_id)
        .where(
            col(JobRecord.hash).in_(hashes),
            col(JobRecord.state).in_([state.value for state in RESUMABLE]),
            col(JobRecord.prompt_id).is_not(None),
            Run.project_id == project_id,
        )
        .order_by(col(JobRecord.id))
    )
    return {row.hash: Resumable(row.prompt_id, row.server) for row in rows if row.prompt_id}


def engine_for(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout and its folder created."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    # pre-ping: connections from before an outage are replaced, not failed on
    connect_args = {"connect_timeout": 10} if url.startswith("postgresql+psycopg://") else {}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


class Store:
    """The job store on one database.

    `Store(url)` opens the database at once and fails with a ConfigError when it cannot;
    a daemon passes `connect=False`, starts anyway, and calls `wait_available` (or `check`
    from its health probe): `available` says whether the database answered last time, and
    each change of it is logged once, as one line.
    """

    def __init__(self, url: str, *, connect: bool = True) -> None:
        self.url = url
        self.available = False
        self._state_known = False  # whether `available` has been logged yet
        self._schema_ready = False
        try:
            self.engine = engine_for(url)
            if connect:
                ensure_schema(self.engine)
                self._schema_ready = self.available = self._state_known = True
        except (SQLAlchemyError, OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot open the database {mask_url(url)}: {_first_line(exc)}"
            ) from None

    def close(self) -> None:
        self.engine.dispose()

    def check(self) -> bool:
        """Whether the database answers now; the first success also brings its schema up
        to date. A misconfiguration (bad URL, newer schema) raises ConfigError instead."""
        try:
            if self._schema_ready:
                with self.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
            else:
                ensure_schema(self.engine)
                self._schema_ready = True
        except (OperationalError, OSError) as exc:  # down, refused, restarting, timed out
            self._note(False, exc)
            return False
        except (SQLAlchemyError, ValueError) as exc:
            raise ConfigError(
                f"cannot open the database {mask_url(self.url)}: {_first_line(exc)}"
            ) from None
        self._note(True)
        return True

    async def wait_available(self, *, first_delay: float = 0.5, max_delay: float = 30.0) -> None:
        """Check until the database answers, backing off exponentially up to `max_delay`."""
        delay = first_delay
        while not await asyncio.to_thread(self.check):
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)

    def _note(self, up: bool, exc: BaseException | None = None) -> None:
        if self._state_known and up == self.available:
            return
        if up and self._state_known:
            logger.warning("database %s is available again", mask_url(self.url))
        elif up:
            logger.info("database %s is available", mask_url(self.url))
        else:
            reason = _first_line(exc) if exc else "no answer"
            logger.warning("database %s is unavailable (%s); retrying", mask_url(self.url), reason)
        self.available = up
        self._state_known = True

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # -- the spec's rows -----------------------------------------------------------------

    def sync_spec(self, spec: Spec) -> None:
        """Replace the project's characters, scenes and shots with the spec's.

        A spec read from the database (bridge.spec.rows) is not written back: its rows
        are the source, and rewriting them would adopt the old system's project-less rows.
        """
        if rows.from_database(spec):
            return
        pid = spec.project.id
        with self.session() as s:
            project = s.get(Project, pid) or Project(id=pid)
            project.title = spec.project.title
            project.description = spec.project.description
            project.style = spec.project.style
            project.negative = spec.project.negative
            project.spec_file = spec.file
            project.revision = spec.revision
            project.options = rows.project_options(spec) or None
            project.spec_folder = str(spec.folder)
            project.updated_at = utcnow()
            s.add(project)
            s.flush()
            for model in (Shot, Scene, Character):
                for row in s.exec(select(model).where(model.project_id == pid)):
                    s.delete(row)
            s.flush()
            for c in spec.characters.values():
                s.add(
                    Character(
                        project_id=pid,
                        id=c.id,
                        name=c.name,
                        description=c.description,
                        design_prompt=c.design_prompt,
                        traits=dict(c.traits),
                        trigger_words=list(c.trigger_words) or None,
                        reference_image=c.reference_image,
                        lora_file=c.lora.file if c.lora else None,
                        lora_strength=c.lora.strength if c.lora else None,
                    )
                )
            for scene in spec.scenes:
                s.add(
                    Scene(
                        project_id=pid,
                        id=scene.id,
                        position=scene.position,
                        title=scene.title,
                        description=scene.description,
                        visual_description=scene.visual_description,
                        characters=",".join(scene.characters),
                        character_lora_mapping=rows.lora_mapping(spec, scene),
                        frame_count=scene.frame_count,
                        fps=scene.fps,
                        shot_list=rows.shot_list(scene),
                    )
                )
                for shot in scene.shots:
                    s.add(
                        Shot(
                            project_id=pid,
                            scene_id=scene.id,
                            id=shot.id,
                            position=shot.position,
                            action=shot.action,
                            camera=shot.camera,
                            frames=shot.frames,
                            seed=shot.seed,
                            preset=shot.preset,
                            template=shot.template,
                            continue_from="/".join(shot.continue_from)
                            if shot.continue_from
                            else None,
                        )
                    )
            s.commit()

    # -- runs and jobs -------------------------------------------------------------------

    def create_run(
        self,
        spec: Spec,
        backend: str,
        *,
        preview: bool,
        settings: Mapping[str, Any],
        jobs: Iterable[Job] = (),
        reasons: Mapping[str, str] | None = None,
        cached: Collection[str] = (),
        priority: int = 0,
    ) -> int:
        """A new run with one row per job and why each runs (`cached` ones born finished),
        in one transaction: no reader sees the run without its jobs (a worker would end it
        as having none). Earlier runs of the project left 'running' by a dead process are
        marked interrupted, so status never shows a ghost."""
        with self.session() as s:
            for old in s.exec(
                select(Run).where(
                    Run.project_id == spec.project.id, Run.status == RunState.RUNNING.value
                )
            ):
                if old.backend == WORKERS_BACKEND:  # rendered by workers, not a process
                    continue
                if old.pid is None or not _alive(old.pid):
                    old.status = RunState.INTERRUPTED.value
                    old.finished_at = old.finished_at or utcnow()
                    s.add(old)
            run = Run(
                project_id=spec.project.id,
                spec_file=spec.file,
                revision=spec.revision,
                backend=backend,
                preview=preview,
                pid=os.getpid(),
                settings=dict(settings),
                priority=priority,
            )
            s.add(run)
            s.flush()
            assert run.id is not None
            run_id, now, why = run.id, utcnow(), reasons or {}
            rows = [
                {
                    "run_id": run_id,
                    "job_id": j.id,
                    "kind": j.kind.value,
                    "scene_id": j.scene,
                    "shot_id": j.shot,
                    "hash": j.hash,
                    "reason": why.get(j.id, "new"),
                    "state": (JobState.CACHED if j.id in cached else JobState.PENDING).value,
                    "finished_at": now if j.id in cached else None,
                }
                for j in jobs
            ]
            if rows:  # one multi-row statement, not an ORM object per job (10x faster)
                s.execute(insert(JobRecord), rows)
            s.commit()
            return run_id

    def _update(self, run_id: int, job_id: str, **values: Any) -> None:
        """One UPDATE of the job's row, without reading it first."""
        with self.session() as s:
            done: Any = s.execute(
                update(JobRecord)
                .where(col(JobRecord.run_id) == run_id, col(JobRecord.job_id) == job_id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if done.rowcount != 1:
                raise LookupError(f"job {job_id} of run {run_id} is not in the job store")
            s.commit()

    def mark_submitting(
        self, run_id: int, job_id: str, prompt_id: str, server: str, attempt: int
    ) -> None:
        """Committed before POST /prompt: a crash after this line can be re-attached."""
        self._update(
            run_id,
            job_id,
            state=JobState.SUBMITTED.value,
            prompt_id=prompt_id,
            server=server,
            attempts=attempt,
            submitted_at=utcnow(),
        )

    def mark_running(self, run_id: int, job_id: str, attempt: int) -> None:
        self._update(
            run_id, job_id, state=JobState.RUNNING.value, attempts=attempt, started_at=utcnow()
        )

    def mark_done(
        self,
        run_id: int,
        job_id: str,
        state: JobState,
        *,
        seconds: float | None = None,
        error: str | None = None,
        error_kind: str | None = None,
        quality: Mapping[str, Any] | None = None,
    ) -> None:
        values: dict[str, Any] = {"state": state.value, "finished_at": utcnow(), "error": error}
        if seconds is not None:
            values["seconds"] = seconds
        if error_kind is not None:
            values["error_kind"] = error_kind
        if quality is not None:
            values["quality"] = dict(quality)
        self._update(run_id, job_id, **values)

    def end_pending(self, run_id: int, state: JobState) -> None:
        """The run's jobs that never started end in `state` (a cancelled run's queue)."""
        self._end(run_id, (JobState.PENDING,), state)

    def detach_unfinished(self, run_id: int) -> None:
        """Every unfinished job of a run the daemon stopped becomes `detached`; a posted
        prompt keeps its id, so the next start re-attaches to it."""
        self._end(run_id, tuple(UNFINISHED), JobState.DETACHED)

    def _end(self, run_id: int, states: tuple[JobState, ...], state: JobState) -> None:
        with self.session() as s:
            rows = s.exec(
                select(JobRecord).where(
                    JobRecord.run_id == run_id,
                    col(JobRecord.state).in_([st.value for st in states]),
                )
            )
            now = utcnow()
            for row in rows:
                row.state = state.value
                row.finished_at = now
                s.add(row)
            s.commit()

    def finish_run(
        self, run_id: int, status: RunState, counts: Mapping[str, int], manifest: str | None
    ) -> None:
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise LookupError(f"run {run_id} is not in the job store")
            run.status = status.value
            run.counts = dict(counts)
            run.manifest = manifest
            run.finished_at = utcnow()
            s.add(run)
            s.commit()

    def resumable(self, project_id: str, hashes: Iterable[str]) -> dict[str, Resumable]:
        """Prompts posted by runs of this project that never finished, newest per hash.
        Looked up by hash (the jobs table keeps every run's rows: a worker asks this for
        each job it starts)."""
        out: dict[str, Resumable] = {}
        with self.session() as s:
            for chunk in _in_chunks(hashes):
                out.update(resumable_in(s.connection(), project_id, chunk))
        return out

    def take_over(self, run_id: int, job_hash: str) -> None:
        """This run now owns the prompt earlier runs left behind for `job_hash`; their rows
        stop being resumable, so no later run re-attaches to it again."""
        with self.session() as s:
            rows = s.exec(
                select(JobRecord).where(
                    JobRecord.hash == job_hash,
                    JobRecord.run_id != run_id,
                    col(JobRecord.state).in_([state.value for state in RESUMABLE]),
                )
            )
            for row in rows:
                row.state = JobState.INTERRUPTED.value
                row.error = f"re-attached by run {run_id}"
                s.add(row)
            s.commit()

    # -- assets --------------------------------------------------------------------------

    def succeeded(
        self, run_id: int, spec: Spec, job: Job, *, seconds: float, asset: Asset | None
    ) -> None:
        """The job's success, its main output's asset and the event, in one transaction: an
        asset is never recorded apart from the success it belongs to, and a job costs one
        commit here, not three. A job recorded as succeeded already is left as it is, so a
        write retried after a commit whose answer was lost adds nothing twice."""
        with self.session() as s:
            done: Any = s.execute(
                update(JobRecord)
                .where(
                    col(JobRecord.run_id) == run_id,
                    col(JobRecord.job_id) == job.id,
                    col(JobRecord.state) != JobState.SUCCEEDED.value,
                )
                .values(
                    state=JobState.SUCCEEDED.value,
                    finished_at=utcnow(),
                    error=None,
                    seconds=seconds,
                )
                .execution_options(synchronize_session=False)
            )
            if done.rowcount != 1:
                if self._state(s, run_id, job.id) is None:
                    raise LookupError(f"job {job.id} of run {run_id} is not in the job store")
                return
            if asset is not None:
                row = GeneratedAsset(
                    project_id=spec.project.id,
                    run_id=run_id,
                    job_id=job.id,
                    job_hash=job.hash,
                    kind=job.kind.value,
                    scene_id=job.scene,
                    shot_id=job.shot,
                    path=asset.path,
                    sha256=asset.sha256,
                    bytes=asset.bytes,
                    probe=dict(asset.probe) if asset.probe else None,
                    quality=dict(asset.quality) if asset.quality else None,
                )
                s.add(row)
                s.flush()
                assert row.id is not None
                s.add(
                    SsotTracking(
                        asset_id=row.id,
                        project_id=spec.project.id,
                        spec_file=spec.file,
                        spec_revision=spec.revision,
                        job_hash=job.hash,
                        run_id=run_id,
                    )
                )
            data = {"seconds": round(seconds, 3)}
            s.add(EventRecord(run_id=run_id, job_id=job.id, kind="job_succeeded", data=data))
            s.commit()

    @staticmethod
    def _state(s: Session, run_id: int, job_id: str) -> str | None:
        return s.exec(
            select(JobRecord.state).where(JobRecord.run_id == run_id, JobRecord.job_id == job_id)
        ).first()

    def find_assets(self, project_id: str, hashes: Iterable[str]) -> dict[str, GeneratedAsset]:
        """The newest asset for each job hash, if any: a job rendered again (its output
        was missing) holds the newest bytes at its path; an older row's checksum would call
        it missing on every run after."""
        out: dict[str, GeneratedAsset] = {}
        with self.session() as s:
            for chunk in _in_chunks(hashes):
                rows = s.exec(
                    select(GeneratedAsset)
                    .where(
                        GeneratedAsset.project_id == project_id,
                        col(GeneratedAsset.job_hash).in_(chunk),
                    )
                    .order_by(col(GeneratedAsset.id).desc())
                )
                for row in rows:
                    out.setdefault(row.job_hash, row)
        return out

    def latest_by_job(self, project_id: str) -> dict[str, GeneratedAsset]:
        """The newest asset of every job id this project ever rendered."""
        out: dict[str, GeneratedAsset] = {}
        with self.session() as s:
            rows = s.exec(
                select(GeneratedAsset)
                .where(GeneratedAsset.project_id == project_id)
                .order_by(col(GeneratedAsset.id))
            )
            for row in rows:
                out[row.job_id] = row
        return out

    # -- the event log -------------------------------------------------------------------

    def log(
        self,
        run_id: int | None,
        kind: str,
        job_id: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """One entry of the run's event log; `data` is stored as given (JSON)."""
        with self.session() as s:
            s.add(
                EventRecord(run_id=run_id, job_id=job_id, kind=kind, data=dict(data or {}) or None)
            )
            s.commit()

    # -- reading -------------------------------------------------------------------------

    def warm(self) -> None:
        """Build the ORM's mappers and compile the reads a worker makes as it sets up a
        job (its run, its resumable prompt, its dependencies' rows and assets) on rows that
        do not exist, before the first run: else every worker builds them at a run's start,
        at once (traced: the run row's first read took 28 ms on an idle host, and each of
        three workers spent about 50 ms of CPU on it as a run started)."""
        with self.engine.connect() as conn:
            resumable_in(conn, "", [""])
        self.run(0)
        self.job_rows(0, [""])
        self.find_assets("", [""])

    def run(self, run_id: int) -> Run | None:
        with self.session() as s:
            return s.get(Run, run_id)

    def runs(
        self, limit: int = 20, project_id: str | None = None, status: RunState | None = None
    ) -> list[Run]:
        """The newest runs first, of one project or status if given."""
        with self.session() as s:
            query = select(Run).order_by(col(Run.id).desc()).limit(limit)
            if project_id:
                query = query.where(Run.project_id == project_id)
            if status is not None:
                query = query.where(Run.status == status.value)
            return list(s.exec(query))

    def project(self, project_id: str) -> Project | None:
        with self.session() as s:
            return s.get(Project, project_id)

    def scene(self, scene_id: str) -> Scene | None:
        """The scene with this id in any project (the seed API names scenes alone)."""
        with self.session() as s:
            return s.exec(select(Scene).where(Scene.id == scene_id)).first()

    def job_totals(self) -> tuple[dict[str, int], float]:
        """Jobs by state, and the wall seconds of the finished ones. Unfinished states
        count only in runs still under way: a run that died leaves no ghost work."""
        unfinished = [state.value for state in UNFINISHED]
        with self.session() as s:
            rows = s.exec(
                select(JobRecord.state, func.count())
                .join(Run, col(Run.id) == JobRecord.run_id)
                .where(
                    or_(
                        col(JobRecord.state).not_in(unfinished),
                        col(Run.status) == RunState.RUNNING.value,
                    )
                )
                .group_by(JobRecord.state)
            )
            by_state = dict(rows.all())
            seconds = s.exec(select(func.sum(JobRecord.seconds))).one()
        return by_state, float(seconds or 0.0)

    def jobs(self, run_id: int, state: str | None = None) -> list[JobRecord]:
        with self.session() as s:
            query = select(JobRecord).where(JobRecord.run_id == run_id)
            if state:
                query = query.where(JobRecord.state == state)
            return list(s.exec(query.order_by(col(JobRecord.id))))

    def job_rows(self, run_id: int, job_ids: Iterable[str]) -> dict[str, JobRecord]:
        """Some of a run's job rows, by job id: a worker reads a job's dependencies' rows
        as it starts it (reading the run's every row made each start cost the run's size)."""
        out: dict[str, JobRecord] = {}
        with self.session() as s:
            for chunk in _in_chunks(job_ids):
                rows = s.exec(
                    select(JobRecord).where(
                        JobRecord.run_id == run_id,
                        col(JobRecord.job_id).in_(chunk),
                    )
                )
                out.update((row.job_id, row) for row in rows)
        return out

    def events(self, run_id: int) -> list[EventRecord]:
        with self.session() as s:
            query = select(EventRecord).where(EventRecord.run_id == run_id)
            return list(s.exec(query.order_by(col(EventRecord.id))))

    def count_jobs(self, run_id: int) -> dict[str, int]:
        with self.session() as s:
            rows = s.exec(
                select(JobRecord.state, func.count())
                .where(JobRecord.run_id == run_id)
                .group_by(JobRecord.state)
            )
            return dict(rows.all())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
