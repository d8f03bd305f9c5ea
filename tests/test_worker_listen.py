"""A worker's listener on PostgreSQL: a spec is compiled as soon as `bridge submit` says it
is coming, before its run's rows are written, and the run takes that compile when it is
announced, before any of its jobs reaches the worker (at a run's start every worker would
otherwise compile the spec at once, while its first jobs wait); a freed slot wakes the
worker's slot broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest

from bridge import farm_runs, slots
from bridge import priority as priorities
from bridge.compile import compile_plan
from bridge.db import farm
from bridge.db.store import Store
from bridge.plan import Plan
from bridge.runner import Selection
from bridge.settings import Settings
from bridge.spec.model import Spec
from bridge.spec.validate import load_spec
from bridge.submit import submit
from bridge.worker import Worker

pytestmark = pytest.mark.postgres

SPEC = """version: 1
project: {id: heard}
defaults: {preset: draft, fps: 12, motion: core-smoke, duration: 2f}
scenes: [{id: a, shots: [{id: s1, action: one}, {id: s2, action: two}]}]
"""


class Broker:
    """What the listener asks of the slot broker: to look again."""

    def __init__(self) -> None:
        self.looks = 0

    def changed(self) -> None:
        self.looks += 1


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)
    assert condition(), what


async def test_a_worker_compiles_a_spec_as_it_is_submitted_and_wakes_its_broker_on_a_freed_slot(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "heard.yaml"
    path.write_text(SPEC)
    settings = Settings(database_url=pg_url, output_path=tmp_path / "out", workers=True)
    store = Store(pg_url)
    worker = Worker(settings, environ={})
    broker = Broker()
    worker.slots = cast(slots.Slots, broker)
    compiled: list[int] = []
    compile_run = worker.runs._compile

    def counted(run_id: int) -> object:
        compiled.append(run_id)
        return compile_run(run_id)

    monkeypatch.setattr(worker.runs, "_compile", counted)
    plans: list[str] = []  # the specs compiled, by project

    def planned(spec: Spec) -> Plan:
        plans.append(spec.project.id)
        return compile_plan(spec)

    monkeypatch.setattr(farm_runs, "compile_plan", planned)
    listener = asyncio.create_task(worker._listen())
    try:
        await until(lambda: worker.listening, "the worker listens")
        await asyncio.to_thread(farm.announce_spec, store.engine, "k", str(path), str(tmp_path))
        await until(lambda: plans == ["heard"], "a spec compiled on the submitter's word")
        assert store.runs() == []  # before any run of it was written

        spec = load_spec(path)
        high = priorities.parse("high", where="test")
        run_id = await submit(settings, store, spec, compile_plan(spec), Selection(), priority=high)
        await until(lambda: compiled == [run_id], f"run {run_id} compiled once")
        await until(lambda: not worker._preparing, "the compile ended")
        ctx = await asyncio.to_thread(worker.runs.get, run_id)
        assert compiled == [run_id]  # the jobs' tasks find it compiled
        assert plans == ["heard", "heard"]  # the submit's own word, then its run took it
        assert ctx.priority == high  # announced after its priority was written
        assert set(ctx.plan.order) == set(compile_plan(spec).order)
        claimed = [r.job_id for r in store.jobs(run_id) if r.worker_id is not None]
        assert claimed == []  # no job reached the worker: the announcement did it

        looks = broker.looks
        await asyncio.to_thread(farm.announce_freed, store.engine, ["s1"])
        await until(lambda: broker.looks == looks + 1, "a freed slot wakes the broker")
        assert compiled == [run_id]
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        worker.store.close()
        store.close()
