"""`bridge worker`: one of many processes, on many hosts, that render the jobs of every run
submitted to the shared PostgreSQL.

The queue (bridge.queue, procrastinate) hands this process one ready job at a time, up to
`jobs_in_hand` at once. Each is run by the same Scheduler and Executor as `bridge run` — on
a one-job plan whose dependencies are given as already finished, their outputs read from
the asset rows — so quality retries, transient retries, timeouts, resume and records are
exactly those of a single-process run. What is particular to workers is here: the job row
is claimed first (a dead worker's row is taken over, a live one's left alone), a server is
chosen among those with the job's models by how much of the job it already has cached, a
global slot on it is held for the prompt's life, and when the job ends the jobs it unblocked
are queued and a run whose jobs all ended is finished (manifest, run row, webhook).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import networkx as nx
import procrastinate
import psycopg
from procrastinate.exceptions import ConnectorException
from procrastinate.worker import Worker as QueueWorker
from sqlalchemy.exc import SQLAlchemyError

from bridge import affinity, farm_runs, preflight, queue, slots
from bridge.backends.base import Backend
from bridge.backends.pool import ServerPool
from bridge.db import farm
from bridge.db.store import Resumable, Store
from bridge.errors import (
    BridgeError,
    ConfigError,
    PreflightError,
    SpecErrors,
    SpecUnreadable,
    TransientBackendError,
)
from bridge.events import Event, JobStarted
from bridge.execute import Executor
from bridge.plan import Job
from bridge.record import Recorder
from bridge.runner import Runner
from bridge.scheduler import Policy, Scheduler
from bridge.settings import Settings
from bridge.states import JobState
from bridge.webhooks import Notifier, hooks_from_spec

log = logging.getLogger(__name__)
T = TypeVar("T")

THREADS = 12
SETUP_AT_ONCE = 2  # jobs of one worker being set up at once (_Setup)
LISTEN_CHECK = 30.0  # seconds without a notification before the listener checks its line
_DATABASE = (OSError, SQLAlchemyError, psycopg.Error, ConnectorException)


def check_output_path(root: Path) -> None:
    """Workers share OUTPUT_PATH (an NFS mount, say): fail at start, not at the first job."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".bridge-worker-", delete=True) as fh:
            fh.write(b"ok")
            fh.flush()
    except OSError as exc:
        raise ConfigError(
            f"OUTPUT_PATH {root} is not writable from this worker ({exc.strerror}); every "
            "worker needs the same shared, writable OUTPUT_PATH"
        ) from None


@dataclass
class _Ran:
    """What a worker knows of a server: its object_info, for per-job preflight."""

    backend: Backend
    object_info: Mapping[str, Any]


class _Setup:
    """The jobs of this process being set up (claimed, read, recorded as started) until
    each asks for a slot, a few at a time in the order the queue handed them out. A
    worker takes `jobs_in_hand` jobs at once at a run's start: set up all together, they
    share the CPU (on one host, with the other workers' and PostgreSQL's) and the first
    of them, which the servers wait for, reach a server no sooner than the last."""

    def __init__(self, at_once: int) -> None:
        self._gate = asyncio.Semaphore(at_once)
        self._jobs: set[tuple[int, str]] = set()

    async def begin(self, key: tuple[int, str]) -> None:
        await self._gate.acquire()
        self._jobs.add(key)

    def end(self, key: tuple[int, str]) -> None:
        """Idempotent: a job ends its setup at its slot request, or when it ends."""
        if key in self._jobs:
            self._jobs.discard(key)
            self._gate.release()


class Worker:
    def __init__(self, settings: Settings, *, environ: Mapping[str, str], name: str = "") -> None:
        self.settings = settings
        self.environ = dict(environ)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.store = Store(settings.database, connect=False)  # a worker may start first
        self.engine = self.store.engine
        # the queue's pool: LISTEN, the heartbeat, and fetches and status updates (brief)
        self.app = queue.app_for(settings.database, connections=min(settings.jobs_in_hand, 8) + 3)
        self.webhooks = Notifier()
        self.runs = farm_runs.Runs(self.store, settings.output_path, self.environ, self.webhooks)
        self.servers: dict[str, _Ran] = {}
        self.pool: ServerPool | None = None
        self.queue_worker: QueueWorker | None = None
        self._eligible: dict[str, tuple[str, ...]] = {}
        # jobs this process is running now, and when each ends
        self._in_hand: dict[tuple[int, str], asyncio.Event] = {}
        self.slots: slots.Slots | None = None
        self.listening = False  # LISTENing for freed slots (farm.SLOTS_FREED)
        self._preparing: set[asyncio.Future[None]] = set()  # compiles ahead (_prepare*)
        self.setup = _Setup(SETUP_AT_ONCE)

    async def run(self) -> None:
        """Serve jobs until cancelled (SIGTERM/SIGINT stop it after the jobs in hand)."""
        check_output_path(self.settings.output_path)
        queue_log = logging.getLogger("procrastinate.worker")
        if _QUIET_HELD not in queue_log.filters:
            queue_log.addFilter(_QUIET_HELD)
        # Jobs wait on threads (probes, records, slot claims): more than the default cores + 4,
        # fewer than the database pool's 15 connections, so a write made on the loop itself
        # never waits for a connection the threads hold (the heartbeat would stall with it).
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(THREADS, "bridge-worker")
        )
        if not await asyncio.to_thread(self.store.check):
            log.warning("waiting for the database before taking jobs")
            await self.store.wait_available()
        await asyncio.to_thread(self.runs.warm)
        await asyncio.to_thread(self.store.warm)
        runner = Runner(self.settings, store=self.store, notify=log.warning, detach=True)
        self.pool = await runner.backend()
        for backend in self.pool.backends:  # one down at start is preflighted by its server
            up = backend.healthy and not runner.preview
            self.servers[backend.name] = _Ran(backend, await backend.object_info() if up else {})
        await asyncio.to_thread(
            farm.ensure_slots, self.engine, {b.name: b.slots for b in self.pool.backends}
        )
        self.slots = slots.Slots(_SlotRows(self), use_affinity=self.settings.affinity)
        retry = Retry(self.settings.lease_seconds)
        self.app.task(name=queue.TASK, pass_context=True, retry=retry)(self._task)
        try:
            while True:
                try:
                    await self._serve_queue()
                except _DATABASE as exc:
                    log.warning("lost the database (%s); not taking jobs until it is back", exc)
                else:
                    log.warning("the queue worker stopped; starting it again")
                await self.store.wait_available()
                log.warning("database available: taking jobs again")
        finally:
            await self.webhooks.drain(self.settings.webhook_drain)
            await runner.close()

    async def _serve_queue(self) -> None:
        """One life of the queue worker: it ends when the database goes (its heartbeat or
        fetch fails); the jobs it held are taken over after the lease, by whoever is up."""
        s = self.settings
        async with self.app.open_async():
            await queue.ensure_schema(self.app, self.engine)
            self.queue_worker = QueueWorker(
                app=self.app,
                name=self.name,
                concurrency=s.jobs_in_hand,
                install_signal_handlers=False,
                update_heartbeat_interval=max(0.2, s.lease_seconds / 4),
                stalled_worker_timeout=s.lease_seconds,
                fetch_job_polling_interval=max(0.2, min(5.0, s.lease_seconds / 2)),
                delete_jobs="successful",
            )
            serving = asyncio.current_task()
            assert serving is not None
            helpers = [
                asyncio.create_task(self._sweep(serving), name="bridge sweeper"),
                asyncio.create_task(self._listen(), name="bridge listener"),
            ]
            try:
                await self.queue_worker.run()  # type: ignore[no-untyped-call]
            finally:
                for helper in helpers:
                    helper.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await helper
                worker_id = self.queue_worker.worker_id
                if worker_id is not None:
                    with contextlib.suppress(SQLAlchemyError, OSError):
                        await asyncio.to_thread(farm.unregister_worker, self.engine, worker_id)

    async def _listen(self) -> None:
        """Wake the slot broker whenever any worker frees a slot (while this is not
        listening, the database away, the broker polls), and compile a spec as `bridge
        submit` says it is coming, then its run as it is announced: at a run's start its
        first jobs reach every worker at once, and each would wait for that compile (on
        one host, every worker's at once)."""
        assert self.slots is not None
        broker = self.slots
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    queue.conninfo(self.settings.database), autocommit=True
                ) as conn:
                    await conn.execute(
                        f"LISTEN {farm.SLOTS_FREED}; LISTEN {farm.RUN_SUBMITTED}; "
                        f"LISTEN {farm.SPEC_SUBMITTED}"
                    )
                    self.listening = True
                    broker.changed()  # what was freed before we listened
                    while True:
                        async for note in conn.notifies(timeout=LISTEN_CHECK):
                            if note.channel == farm.RUN_SUBMITTED:
                                self._prepare(note.payload)
                            elif note.channel == farm.SPEC_SUBMITTED:
                                self._prepare_spec(note.payload)
                            else:
                                broker.changed()
                        await conn.execute("SELECT 1")  # a connection gone quiet may be gone
            except _DATABASE as exc:
                log.debug("not listening for freed slots and submitted runs: %s", exc)
            finally:
                self.listening = False
            await asyncio.sleep(1.0)

    def _prepare(self, payload: str) -> None:
        """Compile a submitted run in the background (its jobs' tasks wait for it), ended
        as a job would end it if its spec cannot be read as submitted."""
        if payload.isdigit():
            task = asyncio.create_task(self._prepare_run(int(payload)), name=f"run {payload}")
            self._preparing.add(task)
            task.add_done_callback(self._preparing.discard)

    async def _prepare_run(self, run_id: int) -> None:
        """A spec unreadable for now, or the database away: the run's jobs ask again."""
        with contextlib.suppress(SpecUnreadable, *_DATABASE):
            await self._context(run_id)

    def _prepare_spec(self, payload: str) -> None:
        """Compile a spec about to be submitted (bridge.farm_runs.Runs.expect: expected
        here, on the loop, before the run's announcement can be handled); a payload that
        does not say which spec is ignored, as the hint it is."""
        try:
            note = json.loads(payload)
            key, path, folder = str(note["key"]), Path(note["path"]), Path(note["folder"])
        except (ValueError, TypeError, KeyError):
            return
        # queued on the threads now, ahead of any job of the run that will wait for it
        compiling = asyncio.get_running_loop().run_in_executor(
            None, self.runs.expect(key, path, folder)
        )
        self._preparing.add(compiling)
        compiling.add_done_callback(self._preparing.discard)

    async def _sweep(self, serving: asyncio.Task[Any]) -> None:
        """Register this process, then hand stalled workers' jobs back, age the queue, and
        queue what the tables say is ready but the queue lost. `serving`: the task a
        SIGTERM cancels, whose queue worker then finishes its jobs and unregisters."""
        s = self.settings
        while self.queue_worker is None or self.queue_worker.worker_id is None:
            await asyncio.sleep(0.05)
        worker_id = self.queue_worker.worker_id
        host, pid = socket.gethostname(), os.getpid()
        await asyncio.to_thread(farm.register_worker, self.engine, worker_id, self.name, host, pid)
        log.info("worker %s (queue id %d) serving", self.name, worker_id)
        while True:
            await asyncio.sleep(max(0.2, s.lease_seconds / 3))
            try:
                # the queue's own heartbeat stops when a SIGTERM starts its shutdown, but
                # the jobs in hand are still being finished: keep the lease on them
                await self.app.job_manager.update_heartbeat(worker_id)
                alive = await asyncio.to_thread(farm.worker_alive, self.engine, worker_id)
                if not alive and serving.cancelling():
                    return  # stopping: the queue worker unregistered itself
                if not alive:
                    # Our heartbeat came too late and the queue pruned us: our jobs are
                    # being handed on. Start over under a new id rather than run as a ghost.
                    log.warning("worker %s missed its lease; re-registering", self.name)
                    self.queue_worker.stop()  # type: ignore[no-untyped-call]
                    return
                for args in await queue.requeue_stalled(self.app, s.lease_seconds):
                    log.warning(
                        "took over job %s of run %s", args.get("job_id"), args.get("run_id")
                    )
                    await asyncio.to_thread(
                        self.store.log,
                        args.get("run_id"),
                        "lease_taken_over",
                        args.get("job_id"),
                        {"by": self.name},
                    )
                await asyncio.to_thread(farm.prune_workers, self.engine)
                await queue.age(self.engine, s.aging_seconds)
                for run_id in await asyncio.to_thread(farm.running_runs, self.engine):
                    await self._advance(run_id)
            except Exception as exc:  # the database is away: the queue worker notices too
                log.warning("sweep failed: %s", exc)

    # -- one job ---------------------------------------------------------------------------

    async def _task(
        self, context: procrastinate.JobContext, /, run_id: int, job_id: str, **_: Any
    ) -> None:
        worker_id = context.job.worker_id
        assert worker_id is not None, "the queue gives every fetched job its worker"
        key = (run_id, job_id)
        running = self._in_hand.get(key)
        if running is not None:  # a second copy (a late heartbeat, a racing queueing) while
            await running.wait()  # this process runs it: hold it until that run ends
            await self._advance(run_id)
            return
        ended = self._in_hand[key] = asyncio.Event()  # set before any await: no race here
        try:
            await self.setup.begin(key)
            ctx = await self._context(run_id)  # None: the run ended, its spec unreadable
            if ctx is not None:
                job = ctx.plan.job(job_id)
                lease = self.settings.lease_seconds
                claim = await asyncio.to_thread(
                    farm.claim_job,
                    *(self.engine, run_id, job_id, worker_id, lease, self.name),
                    project=ctx.plan.project,
                    job_hash=job.hash,
                )
                if claim is None:
                    raise Held(f"{job_id} of run {run_id} is held by a live worker")
                if not claim.state.finished:
                    priority = context.job.priority or 0
                    lane = context.job.task_kwargs.get("lane")  # its server stream, if any
                    lane = lane if isinstance(lane, int) else None
                    resumable = {job.hash: claim.resumable} if claim.resumable else {}
                    await self._run_one(ctx, job, worker_id, priority, lane, resumable)
        finally:
            self.setup.end(key)
            del self._in_hand[key]
            ended.set()
        await self._advance(run_id)

    async def _run_one(
        self,
        ctx: farm_runs.RunContext,
        job: Job,
        worker_id: int,
        priority: int,
        lane: int | None,
        resumable: dict[str, Resumable],
    ) -> None:
        plan, store = ctx.plan, self.store
        deps = tuple(plan.graph.predecessors(job.id))
        sub = replace(
            plan,
            graph=plan.graph.subgraph((*deps, job.id)).copy(),
            order=tuple(j for j in plan.order if j in {*deps, job.id}),
        )
        recorder = ClaimedRecorder(
            store,
            ctx.spec,
            plan,
            root=self.settings.output_path,
            hooks=hooks_from_spec(ctx.spec.webhooks, self.environ),
            webhooks=self.webhooks,
            detach=True,
        )
        recorder.run_id, recorder.worker_id = ctx.run_id, worker_id
        results = await asyncio.to_thread(self.runs.results, ctx, deps)
        executor = Executor(
            sub,
            JobLeases(self, ctx.run_id, job, worker_id, priority, lane),
            recorder,
            root=self.settings.output_path,
            quality_threshold=self.settings.quality_threshold,
            resumable=resumable,
            detach=True,
            notify=log.warning,
        )
        executor.results.update(results)
        if not job.kind.remote:  # no slot to ask for: its setup ends here
            self.setup.end((ctx.run_id, job.id))
        scheduler = Scheduler(
            sub,
            executor,
            policy=Policy(max_remote=1, max_local=1, timeout=self.settings.workflow_timeout),
            record=recorder,
        )
        states = await scheduler.run(dict(results))
        if recorder.lost:
            log.warning("%s of run %d was taken over by another worker", job.id, ctx.run_id)
        elif states.get(job.id) is JobState.FAILED:
            await asyncio.to_thread(self._skip_downstream, ctx, job.id)

    def _skip_downstream(self, ctx: farm_runs.RunContext, failed: str) -> None:
        for job_id in nx.descendants(ctx.plan.graph, failed):
            farm.skip_pending(self.engine, ctx.run_id, job_id, f"skipped: {failed} failed")

    async def _context(self, run_id: int) -> farm_runs.RunContext | None:
        """The run as submitted; None once it is failed because its spec cannot be read
        as it was (moved, edited): a defined end instead of a run that never ends. A spec
        unreadable for now raises SpecUnreadable: the job's task is tried again later."""
        try:
            return await asyncio.to_thread(self.runs.get, run_id)
        except SpecUnreadable as exc:
            log.warning("%s; trying again", exc.message)
            raise
        except BridgeError as exc:
            reason = f"{exc.message}:\n{exc}" if isinstance(exc, SpecErrors) else exc.message
            log.error("run %d: %s", run_id, reason)
            await asyncio.to_thread(self.runs.fail, run_id, reason)
            return None

    async def _advance(self, run_id: int) -> None:
        """Queue what is ready (what a job unblocked, or a job whose queue entry was lost);
        finish the run when nothing is left."""
        ctx = await self._context(run_id)
        if ctx is None:
            return
        s = self.settings
        await queue.defer_ready(
            self.app,
            self.engine,
            run_id,
            ctx.plan,
            ctx.priority,
            group=s.affinity,
            lanes=len(self.servers),
            lease=s.lease_seconds,
        )
        await asyncio.to_thread(self.runs.finish_if_done, ctx)

    # -- servers ---------------------------------------------------------------------------

    def eligible(self, job: Job) -> tuple[str, ...]:
        """The servers that have every node, model and LoRA the job's workflow names."""
        if job.hash not in self._eligible:
            ok = tuple(
                name
                for name, ran in self.servers.items()
                if not ran.object_info or not preflight.problems([job], ran.object_info)
            )
            if not ok:
                found = [
                    f"{name}: {p}"
                    for name, ran in self.servers.items()
                    for p in preflight.problems([job], ran.object_info)
                ]
                raise PreflightError(found)
            self._eligible[job.hash] = ok
        return self._eligible[job.hash]


class Held(Exception):
    """Another live worker holds the job (its own try may yet fail): look again later."""


class QuietHeld(logging.Filter):
    """A held job's retry is routine: the queue's one line, without a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, Held):
            record.msg, record.exc_info, record.exc_text = f"{record.msg} ({exc})", None, None
        return True


_QUIET_HELD = QuietHeld()


class Retry(procrastinate.BaseRetryStrategy):
    """When the queue runs a job's task again. Its entry is the only thing that brings the
    job back, so a job is never given up for a database outage (the retry re-attaches to
    its prompt like a take-over), for being held (after a lease its holder has either
    finished it, or died and can be taken over), nor for a spec unreadable for now."""

    def __init__(self, lease: float) -> None:
        self.lease = lease

    def get_retry_decision(
        self, *, exception: BaseException, job: procrastinate.jobs.Job
    ) -> procrastinate.RetryDecision | None:
        if isinstance(exception, (Held, SpecUnreadable)):
            return procrastinate.RetryDecision(retry_in={"milliseconds": int(self.lease * 1000)})
        if isinstance(exception, _DATABASE):
            return procrastinate.RetryDecision(retry_in={"seconds": min(10, 1 + job.attempts)})
        return None


class ClaimLost(Exception):
    """Another worker took the job over while this one was late with its heartbeat."""


class ClaimedRecorder(Recorder):
    """A job's records while this worker holds it: the prompt is committed (and so posted)
    only if the claim still stands; once lost, nothing more is written for the job. A
    remote job's row is started by that commit, not when its attempt begins: a worker
    holds twice the slots it may get, and its jobs waiting for one are not running (nor
    worth a transaction each, at a run's start, when every worker sets up its jobs at once).

    A worker outlives database outages, so a write that fails for want of the database is
    not the job's failure: an event's record waits for the database and is written then
    (a success with its output's asset too: the output is on disk, its facts in hand); a
    failed commit before the POST is a transient error, retried (nothing was posted).
    """

    worker_id = 0
    lost = False
    _loop: asyncio.AbstractEventLoop

    async def submitting(self, job: Job, prompt_id: str, server: str, attempt: int) -> None:
        """On a thread: a PostgreSQL round trip on the loop holds up every job of the
        worker (a cancelled wait may still commit: a prompt_id recorded and never posted
        is what a killed worker leaves too, and its next attempt asks the server first)."""
        try:
            mine = await asyncio.to_thread(
                farm.mark_submitting,
                self.store.engine,
                self.run_id,
                job.id,
                self.worker_id,
                prompt_id=prompt_id,
                server=server,
                attempt=attempt,
            )
        except SQLAlchemyError as exc:
            raise TransientBackendError(f"database unavailable: {_first_line(exc)}") from None
        if not mine:
            self.lost = True
            raise ClaimLost(job.id)

    async def __call__(self, event: Event) -> None:
        """Written on a thread: the loop serves every job of the worker meanwhile."""
        self._loop = asyncio.get_running_loop()
        if isinstance(event, JobStarted) and self.plan.job(event.job_id).kind.remote:
            return  # its submission starts it (submitting): waiting for a slot is not running
        while not self.lost:
            try:
                if isinstance(event, JobStarted):
                    await asyncio.to_thread(self._start, event)
                else:
                    await asyncio.to_thread(self._write, event)
            except SQLAlchemyError as exc:
                log.warning("recording %s waits for the database: %s", event, _first_line(exc))
                await self.store.wait_available()
            else:
                return

    def _write(self, event: Event) -> None:
        with self._writing():
            self._record(event)

    def _notify(self, event: str, payload: dict[str, Any]) -> None:
        """Webhooks are sent from the loop (the records are written on a thread)."""
        self._loop.call_soon_threadsafe(super()._notify, event, payload)

    def _start(self, event: JobStarted) -> None:
        """A local job's attempt starts only on a row still this worker's and unfinished."""
        engine, run_id = self.store.engine, self.run_id
        if not farm.mark_running(engine, run_id, event.job_id, self.worker_id, event.attempt):
            self.lost = True


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class JobLeases:
    """The Executor's pool for one job: a backend whose global slot this worker holds."""

    def __init__(
        self,
        worker: Worker,
        run_id: int,
        job: Job,
        worker_id: int,
        priority: int,
        lane: int | None = None,
    ) -> None:
        self.worker = worker
        self.run_id = run_id
        self.job = job
        self.worker_id = worker_id
        self.priority = priority  # the queue's: this process's waiters ask in its order
        self.lane = lane  # the server stream it was queued in (bridge.queue.streams)

    def rendered(self) -> None:
        """The slot is held until the outputs are downloaded: nothing to do earlier."""

    @contextlib.asynccontextmanager
    async def lease(self, prefer: str | None = None, priority: int = 0) -> AsyncIterator[Backend]:
        """A slot on the server the job's prompt already went to (`prefer`, a take-over),
        else as the process's slot broker decides (bridge.slots). The order among waiters
        is the queue's priority (with aging), not the run's `priority`."""
        w = self.worker
        assert w.pool is not None
        assert w.slots is not None
        signature = affinity.signature(self.job.workflow) if self.job.kind.remote else {}
        want = slots.Want(
            run_id=self.run_id,
            job_id=self.job.id,
            worker_id=self.worker_id,
            signature=signature,
            priority=self.priority,
            eligible=w.eligible(self.job),
            prefer=prefer,
            lane=self.lane,
            deadline=asyncio.get_running_loop().time() + w.pool.grace,
        )
        w.setup.end((self.run_id, self.job.id))
        slot = await w.slots.claim(want)
        try:
            yield w.servers[slot.server].backend
        finally:
            await asyncio.shield(w.slots.give_back(slot, self.worker_id))


async def _outliving(store: Store, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A farm table call that waits out a database outage instead of failing the job
    (a worker outlives outages; a slot left claimed would block its server)."""
    while True:
        try:
            return await asyncio.to_thread(call, *args, **kwargs)
        except SQLAlchemyError as exc:
            log.warning("slot bookkeeping waits for the database: %s", _first_line(exc))
            await store.wait_available()


class _SlotRows:
    """bridge.slots.Farm on the shared tables, for one worker process."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def states(self) -> dict[str, farm.ServerState]:
        w = self.worker
        return await asyncio.to_thread(farm.server_states, w.engine, w.settings.lease_seconds)

    async def waiting(self) -> list[farm.Waiting]:
        return await asyncio.to_thread(farm.waiting, self.worker.engine, queue.TASK, queue.LEVEL)

    async def claim(self, claims: Sequence[farm.SlotClaim]) -> list[farm.Slot | None]:
        w = self.worker
        return await asyncio.to_thread(
            farm.claim_slots,
            w.engine,
            claims,
            lease=w.settings.lease_seconds,
            guard=w.settings.affinity,
        )

    async def release(self, slot: farm.Slot, worker_id: int) -> bool:
        w = self.worker
        return await _outliving(w.store, farm.release_slot, w.engine, slot, worker_id)

    async def announce(self, servers: Sequence[str]) -> None:
        """A wake-up, not a record: one lost to an outage is made up by the brokers'
        backstop look at the slots."""
        try:
            await asyncio.to_thread(farm.announce_freed, self.worker.engine, servers)
        except SQLAlchemyError as exc:
            log.debug("could not announce freed slots on %s: %s", servers, _first_line(exc))

    async def outage(self) -> None:
        await self.worker.store.wait_available()

    def woken(self) -> bool:
        return self.worker.listening

    def healthy(self) -> list[str]:
        assert self.worker.pool is not None
        return [b.name for b in self.worker.pool.healthy()]

    def grace(self) -> float:
        assert self.worker.pool is not None
        return self.worker.pool.grace


async def serve(settings: Settings, environ: Mapping[str, str], name: str = "") -> None:
    worker = Worker(settings, environ=environ, name=name)
    try:
        await worker.run()
    finally:
        worker.store.close()


__all__ = ["JobLeases", "Worker", "check_output_path", "serve"]
