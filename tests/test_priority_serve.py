"""A high-priority run posted behind a long normal one gets the next freed slot: a real
`bridge serve` sharing one ComfyUI simulator slot between two projects."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.db.store import Store
from tests.conftest import process_env
from tests.test_daemons import free_port, start_sim, stop_sim
from tests.test_front_doors import call, start, stop, wait_for
from tests.test_processes import sim_state

pytestmark = pytest.mark.slow


def spec(project: str, shots: int, priority: str) -> bytes:
    lines = "\n".join(f"      - {{id: s{i:02d}, action: shot {i}}}" for i in range(shots))
    return (
        f"version: 1\nproject: {{id: {project}}}\npriority: {priority}\n"
        "defaults: {preset: draft, fps: 12, motion: core-smoke, duration: 1s}\n"
        f"outputs: {{assemble: false, report: false}}\nscenes:\n  - id: a\n    shots:\n{lines}\n"
    ).encode()


def test_an_urgent_run_takes_the_next_free_slot(tmp_path: Path) -> None:
    """Three normal runs keep several leases waiting for the one slot; an urgent run
    posted then goes before all of them (first-come it would wait behind them all)."""
    port = free_port()
    sim = start_sim(port, job_seconds=0.5)
    url = f"http://127.0.0.1:{port}"
    env = process_env(tmp_path, COMFYUI_URL=url, MAX_CONCURRENT_JOBS="1")
    proc, first = start(["serve", "--port", "0"], env)
    api = first.removeprefix("listening on ")
    runs: dict[str, int] = {}
    try:
        for name in ("long1", "long2", "long3"):
            status, body = call(f"{api}/api/specs", "POST", spec(name, 6, "normal"), token=None)
            assert status == 202, body
            runs[name] = body["run_id"]
        wait_for(lambda: len(sim_state(url)["posted"]) >= 3)
        status, body = call(f"{api}/api/specs", "POST", spec("rush", 2, "urgent"), token=None)
        assert status == 202, body
        posted_before = len(sim_state(url)["posted"])
        runs["rush"] = body["run_id"]
        for run_id in runs.values():
            wait_for(
                lambda run_id=run_id: (
                    call(f"{api}/api/status/{run_id}", token=None)[1]["status"] != "running"
                ),
                120,
            )
    finally:
        stop(proc)
        posted = sim_state(url)["posted"]
        stop_sim(sim)
    store = Store(f"sqlite:///{tmp_path / 'out' / 'bridge.db'}")
    try:
        owner = {
            j.prompt_id: name
            for name, run_id in runs.items()
            for j in store.jobs(run_id)
            if j.prompt_id
        }
    finally:
        store.close()
    order = [owner[p] for p in posted]
    assert order.count("rush") == 2
    first_rush = order.index("rush")
    assert order[first_rush + 1] == "rush"
    # At most the prompt whose slot freed while the urgent run was starting went first.
    assert first_rush - posted_before <= 1, order
