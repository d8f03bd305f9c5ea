"""How a worker compiles a submitted run: once, and ahead when the submitter says a spec is
coming (bridge.farm_runs.Runs.expect), without ever rendering other than what was
submitted."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import farm_runs
from bridge.db.store import WORKERS_BACKEND, Store
from bridge.errors import BridgeError
from bridge.spec.validate import load_spec
from bridge.webhooks import Notifier

ROOT = Path(__file__).resolve().parent.parent
SPEC = """version: 1
project: {id: ahead}
defaults: {preset: draft, fps: 12, motion: core-smoke, duration: 2f}
scenes: [{id: a, shots: [{id: s1, action: one}, {id: s2, action: two}]}]
"""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'bridge.db'}")
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The projects the workers' compiles built plans for, in order."""
    done: list[str] = []
    compile_plan = farm_runs.compile_plan

    def counted(spec: object) -> object:
        done.append(spec.project.id)  # type: ignore[attr-defined]
        return compile_plan(spec)  # type: ignore[arg-type]

    monkeypatch.setattr(farm_runs, "compile_plan", counted)
    return done


def submitted(store: Store, path: Path, key: str | None, **selection: list[str]) -> int:
    """A run as `bridge submit` writes it, from the spec as it is now."""
    spec = load_spec(path)
    settings = {
        farm_runs.SPEC_PATH: str(path),
        farm_runs.SPEC_FOLDER: str(path.parent),
        farm_runs.SELECTION: selection,
        farm_runs.DIRECTION: farm_runs.direction_digest(path),
    }
    if key is not None:
        settings[farm_runs.PREPARED] = key
    return store.create_run(spec, WORKERS_BACKEND, preview=False, settings=settings)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "ahead.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture
def worker(store: Store, tmp_path: Path) -> farm_runs.Runs:
    return farm_runs.Runs(store, tmp_path / "out", {}, Notifier())


def test_a_spec_compiled_on_the_submitter_s_word_is_the_run_s_compile(
    store: Store, path: Path, worker: farm_runs.Runs, tmp_path: Path, compiles: list[str]
) -> None:
    worker.expect("k1", path, tmp_path)()
    assert compiles == ["ahead"]  # before the run's rows exist
    run_id = submitted(store, path, "k1", only=["a/s2"])
    ctx = worker.get(run_id)
    assert compiles == ["ahead"]  # not compiled again
    assert ctx.plan.order == ("render:a/s2",)  # the run's own selection
    assert ctx.spec.revision == load_spec(path).revision
    again = submitted(store, path, "k1")  # a key is taken once
    assert len(worker.get(again).plan.order) > 1  # the whole spec: its own selection
    assert compiles == ["ahead", "ahead"]


def test_a_run_waits_for_its_compile_under_way_instead_of_compiling_again(
    store: Store, path: Path, worker: farm_runs.Runs, tmp_path: Path, compiles: list[str]
) -> None:
    compile_spec = worker.expect("k1", path, tmp_path)
    run_id = submitted(store, path, "k1")
    getting = threading.Thread(target=worker.get, args=(run_id,))
    getting.start()
    getting.join(0.3)
    assert getting.is_alive()  # waiting for the compile expected
    compile_spec()
    getting.join(5)
    assert not getting.is_alive()
    assert compiles == ["ahead"]


def test_a_compile_ahead_never_renders_other_than_what_was_submitted(
    store: Store, path: Path, worker: farm_runs.Runs, tmp_path: Path, compiles: list[str]
) -> None:
    run_id = submitted(store, path, "k1")
    path.write_text(SPEC.replace("action: two", "action: deux"))
    worker.expect("k1", path, tmp_path)()  # it read the edited spec
    with pytest.raises(BridgeError, match=r"changed since run \d+ was submitted"):
        worker.get(run_id)
    assert compiles == ["ahead", "ahead"]  # refused after compiling what is there now


def test_a_compile_ahead_of_another_spec_or_a_broken_one_is_not_used(
    store: Store, path: Path, worker: farm_runs.Runs, tmp_path: Path, compiles: list[str]
) -> None:
    other, broken = tmp_path / "other.yaml", tmp_path / "broken.yaml"
    other.write_text(SPEC)
    broken.write_text("version: 1\nscenes: [")
    worker.expect("k1", other, tmp_path)()
    worker.expect("k2", broken, tmp_path)()  # no error here: the run's compile says why
    worker.expect("k3", tmp_path / "gone.yaml", tmp_path)()
    assert compiles == ["ahead"]
    worker.get(submitted(store, path, "k1"))  # a key naming another spec
    assert compiles == ["ahead", "ahead"]
    broken_run = submitted(store, path, "k2")
    path.write_text("version: 1\nscenes: [")
    with pytest.raises(BridgeError, match=r"ahead.yaml:3:1: YAML syntax"):
        worker.get(broken_run)


def test_compiles_their_runs_never_claim_are_dropped(
    path: Path, worker: farm_runs.Runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(farm_runs, "PREPARED_FOR", 0.0)
    worker.expect("k1", path, tmp_path)()
    worker.expect("k2", path, tmp_path)()
    assert list(worker._prepared) == ["k2"]


def test_a_direction_edited_after_submit_is_refused(
    store: Store, worker: farm_runs.Runs, tmp_path: Path
) -> None:
    """The spec's revision does not cover its direction file, whose shots it renders."""
    path = tmp_path / "autonomous.yaml"
    shutil.copy(ROOT / "specs" / "autonomous.yaml", path)
    direction = tmp_path / "autonomous.direction.yaml"
    shutil.copy(ROOT / "specs" / "autonomous.direction.yaml", direction)
    kept = submitted(store, path, None)
    edited = submitted(store, path, None)
    assert worker.get(kept).plan.order  # unchanged: rendered as submitted
    text = direction.read_text()
    direction.write_text(text.replace("She notices the first blossoms", "She leaves"))
    with pytest.raises(BridgeError, match=r"autonomous.direction.yaml changed since run \d+"):
        worker.get(edited)
