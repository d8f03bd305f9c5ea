"""The rows bridge's workers share on PostgreSQL: job claims, global server slots, the
servers' last cache signature, and which process is behind each queue worker.

Liveness is the queue's own: a worker is alive while its heartbeat in procrastinate's
`procrastinate_workers` is younger than the lease. A job row or a server slot held by a
worker that is no longer alive can be taken over; nothing here writes a heartbeat.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError

from bridge import affinity
from bridge.db.models import utcnow
from bridge.db.store import WORKERS_BACKEND, Resumable, resumable_in
from bridge.states import UNFINISHED, JobState

_LIVE = (
    "SELECT id FROM procrastinate_workers "
    "WHERE last_heartbeat > now() - make_interval(secs => :lease)"
)
# not JobState.finished, in SQL: the states a job row may still leave
_UNFINISHED = "(" + ", ".join(f"'{state.value}'" for state in sorted(UNFINISHED)) + ")"
RUN_LOCK = 0x6272  # pg_advisory_lock(int, int) class key for finishing a run
# NOTIFY channel: a slot is free (its server's name as payload, if one). Workers LISTEN on
# it instead of polling the slots while every one is held; a slot freed by a lease running
# out writes nothing, so the brokers still look now and then (slots.SLOT_BACKSTOP).
SLOTS_FREED = "bridge_slots_freed"
# NOTIFY channel: a run was submitted (its id as payload). Workers compile its spec then,
# while `bridge submit` still queues its jobs, not once the first job reaches them.
RUN_SUBMITTED = "bridge_run_submitted"
# NOTIFY channel: a spec is about to be submitted (JSON: key, path, folder). Workers compile
# it while `bridge submit` writes the run's rows; the run's settings name the key.
SPEC_SUBMITTED = "bridge_spec_submitted"
_NOTIFY_MAX = 7999  # bytes in a NOTIFY payload


def _reading(engine: Engine) -> Connection:
    """A connection for reads, in autocommit: a read in a transaction costs a BEGIN and a
    ROLLBACK round trip besides its own (each statement sees the tables as they are then)."""
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


@dataclass(frozen=True)
class Claim:
    """A job row this worker now holds; `took_over` when a dead worker held it before;
    `resumable`, the prompt a try before (this run's, or an interrupted run's) left on a
    server for the job's hash, to re-attach to (as Store.resumable finds it)."""

    state: JobState
    took_over: bool
    resumable: Resumable | None = None


@dataclass(frozen=True)
class Slot:
    server: str
    slot: int
    loaded: dict[str, float] = field(default_factory=dict, compare=False)  # before the claim


@dataclass(frozen=True)
class WorkerRow:
    id: int
    name: str
    host: str
    pid: int
    heartbeat_age: float | None  # seconds; None once the queue pruned it
    jobs: tuple[str, ...]


def claim_job(
    engine: Engine,
    run_id: int,
    job_id: str,
    worker_id: int,
    lease: float,
    worker: str,
    *,
    project: str,
    job_hash: str,
) -> Claim | None:
    """Hold the job for `worker_id` (named `worker` in the run's events) and look up its
    resumable prompt, in one transaction: every job a worker takes starts with both. A
    finished row is returned as it is (its follow-ups may still be due); None when another
    live worker holds it. The row's lock, its claim and the claim's event are one
    statement: at a run's start, when every worker sets up its jobs at once on a busy
    host, each round trip is a wait for the CPU (traced at a run's start: three workers'
    claims a median 30 ms, where three statements took 57 ms)."""
    with engine.begin() as conn:
        row = conn.execute(
            _CLAIM_JOB,
            {
                "run": run_id,
                "job": job_id,
                "me": worker_id,
                "lease": lease,
                "at": utcnow(),
                "own": json.dumps({"worker": worker, "took_over": False}),
                "taken": json.dumps({"worker": worker, "took_over": True}),
            },
        ).one_or_none()
        if row is None:
            return None
        state = JobState(row.state)
        if state.finished:
            return Claim(state, took_over=False)
        if not row.mine:
            return None
        resumable = resumable_in(conn, project, [job_hash]).get(job_hash)
        return Claim(state, took_over=row.took_over, resumable=resumable)


# The job row locked and read, taken unless a live worker holds it or it is finished, and
# the claim's event written, with the row as it was: claim_job.
_CLAIM_JOB = text(
    "WITH cur AS (SELECT state, worker_id, worker_id IN (" + _LIVE + ") AS alive "
    "FROM jobs WHERE run_id = :run AND job_id = :job FOR UPDATE), "
    "took AS (UPDATE jobs j SET worker_id = :me FROM cur "
    "WHERE j.run_id = :run AND j.job_id = :job AND cur.state IN " + _UNFINISHED + " "
    "AND (cur.worker_id IS NULL OR cur.worker_id = :me OR NOT cur.alive) "
    "RETURNING COALESCE(cur.worker_id <> :me, false) AS took_over), "
    "logged AS (INSERT INTO events (run_id, job_id, at, kind, data) "
    "SELECT :run, :job, :at, 'job_claimed', "
    "CAST(CASE WHEN took_over THEN :taken ELSE :own END AS json) FROM took) "
    "SELECT cur.state, took.took_over IS NOT NULL AS mine, "
    "COALESCE(took.took_over, false) AS took_over FROM cur LEFT JOIN took ON true"
)


def mark_submitting(
    engine: Engine,
    run_id: int,
    job_id: str,
    worker_id: int,
    *,
    prompt_id: str,
    server: str,
    attempt: int,
) -> bool:
    """Store.mark_submitting for a claimed job, which also starts its attempt (a new
    attempt's started_at; a reseed's prompt keeps it): committed only while `worker_id`
    still holds the job. False when another worker took it over (this one's heartbeat was
    late): then this one must not post."""
    with engine.begin() as conn:
        done = conn.execute(
            text(
                "UPDATE jobs SET state = 'submitted', prompt_id = :prompt, server = :server, "
                "started_at = CASE WHEN attempts = :attempt AND started_at IS NOT NULL "
                "THEN started_at ELSE now() END, "
                "attempts = :attempt, submitted_at = now() "
                "WHERE run_id = :run AND job_id = :job AND worker_id = :me "
                "AND state IN " + _UNFINISHED
            ),
            {
                "prompt": prompt_id,
                "server": server,
                "attempt": attempt,
                "run": run_id,
                "job": job_id,
                "me": worker_id,
            },
        )
        return bool(done.rowcount)


def mark_running(engine: Engine, run_id: int, job_id: str, worker_id: int, attempt: int) -> bool:
    """Store.mark_running for a claimed job; False when it is no longer this worker's or
    already ended (another worker finished it meanwhile)."""
    with engine.begin() as conn:
        done = conn.execute(
            text(
                "UPDATE jobs SET state = 'running', attempts = :attempt, started_at = now() "
                "WHERE run_id = :run AND job_id = :job AND worker_id = :me "
                "AND state IN " + _UNFINISHED
            ),
            {"attempt": attempt, "run": run_id, "job": job_id, "me": worker_id},
        )
        return bool(done.rowcount)


def running_runs(engine: Engine) -> list[int]:
    """The submitted runs not yet ended, oldest first."""
    with _reading(engine) as conn:
        rows = conn.execute(
            text("SELECT id FROM runs WHERE backend = :b AND status = 'running' ORDER BY id"),
            {"b": WORKERS_BACKEND},
        )
        return [r.id for r in rows]


def fail_unfinished(engine: Engine, run_id: int, error: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE jobs SET state = 'failed', error = :error, finished_at = now(), "
                "worker_id = NULL WHERE run_id = :run AND state IN " + _UNFINISHED
            ),
            {"run": run_id, "error": error},
        )


def skip_pending(engine: Engine, run_id: int, job_id: str, error: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE jobs SET state = 'skipped', error = :error, finished_at = now() "
                "WHERE run_id = :run AND job_id = :job AND state = 'pending'"
            ),
            {"run": run_id, "job": job_id, "error": error},
        )


def announce_run(engine: Engine, run_id: int) -> None:
    """Tell the workers of a submitted run (its rows are in), so each compiles it now."""
    with engine.begin() as conn:
        _notify(conn, RUN_SUBMITTED, str(run_id))


def announce_spec(engine: Engine, key: str, path: str, folder: str) -> None:
    """Tell the workers of a spec about to be submitted; a hint, so one too long for a
    notification (paths of thousands of bytes) is not sent."""
    payload = json.dumps({"key": key, "path": path, "folder": folder})
    if len(payload.encode()) <= _NOTIFY_MAX:
        with engine.begin() as conn:
            _notify(conn, SPEC_SUBMITTED, payload)


def _notify(conn: Connection, channel: str, payload: str) -> None:
    """Sent to the listeners when this transaction commits."""
    conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": payload})


def job_states(engine: Engine, run_id: int) -> dict[str, JobState]:
    with _reading(engine) as conn:
        rows = conn.execute(
            text("SELECT job_id, state FROM jobs WHERE run_id = :run"), {"run": run_id}
        )
        return {r.job_id: JobState(r.state) for r in rows}


def undeferred(engine: Engine, run_id: int, task: str, lease: float) -> tuple[set[str], int]:
    """The run's unfinished jobs that no live worker holds and the queue does not have (a
    job whose entry was lost is among them: the tables are the record), and how many of its
    jobs were handed out already (ended, held or queued): reads that return only what may
    need queueing, not every job's row each time a job ends.

    The queue's entries are read once, as a set (NOT IN an uncorrelated subquery: a hashed
    subplan), not looked up per job row: on tables a run has just filled, before any
    ANALYZE, the planner took the correlated form for a nested loop, 600 rows x 600 rows
    at each job's end (45-100 ms a call, most of PostgreSQL's CPU in a 600-job run)."""
    with _reading(engine) as conn:
        waiting = {
            r.job_id
            for r in conn.execute(
                text(
                    "SELECT j.job_id FROM jobs j WHERE j.run_id = :run "
                    "AND j.state IN " + _UNFINISHED + " "
                    "AND (j.worker_id IS NULL OR j.worker_id NOT IN (" + _LIVE + ")) "
                    "AND j.job_id NOT IN (SELECT q.args->>'job_id' FROM procrastinate_jobs q "
                    "WHERE q.task_name = :task AND q.status IN ('todo', 'doing') "
                    "AND q.args->>'run_id' = :run_key AND q.args->>'job_id' IS NOT NULL)"
                ),
                {"run": run_id, "run_key": str(run_id), "task": task, "lease": lease},
            )
        }
        total = conn.execute(
            text("SELECT count(*) FROM jobs WHERE run_id = :run"), {"run": run_id}
        ).scalar_one()
    return waiting, int(total) - len(waiting)


def states_of(engine: Engine, run_id: int, job_ids: Sequence[str]) -> dict[str, JobState]:
    with _reading(engine) as conn:
        rows = conn.execute(
            text("SELECT job_id, state FROM jobs WHERE run_id = :run AND job_id = ANY(:ids)"),
            {"run": run_id, "ids": list(job_ids)},
        )
        return {r.job_id: JobState(r.state) for r in rows}


def still_pending(engine: Engine, run_id: int, job_ids: Sequence[str], lease: float) -> int:
    """How many of `job_ids` no worker has posted yet; 0 when none can be posted now: no
    worker is alive, or no slot is free (other jobs hold them all)."""
    with _reading(engine) as conn:
        return int(
            conn.execute(
                text(
                    "SELECT CASE WHEN EXISTS (" + _LIVE + ") AND EXISTS (SELECT 1 FROM "
                    "server_slots s WHERE " + _FREE + ") THEN (SELECT count(*) FROM jobs "
                    "WHERE run_id = :run AND job_id = ANY(:ids) AND state = 'pending') "
                    "ELSE 0 END"
                ),
                {"run": run_id, "ids": list(job_ids), "lease": lease},
            ).scalar_one()
        )


def any_unfinished(engine: Engine, run_id: int) -> bool:
    with _reading(engine) as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT EXISTS (SELECT 1 FROM jobs WHERE run_id = :run "
                    "AND state IN " + _UNFINISHED + ")"
                ),
                {"run": run_id},
            ).scalar()
        )


def ensure_slots(engine: Engine, limits: Mapping[str, int]) -> None:
    """One row per slot of each server; a lowered limit drops the free slots above it."""
    with engine.begin() as conn:
        for server, limit in limits.items():
            for slot in range(limit):
                conn.execute(
                    text(
                        "INSERT INTO server_slots (server, slot) VALUES (:s, :n) "
                        "ON CONFLICT DO NOTHING"
                    ),
                    {"s": server, "n": slot},
                )
            conn.execute(
                text(
                    "DELETE FROM server_slots WHERE server = :s AND slot >= :n "
                    "AND worker_id IS NULL"
                ),
                {"s": server, "n": limit},
            )
            conn.execute(
                text("INSERT INTO servers (name) VALUES (:s) ON CONFLICT DO NOTHING"),
                {"s": server},
            )


_FREE = (
    "(s.worker_id IS NULL OR (s.worker_id NOT IN (" + _LIVE + ") AND NOT EXISTS ("
    "SELECT 1 FROM jobs j WHERE j.run_id = s.run_id AND j.job_id = s.job_id "
    "AND j.state IN ('submitted', 'running'))))"
)


@dataclass(frozen=True)
class SlotClaim:
    """One job's claim of a slot on the first of `servers` that has one free.

    With the guard (affinity), a server busy with other models is taken only if
    `may_switch` names it with the signature it still has.
    """

    servers: tuple[str, ...]
    worker_id: int
    run_id: int
    job_id: str
    signature: Mapping[str, float]
    may_switch: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


def claim_slots(
    engine: Engine, claims: Sequence[SlotClaim], *, lease: float, guard: bool
) -> list[Slot | None]:
    """Each claim's slot (with the signature its server had before), or None where every
    server it names was taken; in one transaction, in order, so that a later claim sees
    the servers as the earlier ones left them (at a run's start, one commit for all the
    jobs a broker finds waiting instead of one per slot).

    Free: held by no one; or by a dead worker for a job that is no longer on a server.
    A slot a dead worker held for a job still submitted or running stays that job's, for
    whichever worker takes the job over: its prompt may still be on the server, and the
    server must never hold more of bridge's prompts than its slots.

    A claim is its server's next job: it writes the job's cache `signature` as the
    server's and counts the job, and a model switch when the two share too little. The
    servers named are locked first, in name order (two transactions that locked them as
    their claims came would deadlock): with the guard, two workers never load two
    families on one server at once. The other workers' brokers wait for those locks, so
    the claims go out together (psycopg's executemany: a pipeline), each one statement:
    the locks last the server's work and a round trip or two, not a round trip per claim
    paced by a busy client (traced at a run's start with three workers: claims a median
    20-25 ms and at most 61 ms, where one statement at a time took up to 115 ms).
    """
    named = sorted({name for claim in claims for name in claim.servers})
    if not named:
        return [None] * len(claims)
    asked = [claim for claim in claims if claim.servers]
    with engine.begin() as conn:
        conn.execute(
            text("SELECT 1 FROM servers WHERE name = ANY(:servers) ORDER BY name FOR UPDATE"),
            {"servers": named},
        )
        sql = _claim_sql(conn.dialect)
        params = [_claim_params(claim, lease=lease, guard=guard) for claim in asked]
        driver = conn.connection.driver_connection
        assert isinstance(driver, psycopg.Connection), "workers run on PostgreSQL (psycopg)"
        try:
            with driver.cursor() as cursor:
                cursor.executemany(sql, params, returning=True)
                rows = []
                for _ in asked:
                    rows.append(cursor.fetchone())
                    cursor.nextset()
        except psycopg.Error as exc:  # the brokers wait out SQLAlchemy's errors
            raise DBAPIError.instance(sql, params, exc, psycopg.Error) from exc
    got = iter(None if r is None else Slot(r[0], r[1], dict(r[2] or {})) for r in rows)
    return [next(got) if claim.servers else None for claim in claims]


# A claim's pick, its slot's update and its server's counts in one statement, with the
# server's signature before it: whether the claim switched its models.
_CLAIM = text(
    "WITH pick AS (SELECT s.server, s.slot, v.signature AS before FROM server_slots s "
    "LEFT JOIN servers v ON v.name = s.server "
    "WHERE s.server = ANY(:servers) AND ("
    "  (s.run_id = :run AND s.job_id = :job) OR (" + _FREE + " AND ("
    "    NOT :guard"
    "    OR COALESCE(v.signature::jsonb = CAST(:seen AS jsonb) -> s.server, false)"
    "    OR COALESCE(jsonb_exists_all(v.signature::jsonb, CAST(:heavy AS text[])), false)"
    "    OR NOT EXISTS (SELECT 1 FROM server_slots o"
    "      WHERE o.server = s.server AND o.worker_id IS NOT NULL)))"
    ") ORDER BY (s.run_id IS NOT DISTINCT FROM :run "
    "AND s.job_id IS NOT DISTINCT FROM :job) DESC, "
    "array_position(:servers, s.server), s.slot "
    "FOR UPDATE OF s SKIP LOCKED LIMIT 1), "
    "took AS (UPDATE server_slots t SET worker_id = :me, run_id = :run, "
    "job_id = :job, claimed_at = now() FROM pick "
    "WHERE t.server = pick.server AND t.slot = pick.slot), "
    "counted AS (UPDATE servers c SET signature = CAST(:sig AS JSON), "
    "jobs = c.jobs + 1, switches = c.switches + (cardinality(CAST(:heavy AS text[])) > 0 "
    "AND NOT COALESCE(jsonb_exists_all(pick.before::jsonb, CAST(:heavy AS text[])), false))::int "
    "FROM pick WHERE c.name = pick.server) "
    "SELECT server, slot, before FROM pick"
)


@functools.cache
def _claim_sql(dialect: Dialect) -> str:
    """_CLAIM in the driver's parameter style, compiled once (170 us, at every claim)."""
    return str(_CLAIM.compile(dialect=dialect))


def _claim_params(claim: SlotClaim, *, lease: float, guard: bool) -> dict[str, object]:
    """`heavy`: the models a server must have loaded to serve the job without a switch
    (affinity.switches), which the guard asks of a busy server."""
    return {
        "servers": list(claim.servers),
        "seen": json.dumps({k: dict(v) for k, v in claim.may_switch.items()}),
        "guard": guard,
        "heavy": sorted(affinity.heavy(claim.signature)),
        "run": claim.run_id,
        "job": claim.job_id,
        "lease": lease,
        "me": claim.worker_id,
        "sig": json.dumps(dict(claim.signature)),
    }


@dataclass(frozen=True)
class ServerState:
    """A server as slot claims see it: what it ran last, its free and total slots."""

    signature: dict[str, float]
    free: int
    slots: int


def server_states(engine: Engine, lease: float) -> dict[str, ServerState]:
    """Every server's last signature and slots, in one read (the free count is claim_slots'
    test, less the slot a taken-over job already holds)."""
    with _reading(engine) as conn:
        rows = conn.execute(
            text(
                "SELECT v.name, v.signature, "
                "(SELECT count(*) FROM server_slots s WHERE s.server = v.name AND " + _FREE + ")"
                " AS free, (SELECT count(*) FROM server_slots s WHERE s.server = v.name) AS slots"
                " FROM servers v"
            ),
            {"lease": lease},
        )
        return {r.name: ServerState(dict(r.signature or {}), r.free, r.slots) for r in rows}


@dataclass(frozen=True)
class Waiting:
    """Jobs waiting for a server, of one model family in one server stream (queue.streams)
    at one priority level: those in the queue, and those a worker holds that have no
    prompt yet."""

    family: str
    lane: int | None
    priority: int  # the highest among them
    count: int


def waiting(engine: Engine, task: str, level: int) -> list[Waiting]:
    """Every family's and stream's waiting jobs, by priority level (`level` apart)."""
    with _reading(engine) as conn:
        rows = conn.execute(
            text(
                "SELECT q.args->>'family' AS family, (q.args->>'lane')::int AS lane, "
                "max(q.priority) AS priority, count(*) AS n "
                "FROM procrastinate_jobs q WHERE q.task_name = :task "
                "AND q.args->>'family' IS NOT NULL AND (q.status = 'todo' OR "
                "(q.status = 'doing' AND EXISTS (SELECT 1 FROM jobs j "
                "WHERE j.run_id = (q.args->>'run_id')::int AND j.job_id = q.args->>'job_id' "
                "AND j.prompt_id IS NULL AND j.state IN ('pending', 'running')))) "
                "GROUP BY 1, 2, floor(q.priority::float / :level)"
            ),
            {"task": task, "level": level},
        )
        return [Waiting(r.family, r.lane, int(r.priority), int(r.n)) for r in rows]


def release_slot(engine: Engine, slot: Slot, worker_id: int) -> bool:
    """Free the slot if this worker still holds it (a take-over may have moved it on);
    whether it did. Other workers are not told: see announce_freed."""
    with engine.begin() as conn:
        freed = conn.execute(
            text(
                "UPDATE server_slots SET worker_id = NULL, run_id = NULL, job_id = NULL, "
                "claimed_at = NULL WHERE server = :s AND slot = :n AND worker_id = :me"
            ),
            {"s": slot.server, "n": slot.slot, "me": worker_id},
        )
        return bool(freed.rowcount)


def announce_freed(engine: Engine, servers: Iterable[str]) -> None:
    """Tell every worker that a slot is free on each of `servers`: one transaction for a
    broker's round, whose next round waits for it (at a run's start, with three workers,
    one per server took up to 64 ms)."""
    with engine.begin() as conn:
        for server in servers:
            _slots_freed(conn, server)


def _slots_freed(conn: Connection, server: str = "") -> None:
    """Wake the workers' slot brokers when this transaction commits."""
    _notify(conn, SLOTS_FREED, server)


def signatures(engine: Engine) -> dict[str, dict[str, float]]:
    """The cache signature of the job each server was last given."""
    with _reading(engine) as conn:
        rows = conn.execute(text("SELECT name, signature FROM servers"))
        return {r.name: dict(r.signature or {}) for r in rows}


def server_counts(engine: Engine) -> dict[str, tuple[int, int]]:
    """(jobs given, model switches) per server."""
    with _reading(engine) as conn:
        rows = conn.execute(text("SELECT name, jobs, switches FROM servers"))
        return {r.name: (r.jobs, r.switches) for r in rows}


def register_worker(engine: Engine, worker_id: int, name: str, host: str, pid: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO workers (id, name, host, pid, started_at) "
                "VALUES (:id, :name, :host, :pid, now()) ON CONFLICT (id) DO UPDATE "
                "SET name = :name, host = :host, pid = :pid"
            ),
            {"id": worker_id, "name": name, "host": host, "pid": pid},
        )


def unregister_worker(engine: Engine, worker_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM workers WHERE id = :id"), {"id": worker_id})
        conn.execute(
            text("UPDATE jobs SET worker_id = NULL WHERE worker_id = :id"), {"id": worker_id}
        )
        _slots_freed(conn)  # what it held is free, but for prompts still on their servers


def worker_alive(engine: Engine, worker_id: int) -> bool:
    """Whether the queue still knows this worker (it prunes one whose heartbeat stopped)."""
    with _reading(engine) as conn:
        found = conn.execute(
            text("SELECT 1 FROM procrastinate_workers WHERE id = :id"), {"id": worker_id}
        ).first()
        return found is not None


def prune_workers(engine: Engine) -> None:
    """Forget the processes whose queue worker the queue itself has pruned."""
    with engine.begin() as conn:
        gone = conn.execute(
            text("DELETE FROM workers WHERE id NOT IN (SELECT id FROM procrastinate_workers)")
        )
        if gone.rowcount:
            _slots_freed(conn)


def workers(engine: Engine) -> list[WorkerRow]:
    """Every known worker, its heartbeat's age and the jobs it holds."""
    with _reading(engine) as conn:
        rows = conn.execute(
            text(
                "SELECT w.id, w.name, w.host, w.pid, "
                "EXTRACT(EPOCH FROM now() - p.last_heartbeat) AS age "
                "FROM workers w LEFT JOIN procrastinate_workers p ON p.id = w.id ORDER BY w.id"
            )
        ).all()
        held: dict[int, list[str]] = {}
        for j in conn.execute(
            text(
                "SELECT worker_id, run_id, job_id FROM jobs WHERE worker_id IS NOT NULL "
                "AND state IN " + _UNFINISHED + " ORDER BY id"
            )
        ):
            held.setdefault(j.worker_id, []).append(f"{j.run_id}:{j.job_id}")
    return [
        WorkerRow(
            id=r.id,
            name=r.name,
            host=r.host,
            pid=r.pid,
            heartbeat_age=float(r.age) if r.age is not None else None,
            jobs=tuple(held.get(r.id, ())),
        )
        for r in rows
    ]


@contextlib.contextmanager
def run_lock(engine: Engine, run_id: int) -> Iterator[bool]:
    """Whether this process holds the run's session lock (freed if the process dies)."""
    with engine.connect() as conn:
        got = bool(
            conn.execute(
                text("SELECT pg_try_advisory_lock(:k, :run)"), {"k": RUN_LOCK, "run": run_id}
            ).scalar()
        )
        conn.commit()
        try:
            yield got
        finally:
            if got:
                conn.execute(
                    text("SELECT pg_advisory_unlock(:k, :run)"), {"k": RUN_LOCK, "run": run_id}
                )
                conn.commit()


@dataclass(frozen=True)
class FarmStats:
    """What /metrics and /api/health show of the workers."""

    workers: list[WorkerRow]
    claims: int
    takeovers: int
    servers: dict[str, tuple[int, int]]  # jobs given, model switches


def stats(engine: Engine) -> FarmStats:
    if not queue_exists(engine):
        return FarmStats([], 0, 0, {})
    with _reading(engine) as conn:
        counts: dict[str, int] = dict(
            conn.execute(
                text(
                    "SELECT kind, count(*) FROM events "
                    "WHERE kind IN ('job_claimed', 'lease_taken_over') GROUP BY kind"
                )
            ).all()
        )
    return FarmStats(
        workers(engine),
        int(counts.get("job_claimed", 0)),
        int(counts.get("lease_taken_over", 0)),
        server_counts(engine),
    )


QUEUE_EXISTS = (
    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relname = 'procrastinate_jobs' AND n.nspname = current_schema())"
)


def queue_exists(engine: Engine) -> bool:
    with _reading(engine) as conn:
        return bool(conn.execute(text(QUEUE_EXISTS)).scalar())


def unfinished(states: Mapping[str, JobState]) -> bool:
    return any(not s.finished for s in states.values())
