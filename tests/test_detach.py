"""Issue 9 item 16: a watch daemon stopped by SIGTERM records its run and the run's
unfinished jobs as detached, the next start re-attaches to the prompts left on the server
(none posted twice), and the job totals /metrics reads count no ghost work."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bridge.db.store import Store
from bridge.states import UNFINISHED, JobState, RunState
from tests.conftest import process_env, smoke_spec
from tests.test_daemons import start_sim, stop_sim
from tests.test_front_doors import outcome, start, stop, wait_for
from tests.test_processes import sim_state

pytestmark = pytest.mark.slow


def test_watch_sigterm_detaches_then_the_next_start_resumes(tmp_path: Path) -> None:
    from tests.test_daemons import free_port

    port = free_port()
    sim = start_sim(port, job_seconds=1.5)
    url = f"http://127.0.0.1:{port}"
    drop = tmp_path / "drop"
    drop.mkdir()
    spec = tmp_path / "six.yaml"
    spec.write_text(smoke_spec("six", 6))
    env = process_env(tmp_path, COMFYUI_URL=url, MAX_CONCURRENT_JOBS="2")
    try:
        proc, _ = start(["watch", str(drop), "--settle", "0.2"], env)
        shutil.copy(spec, drop / "six.yaml")
        wait_for(lambda: len(sim_state(url)["posted"]) >= 2)
        stop(proc)  # SIGTERM: a clean exit

        store = Store(f"sqlite:///{tmp_path / 'out' / 'bridge.db'}")
        try:
            run = store.runs(limit=1)[0]
            assert run.status == RunState.DETACHED
            jobs = store.jobs(run.id or 0)
            states = {j.state for j in jobs}
            assert not states & {s.value for s in UNFINISHED}, states
            detached = [j for j in jobs if j.state == JobState.DETACHED]
            assert detached
            assert any(j.prompt_id for j in detached)  # a posted prompt, kept for re-attaching
            by_state, _ = store.job_totals()
            assert not set(by_state) & {s.value for s in UNFINISHED}, by_state
        finally:
            store.close()
        posted_before = sim_state(url)["posted"]

        proc, _ = start(["watch", str(drop), "--settle", "0.2"], env)
        try:
            wait_for(lambda: outcome(drop, "six.yaml") == ["done"], 120)
        finally:
            stop(proc)
        posted = sim_state(url)["posted"]
        assert len(posted) == len(set(posted)) == 6  # every shot once, none twice
        assert posted[: len(posted_before)] == posted_before
    finally:
        stop_sim(sim)
