"""Queueing a run's ready jobs on PostgreSQL: the jobs the servers run first in one
statement, the rest of the run in another once those are posted, and one by one where
another worker queued some of them first."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from bridge import queue, settings
from bridge.compile import compile_plan
from bridge.db import farm
from bridge.db.store import Store
from bridge.plan import Plan
from bridge.runner import Selection
from bridge.spec.validate import load_spec
from bridge.submit import submit
from tests.conftest import smoke_spec


def _queued(store: Store, run_id: int) -> list[tuple[str, int, str]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT args->>'job_id', priority, queueing_lock FROM procrastinate_jobs "
                "WHERE task_name = :task AND (args->>'run_id')::int = :run ORDER BY id"
            ),
            {"task": queue.TASK, "run": run_id},
        )
        return [(r[0], r[1], r[2]) for r in rows]


@contextlib.asynccontextmanager
async def _submitted(
    pg_url: str, tmp_path: Path, *, shots: int
) -> AsyncIterator[tuple[Store, Plan, int]]:
    """A submitted run of `shots` renders: its store (closed after), plan and id."""
    path = tmp_path / "q.yaml"
    path.write_text(smoke_spec("q", shots))
    config = settings.resolve(
        environ={"DATABASE_URL": pg_url, "OUTPUT_PATH": str(tmp_path / "out")}
    )
    spec = load_spec(path)
    plan = compile_plan(spec)
    store = Store(pg_url)
    try:
        run_id = await submit(config, store, spec, plan, Selection(), priority=0)
        yield store, plan, run_id
    finally:
        store.close()


def _batches(app: Any, monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[str, int]]]:
    """The queue's batch inserts from now on, each as its entries' (job id, lane)."""
    batches: list[list[tuple[str, int]]] = []
    batch_defer = app.job_manager.batch_defer_jobs_async

    async def seen(entries: list[Any]) -> Any:
        batches.append([(e.task_kwargs["job_id"], e.task_kwargs["lane"]) for e in entries])
        return await batch_defer(entries)

    monkeypatch.setattr(app.job_manager, "batch_defer_jobs_async", seen)
    return batches


async def _queue_again(app: Any, store: Store, plan: Plan, run_id: int, settle: float = 0) -> int:
    """Empty the queue, then queue the run's ready jobs again as two servers' streams."""
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM procrastinate_jobs"))
    async with app.open_async():
        return await queue.defer_ready(
            app, store.engine, run_id, plan, 0, group=True, lanes=2, lease=30, settle=settle
        )


async def test_a_runs_ready_jobs_are_queued_in_order_and_another_workers_copy_is_kept(
    pg_url: str, tmp_path: Path
) -> None:
    async with _submitted(pg_url, tmp_path, shots=5) as (store, plan, run_id):
        first = _queued(store, run_id)
        renders = [j for j in plan.order if j.startswith("render:")]
        assert [job for job, _, _ in first] == renders
        assert [lock for _, _, lock in first] == [f"{run_id}/{j}" for j in renders]
        assert [p for _, p, _ in first] == sorted((p for _, p, _ in first), reverse=True)

        # Another worker queued the third render a moment ago: the batch meets its lock, the others are
        # queued one by one, and its copy is the only one.
        with store.engine.begin() as conn:
            conn.execute(text("DELETE FROM procrastinate_jobs"))
        app = queue.app_for(pg_url)
        async with app.open_async():
            await app.configure_task(
                queue.TASK, queueing_lock=f"{run_id}/{renders[2]}"
            ).defer_async(run_id=run_id, job_id="elsewhere")
            count = await queue.defer_ready(
                app, store.engine, run_id, plan, 0, group=True, lease=30
            )
        again = _queued(store, run_id)
        assert count == len(renders) - 1
        assert sorted(job for job, _, _ in again) == sorted(
            ["elsewhere", *renders[:2], *renders[3:]]
        )


async def test_the_jobs_each_server_runs_first_are_queued_before_the_rest_of_the_run(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _submitted(pg_url, tmp_path, shots=9) as (store, plan, run_id):
        app = queue.app_for(pg_url)
        batches = _batches(app, monkeypatch)
        count = await _queue_again(app, store, plan, run_id)
        renders = [j for j in plan.order if j.startswith("render:")]
        assert count == len(renders) == 9
        # two servers, stretches of four and five: the first two jobs of each, then the rest
        assert batches[0] == [(renders[0], 0), (renders[4], 1), (renders[1], 0), (renders[5], 1)]
        rest = [renders[2], renders[6], renders[3], renders[7], renders[8]]
        assert [job for job, _ in batches[1]] == rest
        assert [job for job, _, _ in _queued(store, run_id)] == [
            job for batch in batches for job, _ in batch
        ]


async def test_the_rest_of_a_run_waits_for_its_first_jobs_to_reach_the_servers(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only while a live worker may post them, and at most `settle` seconds."""
    async with _submitted(pg_url, tmp_path, shots=9) as (store, plan, run_id):
        app = queue.app_for(pg_url)
        batches = _batches(app, monkeypatch)

        async def defer(settle: float) -> int:
            batches.clear()
            return await _queue_again(app, store, plan, run_id, settle)

        # no worker is alive to post them: no wait
        assert await asyncio.wait_for(defer(60), 10) == 9
        with store.engine.begin() as conn:
            worker = conn.execute(
                text("INSERT INTO procrastinate_workers DEFAULT VALUES RETURNING id")
            ).scalar_one()
            conn.execute(text("INSERT INTO server_slots (server, slot) VALUES ('a', 0)"))
        queueing = asyncio.create_task(defer(60))
        while not batches:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        assert len(batches) == 1
        assert not queueing.done()
        with store.engine.begin() as conn:  # one posted, one ended: the others still wait
            for (job_id, _), state in zip(batches[0][:2], ("submitted", "succeeded"), strict=True):
                conn.execute(
                    text("UPDATE jobs SET state = :s WHERE run_id = :r AND job_id = :j"),
                    {"s": state, "r": run_id, "j": job_id},
                )
        await asyncio.sleep(0.3)
        assert len(batches) == 1
        with store.engine.begin() as conn:
            conn.execute(
                text("UPDATE jobs SET state = 'running' WHERE run_id = :r AND job_id = ANY(:j)"),
                {"r": run_id, "j": [job_id for job_id, _ in batches[0][2:]]},
            )
        assert await asyncio.wait_for(queueing, 10) == 9
        assert [len(b) for b in batches] == [4, 5]
        # a live worker with a free slot that posts none of them: at most `settle`
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE jobs SET state = 'pending' WHERE run_id = :r"), {"r": run_id})
        assert await asyncio.wait_for(defer(0.2), 10) == 9
        # every slot held by another job: none can be posted now, so no wait
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE server_slots SET worker_id = :w"), {"w": worker})
        assert await asyncio.wait_for(defer(60), 10) == 9


async def test_a_failed_look_at_the_first_jobs_ends_the_wait_not_the_queueing(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _submitted(pg_url, tmp_path, shots=9) as (store, plan, run_id):

        def away(*_: Any) -> int:
            raise OperationalError("SELECT", {}, Exception("server closed the connection"))

        monkeypatch.setattr(farm, "still_pending", away)
        count = await _queue_again(queue.app_for(pg_url), store, plan, run_id, settle=60)
        assert count == 9
        assert len(_queued(store, run_id)) == 9
