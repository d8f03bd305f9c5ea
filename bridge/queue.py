"""The shared ready queue: procrastinate on PostgreSQL.

procrastinate owns what a hand-written queue would get wrong: claiming a job exactly once
(FOR UPDATE SKIP LOCKED in its fetch function), waking idle workers at once (LISTEN/NOTIFY),
ordering by priority, and worker heartbeats with the stalled-job query that hands a dead
worker's jobs to another. bridge defers one queue job per bridge job when it becomes ready
(its dependencies finished, whichever worker finished them); bridge's own tables stay the
record of runs, jobs, prompt_ids and assets.

A queue job's priority is the run's priority level (×1000) plus a rank bonus that falls
with each job of the run already handed out, so runs of equal priority take turns instead
of the first one draining; waiting jobs age up a level every `aging` seconds, so a low run
is never starved.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import procrastinate
from procrastinate.exceptions import AlreadyEnqueued
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from bridge import affinity
from bridge.db import farm
from bridge.errors import UsageError
from bridge.plan import Job, Plan
from bridge.states import JobState

log = logging.getLogger(__name__)

TASK = "bridge.job"
LEVEL = 1000  # queue priority per priority level; ranks within a level use less
SCHEMA_LOCK = int.from_bytes(b"bridgeq\x01")
FIRST_POSTED_WAIT = 1.0  # seconds a run's other jobs wait for its first ones to be posted
FIRST_POSTED_POLL = 0.02


def conninfo(database_url: str) -> str:
    """libpq's form of DATABASE_URL, for psycopg; only PostgreSQL can share work."""
    if not database_url.startswith(("postgresql://", "postgresql+psycopg://")):
        raise UsageError(
            "workers share their jobs through PostgreSQL: set DATABASE_URL=postgresql://..."
        )
    return "postgresql://" + database_url.split("://", 1)[1]


def app_for(database_url: str, connections: int = 4) -> procrastinate.App:
    """The queue on bridge's PostgreSQL database; `connections` bounds its pool (a worker
    needs one for LISTEN, one for its heartbeat and about one per job it holds)."""
    connector = procrastinate.PsycopgConnector(
        conninfo=conninfo(database_url), min_size=1, max_size=max(4, connections)
    )
    return procrastinate.App(connector=connector)


async def ensure_schema(app: procrastinate.App, engine: Engine) -> None:
    """Install procrastinate's tables once, serialised across processes."""
    if farm.queue_exists(engine):
        return
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
        # a plain query, not to_regclass: that reads a catalog snapshot possibly older than
        # the lock, and misses the tables another worker committed while we waited
        if not conn.execute(text(farm.QUEUE_EXISTS)).scalar():
            # the raw cursor: the schema's own % signs are not placeholders
            conn.connection.cursor().execute(app.schema_manager.get_schema())


def queue_priority(level: int, rank: int) -> int:
    return level * LEVEL + max(0, LEVEL // 2 - 1 - rank)


def ordered(jobs: Sequence[Job], plan: Plan, *, group: bool, lanes: int = 1) -> list[Job]:
    """Ready jobs in the order they are handed out (see streams)."""
    return [job for _, job in streams(jobs, plan, group=group, lanes=lanes)]


def streams(
    jobs: Sequence[Job], plan: Plan, *, group: bool, lanes: int = 1
) -> list[tuple[int | None, Job]]:
    """Ready jobs in the order they are handed out: plan order, or (`group`) one stream per
    server (`lanes`) taken in turns, each stream a stretch of jobs sharing models; each job
    with its stream's number when there is a stream for every server.

    Families back to back would have every server load the first family, then every server
    switch to the next; cut into one stretch per server instead, the jobs in hand at any time
    are what each server needs next, so a server keeps its family until its stretch ends."""
    index = {j: i for i, j in enumerate(plan.order)}
    jobs = sorted(jobs, key=lambda j: index[j.id])
    if not group:
        return [(None, job) for job in jobs]
    first: dict[str, int] = {}
    keyed = []
    for job in jobs:
        fam = family(job)
        first.setdefault(fam, len(first))
        keyed.append((first[fam], index[job.id], job))
    grouped = [job for _, _, job in sorted(keyed, key=lambda k: (k[0], k[1]))]
    n, k = len(grouped), max(1, min(lanes, len(grouped)))
    stretches = [grouped[i * n // k : (i + 1) * n // k] for i in range(k)]
    longest = max(len(s) for s in stretches)
    numbered = k > 1 and k == lanes
    return [
        (i if numbered else None, s[r])
        for r in range(longest)
        for i, s in enumerate(stretches)
        if r < len(s)
    ]


def family(job: Job) -> str:
    """The job's model family; local jobs load nothing on a server."""
    return affinity.family(affinity.signature(job.workflow)) if job.kind.remote else ""


async def defer_ready(
    app: procrastinate.App,
    engine: Engine,
    run_id: int,
    plan: Plan,
    level: int,
    *,
    group: bool,
    lanes: int = 1,
    lease: float,
    settle: float = 0.0,
) -> int:
    """Queue every unfinished job of the run whose dependencies all finished well, that is
    not queued and that no live worker holds; returns how many were queued. The tables are
    the record and the queue follows them: a job whose queue entry was lost (its holder
    died after the queue let go of it) is queued again here, and a take-over re-attaches
    to its prompt. Safe to call from several workers at once: a queueing lock refuses a
    second copy while one waits, and the claim refuses one a live worker holds.

    The jobs the servers run first (two per server) go in a batch of their own; with
    `settle`, the rest wait up to that many seconds while the workers post those.
    Inserted at once, the rest (a 600-job run's: 50 ms of PostgreSQL's time, and a
    notification per entry to every worker) took the database and the CPU from the first
    jobs' claims (traced over 120-job runs on one host: the servers' first prompts came
    35-45 ms later on average, with one worker or three), and they are not wanted before
    a slot frees."""
    waiting, handed = await asyncio.to_thread(farm.undeferred, engine, run_id, TASK, lease)
    if not waiting:
        return 0
    needed = {d for j in waiting for d in plan.graph.predecessors(j)}
    states = await asyncio.to_thread(farm.states_of, engine, run_id, sorted(needed))
    done = {JobState.SUCCEEDED, JobState.CACHED}
    ready = [
        plan.job(j)
        for j in plan.order
        if j in waiting and all(states.get(d) in done for d in plan.graph.predecessors(j))
    ]
    now = time.time()
    handout = streams(ready, plan, group=group, lanes=lanes)
    entries = [
        app.configure_task(
            TASK, priority=queue_priority(level, rank), queueing_lock=f"{run_id}/{job.id}"
        ).make_new_job(run_id=run_id, job_id=job.id, family=family(job), lane=lane, aged_at=now)
        for rank, (lane, job) in enumerate(handout, start=handed)
    ]
    first = 2 * max(1, lanes)
    queued = await _defer(app, entries[:first])
    if settle > 0 and len(entries) > first:
        firsts = [job.id for _, job in handout[:first]]
        await _until_posted(engine, run_id, firsts, lease=lease, most=settle)
    return queued + await _defer(app, entries[first:])


async def _until_posted(
    engine: Engine, run_id: int, job_ids: list[str], *, lease: float, most: float
) -> None:
    """Until every one of `job_ids` is posted (or ended), or none can be posted now (no
    live worker, no free slot); at most `most` seconds. A hint, not a record: a failed
    look ends the wait (the rest's insert then says what is wrong)."""
    deadline = time.monotonic() + most
    try:
        while await asyncio.to_thread(farm.still_pending, engine, run_id, job_ids, lease):
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(FIRST_POSTED_POLL)
    except SQLAlchemyError as exc:
        log.debug("not waiting for run %d's first jobs: %s", run_id, exc)


async def _defer(app: procrastinate.App, entries: list[procrastinate.jobs.Job]) -> int:
    """Queue `entries` in one statement: they wake each idle worker once, not once each."""
    if not entries:
        return 0
    try:
        await app.job_manager.batch_defer_jobs_async(entries)
        return len(entries)
    except AlreadyEnqueued:  # another worker queued some of them: the rest one by one
        pass
    count = 0
    for entry in entries:
        try:
            await app.job_manager.defer_job_async(entry)
        except AlreadyEnqueued:
            continue
        count += 1
    return count


async def age(engine: Engine, aging: float) -> int:
    """Raise every job that waited `aging` seconds by one priority level."""
    return await asyncio.to_thread(_age, engine, aging)


def _age(engine: Engine, aging: float) -> int:
    with engine.begin() as conn:
        result: Any = conn.execute(
            text(
                "UPDATE procrastinate_jobs SET priority = priority + :level, "
                "args = jsonb_set(args, '{aged_at}', to_jsonb(EXTRACT(EPOCH FROM now())))"
                " WHERE status = 'todo' AND task_name = :task "
                "AND COALESCE((args->>'aged_at')::float, 0) < EXTRACT(EPOCH FROM now()) - :aging"
            ),
            {"level": LEVEL, "task": TASK, "aging": aging},
        )
        return int(result.rowcount or 0)


async def requeue_stalled(app: procrastinate.App, lease: float) -> list[dict[str, Any]]:
    """Hand the jobs of workers whose heartbeat stopped `lease` seconds ago back to the
    queue (procrastinate's stalled-job query); returns their arguments."""
    manager = app.job_manager
    out = []
    for job in await manager.get_stalled_jobs(seconds_since_heartbeat=lease):
        try:
            await manager.retry_job(job)
        except Exception as exc:  # another worker requeued it first
            log.debug("requeue of queue job %s: %s", job.id, exc)
            continue
        out.append(dict(job.task_kwargs))
    await manager.prune_stalled_workers(seconds_since_heartbeat=lease)
    return out
