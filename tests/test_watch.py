"""The watch folder in process: WatchFolder.serve on a Runner with the preview backend.

The daemon as a real process (start-up, SIGTERM, SIGKILL and resume) is tested in
test_front_doors.py and test_daemons.py; what only concerns how files are claimed and filed
runs here, without a process start per test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bridge.runner import Runner
from bridge.settings import Settings
from bridge.watch import WatchFolder


def outcome(folder: Path, name: str) -> list[str]:
    return [d for d in ("done", "rejected", "failed") if (folder / d / name).exists()]


async def until(predicate: Callable[[], bool], timeout: float = 120.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


@pytest.fixture
async def watching(tmp_path: Path) -> AsyncIterator[tuple[Path, list[str]]]:
    """A watched drop folder and what the watcher said, on four preview slots."""
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = Settings(
        output_path=tmp_path / "out",
        database_url=f"sqlite:///{tmp_path / 'bridge.db'}",
        backend="preview",
        max_concurrent_jobs=4,
    )
    runner = Runner(settings, detach=True)
    said: list[str] = []
    serving = asyncio.create_task(WatchFolder(drop, runner, settle=0.3, echo=said.append).serve())
    try:
        await until(lambda: any(line.startswith("watching ") for line in said), 30)
        yield drop, said
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        await runner.close()


def tiny_spec(i: int) -> str:
    return (
        f"version: 1\nproject: {{id: p{i:02d}}}\n"
        "defaults: {preset: draft, fps: 12, motion: core-smoke, duration: 2f}\n"
        "outputs: {report: false}\n"
        "scenes: [{id: a, shots: [{id: s01, params: {width: 64, height: 64}}]}]\n"
    )


async def test_watch_many_files_at_once(watching: tuple[Path, list[str]]) -> None:
    """Twelve files landing together, more than there are slots, every fourth one invalid:
    each is claimed once and filed in exactly one place, the runs sharing one runner and
    its database."""
    drop, said = watching
    count = 12
    names = [f"spec{i:02d}.yaml" for i in range(count)]
    for i, name in enumerate(names):
        text = tiny_spec(i)
        if i % 4 == 3:
            text = text.replace("version: 1", "version: 7")
        (drop / name).write_text(text)
    await until(lambda: all(outcome(drop, n) for n in names))
    assert {n: outcome(drop, n) for n in names} == {
        n: ["rejected"] if i % 4 == 3 else ["done"] for i, n in enumerate(names)
    }
    for name in names:
        assert said.count(f"running {name}") == (0 if outcome(drop, name) == ["rejected"] else 1)
    done = [n for n in names if outcome(drop, n) == ["done"]]
    manifests = {(drop / "done" / f"{n}.manifest.txt").read_text().strip() for n in done}
    assert len(manifests) == len(done) == 9
    assert all(Path(m).is_file() for m in manifests)
    assert list((drop / ".processing").iterdir()) == []
