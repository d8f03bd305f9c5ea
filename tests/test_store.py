"""The job store on SQLite and on the PostgreSQL at 127.0.0.1:5432."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import select

from bridge.compile import compile_plan
from bridge.db.models import GeneratedAsset, JobRecord, Run
from bridge.db.store import Asset, Resumable, Store, resumable_in
from bridge.errors import ConfigError
from bridge.plan import Job
from bridge.spec.model import Spec
from bridge.spec.validate import load_spec
from bridge.states import RunState

ROOT = Path(__file__).resolve().parent.parent


def test_spec_rows_runs_jobs_assets_and_resume(database_url: str) -> None:
    spec = load_spec(ROOT / "specs" / "moonlit-garden.yaml")
    plan = compile_plan(spec)
    store = Store(database_url)
    try:
        store.sync_spec(spec)
        store.sync_spec(spec)  # idempotent: replaced, not duplicated
        run_id = store.create_run(
            spec,
            "http://a",
            preview=False,
            settings={"x": 1},
            jobs=plan.jobs(),
            reasons={"render:garden/s01": "changed"},
        )
        render = plan.job("render:garden/s01")
        store.mark_submitting(run_id, render.id, "p-1", "http://a", 1)
        assert store.resumable("moonlit-garden", [render.hash]) == {
            render.hash: Resumable("p-1", "http://a")
        }
        later = store.create_run(spec, "http://a", preview=False, settings={})
        store.take_over(later, render.hash)
        assert store.resumable("moonlit-garden", [render.hash]) == {}
        asset = Asset(
            path="moonlit-garden/garden/s01/render.mp4",
            sha256="ab" * 32,
            bytes=10,
            probe={"width": 704},
            quality={"score": 1.0},
        )
        store.succeeded(run_id, spec, render, seconds=1.5, asset=asset)
        # a retry after a commit whose answer was lost: nothing is recorded twice
        store.succeeded(run_id, spec, render, seconds=9.0, asset=asset)
        with store.session() as s:
            (asset_id,) = s.exec(select(GeneratedAsset.id).where(GeneratedAsset.run_id == run_id))
        (succeeded,) = store.events(run_id)
        assert (succeeded.kind, succeeded.data) == ("job_succeeded", {"seconds": 1.5})
        with pytest.raises(LookupError):
            store.succeeded(run_id, spec, replace(render, id="render:nope"), seconds=1, asset=None)
        found = store.find_assets("moonlit-garden", [render.hash, "nope"])
        assert list(found) == [render.hash]
        assert found[render.hash].probe == {"width": 704}
        assert store.latest_by_job("moonlit-garden")[render.id].id == asset_id
        store.log(run_id, "job_failed", render.id, data={"kind": "timeout", "final": True})
        (_, event) = store.events(run_id)
        assert (event.kind, event.job_id) == ("job_failed", render.id)
        assert event.data == {"kind": "timeout", "final": True}
        counts = store.count_jobs(run_id)
        assert counts["succeeded"] == 1
        assert counts["pending"] == len(plan) - 1
        store.finish_run(run_id, RunState.SUCCEEDED, counts, "manifest.json")
        run = store.run(run_id)
        assert isinstance(run, Run)
        assert run.status == "succeeded"
        assert [r.id for r in store.runs(status=RunState.SUCCEEDED)] == [run_id]
        assert [r.id for r in store.runs(status=RunState.RUNNING)] == [later]
        by_state, seconds = store.job_totals()
        assert by_state["succeeded"] == 1
        assert seconds == 1.5
        assert store.project("moonlit-garden").spec_file == spec.file
        assert store.scene("garden").project_id == "moonlit-garden"
        assert store.scene("nope") is None
        with pytest.raises(LookupError):
            store.finish_run(10**6, RunState.FAILED, {}, None)
        jobs = {j.job_id: j for j in store.jobs(run_id)}
        assert jobs[render.id].reason == "changed"
        assert jobs[render.id].prompt_id == "p-1"
    finally:
        store.close()


def test_a_run_and_its_job_rows_are_written_together(synced: tuple[Spec, Store]) -> None:
    """Either both are there or neither: a worker that saw the run without its jobs would
    end it as having none."""
    spec, store = synced
    plan = compile_plan(spec)
    render, first = plan.job("render:garden/s01"), next(plan.jobs())
    with pytest.raises(SQLAlchemyError):  # the same job twice: its rows cannot be written
        new_runs(spec, store, count=1, jobs=[*plan.jobs(), render])
    assert store.runs() == []
    run_id = store.create_run(
        spec,
        "http://a",
        preview=False,
        settings={},
        jobs=plan.jobs(),
        reasons={render.id: "changed"},
        cached={first.id},
        priority=7,
    )
    rows = {row.job_id: row for row in store.jobs(run_id)}
    assert len(rows) == len(plan)
    assert (rows[render.id].state, rows[render.id].reason) == ("pending", "changed")
    assert rows[first.id].state == "cached"
    assert rows[first.id].finished_at is not None
    assert store.run(run_id).priority == 7  # type: ignore[union-attr]


@pytest.fixture
def synced(database_url: str) -> Iterator[tuple[Spec, Store]]:
    """The sample spec's rows in a fresh store."""
    spec = load_spec(ROOT / "specs" / "moonlit-garden.yaml")
    store = Store(database_url)
    try:
        store.sync_spec(spec)
        yield spec, store
    finally:
        store.close()


def new_runs(spec: Spec, store: Store, count: int = 2, jobs: Sequence[Job] = ()) -> list[int]:
    return [
        store.create_run(spec, "http://a", preview=False, settings={}, jobs=jobs)
        for _ in range(count)
    ]


def test_resumable_prompts_are_found_by_hash_newest_first_among_many(
    synced: tuple[Spec, Store],
) -> None:
    """Asked for more hashes than one query takes (500), each gets its newest prompt."""
    spec, store = synced
    runs = new_runs(spec, store)
    with store.session() as s:
        for run_id, prompt in zip(runs, ("old", "new"), strict=True):
            for n in range(700):
                s.add(
                    JobRecord(
                        run_id=run_id,
                        job_id=f"j{n}",
                        hash=f"h{n:04d}",
                        state="submitted",
                        prompt_id=f"{prompt}-{n}",
                        server="http://a",
                    )
                )
        s.commit()
    wanted = [f"h{n:04d}" for n in range(1, 700, 2)]
    got = store.resumable("moonlit-garden", [*wanted, "nope"])
    assert got == {h: Resumable(f"new-{int(h[1:])}", "http://a") for h in wanted}
    assert store.resumable("another-project", wanted) == {}


def test_a_job_rendered_again_is_found_by_its_newest_asset(synced: tuple[Spec, Store]) -> None:
    """Its output was missing and the new render's bytes differ (a GPU's are not always the
    same twice): the newest checksum is the one its path now holds."""
    spec, store = synced
    plan = compile_plan(spec)
    render = plan.job("render:garden/s01")
    for run_id, digest in zip(
        new_runs(spec, store, jobs=list(plan.jobs())), ("ab", "cd"), strict=True
    ):
        path = "moonlit-garden/garden/s01/render.mp4"
        asset = Asset(path=path, sha256=digest * 32, bytes=10, probe=None, quality=None)
        store.succeeded(run_id, spec, render, seconds=1.0, asset=asset)
    found = store.find_assets("moonlit-garden", [render.hash])
    assert (found[render.hash].sha256, found[render.hash].run_id) == ("cd" * 32, run_id)


def test_a_run_s_job_rows_are_read_by_job_id(synced: tuple[Spec, Store]) -> None:
    spec, store = synced
    runs = new_runs(spec, store)
    with store.session() as s:
        for run_id in runs:
            s.add_all(JobRecord(run_id=run_id, job_id=f"j{n}", hash="h") for n in range(600))
        s.commit()
    wanted = [f"j{n}" for n in range(600) if n % 7]  # 514
    got = store.job_rows(runs[1], [*wanted, "nope"])
    assert sorted(got) == sorted(wanted)  # more than one query's 500
    assert {row.run_id for row in got.values()} == {runs[1]}


def _job_setup_statements(store: Store, caplog: pytest.LogCaptureFixture) -> list[str]:
    """How SQLAlchemy says it got each statement of a job's setup: generated or cached."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sqlalchemy.engine.Engine"):
        with store.engine.connect() as conn:
            resumable_in(conn, "moonlit", ["abc"])
        store.run(1)
        store.job_rows(1, ["render:a/s1"])
        store.find_assets("moonlit", ["abc"])
    return [
        kind
        for r in caplog.records
        for kind in ("generated in", "cached since")
        if f"[{kind}" in r.getMessage()
    ]


def test_a_warmed_store_sets_up_jobs_with_statements_compiled_before(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Store.warm, as a worker starts: at a run's start every worker sets up jobs at once,
    and none compiles its reads then."""
    cold, warm = Store(database_url), Store(database_url)
    try:
        assert "generated in" in _job_setup_statements(cold, caplog)
        warm.warm()
        assert set(_job_setup_statements(warm, caplog)) == {"cached since"}
    finally:
        cold.close()
        warm.close()


def test_dead_runs_are_marked_interrupted(database_url: str) -> None:
    spec = load_spec(ROOT / "specs" / "smoke.yaml")
    store = Store(database_url)
    try:
        first = store.create_run(spec, "preview", preview=True, settings={})
        with store.session() as s:
            row = s.get(Run, first)
            row.pid = 2**22 + 12345  # no such process
            s.add(row)
            s.commit()
        store.create_run(spec, "preview", preview=True, settings={})
        assert store.run(first).status == "interrupted"
    finally:
        store.close()


def test_unreachable_database_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError, match="cannot open the database") as info:
        Store("postgresql://postgres:secret@127.0.0.1:1/none")
    assert "secret" not in str(info.value)
