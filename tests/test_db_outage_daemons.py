"""Issue 9 item 14, the daemons: `bridge serve` and `bridge watch` start while PostgreSQL
is down, say so once per change (no traceback), refuse or hold work meanwhile, and carry on
when it is back. The outage is the fault proxy (tests/sim/proxy.py) in front of the real
PostgreSQL, as a process, stopped and started again on the same port."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import process_env, smoke_spec
from tests.test_daemons import free_port
from tests.test_front_doors import ROOT, call, outcome, start, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
SMOKE = ROOT / "specs" / "smoke.yaml"


class PgProxy:
    """The proxy process in front of PostgreSQL: up() and down() on one port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def up(self) -> None:
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "tests.sim.proxy"),
                *("--target", "http://127.0.0.1:5432", "--port", str(self.port)),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().startswith("listening on ")

    def down(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def pg_proxy() -> PgProxy:
    proxy = PgProxy()
    yield proxy
    proxy.down()


def finish(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    print(out, err)
    assert proc.returncode == 0, err
    return err


def outage_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "database" in line and " is " in line]


def test_serve_starts_without_its_database_refuses_work_then_carries_on(
    tmp_path: Path,
    pg_name: str,
    pg_proxy: PgProxy,
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{pg_proxy.port}/{pg_name}"
    env = process_env(tmp_path, BRIDGE_BACKEND="preview", DATABASE_URL=url)
    proc, first = start(["serve", "--port", "0"], env)
    assert first.startswith("listening on "), first
    api = first.removeprefix("listening on ")
    try:
        status, health = call(f"{api}/api/health", token=None)
        assert (status, health["status"]) == (503, "degraded")
        assert health["dependencies"]["database"]["up"] is False
        status, body = call(f"{api}/api/specs", "POST", SMOKE.read_bytes(), token=None)
        assert status == 503, body
        assert "nothing was accepted" in body["error"]
        assert call(f"{api}/api/jobs", token=None)[0] == 503

        pg_proxy.up()
        wait_for(lambda: call(f"{api}/api/health", token=None)[0] == 200, 60)
        status, body = call(f"{api}/api/specs", "POST", SMOKE.read_bytes(), token=None)
        assert status == 202, body
        run = body["run_id"]
        wait_for(lambda: call(f"{api}/api/status/{run}", token=None)[1]["status"] != "running")
        assert call(f"{api}/api/status/{run}", token=None)[1]["status"] == "succeeded"

        pg_proxy.down()
        wait_for(lambda: call(f"{api}/api/health", token=None)[0] == 503, 60)
        assert call(f"{api}/api/status/{run}", token=None)[0] == 503
        pg_proxy.up()
        wait_for(lambda: call(f"{api}/api/health", token=None)[0] == 200, 60)
        assert call(f"{api}/api/status/{run}", token=None)[1]["status"] == "succeeded"
    finally:
        err = finish(proc)
    assert "Traceback" not in err
    states = [line.split(" is ", 1)[1].split(" (")[0] for line in outage_lines(err)]
    assert states == ["unavailable", "available again", "unavailable", "available again"], err


def test_watch_holds_a_dropped_spec_until_its_database_is_back(
    tmp_path: Path,
    pg_name: str,
    pg_proxy: PgProxy,
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{pg_proxy.port}/{pg_name}"
    env = process_env(tmp_path, BRIDGE_BACKEND="preview", DATABASE_URL=url)
    drop = tmp_path / "drop"
    drop.mkdir()
    proc, _ = start(["watch", str(drop), "--settle", "0.2"], env)
    try:
        shutil.copy(SMOKE, drop / "smoke.yaml")
        wait_for(lambda: (drop / ".waiting" / "smoke.yaml").exists())
        assert (drop / ".processing" / "smoke.yaml").exists()  # claimed, not lost
        assert outcome(drop, "smoke.yaml") == []
        pg_proxy.up()
        wait_for(lambda: outcome(drop, "smoke.yaml") == ["done"], 120)
        assert not (drop / ".waiting" / "smoke.yaml").exists()
    finally:
        err = finish(proc)
    assert "Traceback" not in err
    states = [line.split(" is ", 1)[1].split(" (")[0] for line in outage_lines(err)]
    assert states == ["unavailable", "available again"], err


def test_watch_run_outlives_the_database_going_away_mid_run(
    tmp_path: Path,
    pg_name: str,
    pg_proxy: PgProxy,
) -> None:
    """The database goes away while a spec renders: the daemon says so once, waits, and
    runs the spec again once it is back; the spec ends done and no prompt is posted twice."""
    import psycopg

    from tests.test_daemons import start_sim, stop_sim
    from tests.test_processes import sim_state

    port = free_port()
    sim = start_sim(port, job_seconds=1.0)
    comfy = f"http://127.0.0.1:{port}"
    url = f"postgresql://postgres@127.0.0.1:{pg_proxy.port}/{pg_name}"
    env = process_env(tmp_path, COMFYUI_URL=comfy, DATABASE_URL=url, MAX_CONCURRENT_JOBS="1")
    spec = tmp_path / "six.yaml"
    spec.write_text(smoke_spec("six", 6))
    drop = tmp_path / "drop"
    drop.mkdir()
    pg_proxy.up()
    with (tmp_path / "err").open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "watch", str(drop), "--settle", "0.2"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        shutil.copy(spec, drop / "six.yaml")
        wait_for(lambda: len(sim_state(comfy)["posted"]) >= 2)
        pg_proxy.down()
        wait_for(lambda: "the database went away" in (tmp_path / "err").read_text(), 60)
        pg_proxy.up()
        wait_for(lambda: outcome(drop, "six.yaml") == ["done"], 120)
    finally:
        finish(proc)
        err = (tmp_path / "err").read_text()
        posted = sim_state(comfy)["posted"]
        stop_sim(sim)
    assert "Traceback" not in err
    assert err.count("the database went away during run") == 1, err
    assert len(posted) == len(set(posted)) == 6, posted
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{pg_name}") as conn:
        statuses = [r[0] for r in conn.execute("SELECT status FROM runs ORDER BY id")]
    assert statuses[-1] == "succeeded"
    assert "running" not in statuses, statuses


def test_serve_run_outlives_the_database_and_the_old_handler_hears_its_id(
    tmp_path: Path,
    pg_name: str,
    pg_proxy: PgProxy,
) -> None:
    """A run the API accepted loses its database mid-run: it runs again once it is back,
    /api/status under the answered id follows it, and the old webhook handler hears
    `completed` with that id."""
    import urllib.parse

    from tests.test_daemons import start_sim, stop_sim
    from tests.test_processes import sim_state
    from tests.test_webhook_compat import OldHandler, Receiver

    port = free_port()
    sim = start_sim(port, job_seconds=1.0)
    comfy = f"http://127.0.0.1:{port}"
    url = f"postgresql://postgres@127.0.0.1:{pg_proxy.port}/{pg_name}"
    env = process_env(tmp_path, COMFYUI_URL=comfy, DATABASE_URL=url, MAX_CONCURRENT_JOBS="1")
    handler = OldHandler()
    receiver = Receiver(handler)
    pg_proxy.up()
    with (tmp_path / "err").open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve", "--port", "0"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        assert proc.stdout is not None
        api = proc.stdout.readline().strip().removeprefix("listening on ")
        spec = smoke_spec("six", 6)
        hook = urllib.parse.quote(receiver.url, safe="")
        status, body = call(
            f"{api}/api/specs?notify_webhook={hook}", "POST", spec.encode(), token=None
        )
        assert status == 202, body
        answered = body["job_id"]
        wait_for(lambda: len(sim_state(comfy)["posted"]) >= 2)
        pg_proxy.down()
        wait_for(lambda: "the database went away" in (tmp_path / "err").read_text(), 60)
        pg_proxy.up()
        wait_for(lambda: bool(receiver.bodies), 120)
        _, view = call(f"{api}/api/status/{answered}", token=None)
    finally:
        finish(proc)
        receiver.close()
        stop_sim(sim)
    assert handler.succeeded == [answered], receiver.bodies
    assert view["job_id"] == answered
    assert view["status"] == "succeeded"
    assert view["continued_as"] != answered
    assert "Traceback" not in (tmp_path / "err").read_text()
