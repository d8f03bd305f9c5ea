"""A worker's hold on a job row, on PostgreSQL: the claim finds the prompt to re-attach to in
the same transaction, and the submission is what starts a remote job's attempt."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from bridge import queue
from bridge.db import farm
from bridge.db.models import JobRecord, Run
from bridge.db.store import Resumable, Store
from bridge.states import JobState
from tests.test_slots import live_worker

pytestmark = pytest.mark.postgres


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    store = Store(pg_url)
    asyncio.run(queue.ensure_schema(queue.app_for(pg_url), store.engine))
    yield store.engine
    store.close()


def runs(engine: Engine, *jobs: tuple[str, str, str, dict[str, str]]) -> list[int]:
    """One run per (project, job, hash, row fields); their ids."""
    with Session(engine) as s:
        made = [Run(project_id=project) for project, *_ in jobs]
        s.add_all(made)
        s.flush()
        for run, (_, job, job_hash, fields) in zip(made, jobs, strict=True):
            s.add(JobRecord(run_id=run.id, job_id=job, hash=job_hash, **fields))
        s.commit()
        return [int(run.id or 0) for run in made]


def started(engine: Engine, run_id: int) -> tuple[str, datetime | None]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT state, started_at FROM jobs WHERE run_id = :r"), {"r": run_id}
        ).one()
    return row.state, row.started_at


def test_a_claim_finds_the_prompt_an_interrupted_run_left_for_the_job_s_hash(
    engine: Engine,
) -> None:
    interrupted = {"state": "submitted", "prompt_id": "p-old", "server": "s1"}
    _, _, new = runs(
        engine,
        ("film", "a", "h1", interrupted),
        ("other-film", "a", "h1", {**interrupted, "prompt_id": "p-other"}),
        ("film", "a", "h1", {}),
    )
    me = live_worker(engine)
    claim = farm.claim_job(engine, new, "a", me, 30, "w1", project="film", job_hash="h1")
    assert claim is not None
    assert claim.resumable == Resumable("p-old", "s1")
    assert not claim.took_over
    nothing = farm.claim_job(engine, new, "a", me, 30, "w1", project="film", job_hash="h2")
    assert nothing is not None
    assert nothing.resumable is None


def claims_recorded(engine: Engine, run_id: int) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT data::text FROM events WHERE run_id = :r AND kind = 'job_claimed'"),
            {"r": run_id},
        )
        return [r[0] for r in rows]


def holder(engine: Engine, run_id: int) -> int | None:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT worker_id FROM jobs WHERE run_id = :r"), {"r": run_id}
        ).scalar_one()


def test_a_claim_leaves_a_live_worker_s_job_and_a_finished_one_and_takes_a_dead_one_s(
    engine: Engine,
) -> None:
    me, other = live_worker(engine), live_worker(engine)
    dead = other + 1000  # no heartbeat: gone
    held, finished, orphan = runs(
        engine,
        ("film", "a", "h1", {"worker_id": other}),
        ("film", "a", "h1", {"worker_id": dead, "state": "succeeded"}),
        ("film", "a", "h1", {"worker_id": dead, "state": "submitted", "prompt_id": "p1"}),
    )

    def claim(run_id: int) -> farm.Claim | None:
        return farm.claim_job(engine, run_id, "a", me, 30, "w1", project="film", job_hash="h1")

    assert claim(held) is None
    assert (holder(engine, held), claims_recorded(engine, held)) == (other, [])
    assert claim(finished) == farm.Claim(JobState.SUCCEEDED, took_over=False)
    assert (holder(engine, finished), claims_recorded(engine, finished)) == (dead, [])
    taken = claim(orphan)
    assert taken == farm.Claim(JobState.SUBMITTED, took_over=True, resumable=Resumable("p1", None))
    assert holder(engine, orphan) == me
    assert claims_recorded(engine, orphan) == ['{"worker": "w1", "took_over": true}']
    again = claim(orphan)  # its own: not a take-over
    assert again == farm.Claim(JobState.SUBMITTED, took_over=False, resumable=Resumable("p1", None))
    assert claims_recorded(engine, orphan)[1] == '{"worker": "w1", "took_over": false}'


def test_a_remote_job_s_attempt_starts_with_its_submission_and_a_reseed_keeps_it(
    engine: Engine,
) -> None:
    (run_id,) = runs(engine, ("film", "a", "h1", {}))
    me = live_worker(engine)
    assert farm.claim_job(engine, run_id, "a", me, 30, "w1", project="film", job_hash="h1")
    assert started(engine, run_id) == ("pending", None)  # claimed, waiting for a slot

    def submit(prompt: str, attempt: int) -> None:
        assert farm.mark_submitting(
            engine, run_id, "a", me, prompt_id=prompt, server="s1", attempt=attempt
        )

    submit("p1", 1)
    state, first = started(engine, run_id)
    assert state == "submitted"
    assert first is not None
    submit("p2", 1)  # a quality retry's new seed: the same attempt
    assert started(engine, run_id)[1] == first
    submit("p3", 2)  # a transient error's next attempt starts again
    later = started(engine, run_id)[1]
    assert later is not None
    assert later > first
