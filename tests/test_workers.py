"""Workers on one PostgreSQL: real `bridge worker` processes, simulator processes as the
servers, `bridge submit` to hand them runs. Short jobs and a 2 s lease keep them fast."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.db.farm import SLOTS_FREED
from tests.conftest import PG_ADMIN, postgres_admin, postgres_url, process_env, simulator

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(300)]


@pytest.fixture
def sims() -> Iterator[Callable[..., list[str]]]:
    with contextlib.ExitStack() as stack:

        def start(count: int, job_seconds: float = 0.2, switch_seconds: float = 0.0) -> list[str]:
            args = ("--job-seconds", str(job_seconds), "--switch-seconds", str(switch_seconds))
            return [stack.enter_context(simulator(*args)) for _ in range(count)]

        yield start


class Farm:
    """Worker processes sharing one database, output folder and set of servers."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        log = (self.tmp_path / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "bridge", "worker", "--name", name],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def submit(self, spec: Path, *extra: str) -> int:
        """`bridge submit`: the run id it printed."""
        done = self.bridge("submit", str(spec), *extra)
        assert done.returncode == 0, done.stdout + done.stderr
        return int(done.stdout)

    def bridge(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bridge", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture
def farm_factory(tmp_path: Path, pg_url: str) -> Iterator[Callable[..., Farm]]:
    farms: list[Farm] = []

    def make(urls: list[str], **extra: str) -> Farm:
        env = process_env(
            tmp_path,
            DATABASE_URL=pg_url,
            COMFYUI_URL=",".join(urls),
            BRIDGE_LEASE_SECONDS="2",
            LOG_LEVEL="INFO",
            **extra,
        )
        farm = Farm(tmp_path, env)
        farms.append(farm)
        return farm

    yield make
    for farm in farms:
        farm.stop()


def sim_state(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_sim", timeout=5) as resp:
        return json.load(resp)


def db_rows(url: str, query: str, *params: object) -> list[tuple]:
    import psycopg

    with psycopg.connect(url) as conn:
        return list(conn.execute(query, params).fetchall())


def wait_run(url: str, run_id: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = db_rows(url, "SELECT status FROM runs WHERE id = %s", run_id)[0][0]
        if status != "running":
            return status
        time.sleep(0.3)
    stuck = db_rows(
        url,
        "SELECT j.job_id, j.state, j.worker_id, q.status, q.worker_id FROM jobs j LEFT JOIN "
        "procrastinate_jobs q ON q.args->>'job_id' = j.job_id AND (q.args->>'run_id')::int = "
        "j.run_id WHERE j.run_id = %s AND j.state NOT IN ('succeeded', 'failed', 'skipped')",
        run_id,
    )
    raise AssertionError(f"run {run_id} still running after {timeout} s: {stuck}")


def wait_on_servers(url: str, run_id: int, count: int) -> None:
    """Until `count` of the run's jobs are on a server (submitted or running)."""
    query = "SELECT count(*) FROM jobs WHERE run_id = %s AND state IN ('submitted', 'running')"
    while db_rows(url, query, run_id)[0][0] < count:
        time.sleep(0.05)


def wait_first_success(url: str, run_id: int) -> None:
    """Until one of the run's jobs succeeded: the farm is busy with it."""
    while not db_rows(url, "SELECT 1 FROM jobs WHERE run_id = %s AND state = 'succeeded'", run_id):
        time.sleep(0.2)


def start_png(tmp_path: Path) -> None:
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=64x48", "-frames:v", "1"),
            str(tmp_path / "start.png"),
        ],
        check=True,
    )


def chain_spec(tmp_path: Path, scenes: int = 10) -> Path:
    """Per scene: three shots chained by continue_from (3 renders, 2 last-frame jobs, one
    assembly), and the project's assembly: 6 × scenes + 1 jobs."""
    start_png(tmp_path)
    lines = [
        "version: 1",
        "project: {id: farm, title: Farm}",
        "defaults: {preset: draft, fps: 16, motion: wan-i2v, duration: 8f}",
        "scenes:",
    ]
    for n in range(scenes):
        lines += [
            f"  - id: c{n:02d}",
            "    shots:",
            f"      - {{id: s01, start_image: start.png, action: 'walks {n}',"
            " params: {width: 64, height: 64}}",
            f"      - {{id: s02, continue_from: s01, action: 'turns {n}',"
            " params: {width: 64, height: 64}}",
            f"      - {{id: s03, continue_from: s02, action: 'waves {n}',"
            " params: {width: 64, height: 64}}",
        ]
    path = tmp_path / "farm.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def flat_spec(tmp_path: Path, shots: int, project: str, priority: str | None = None) -> Path:
    """`shots` independent core-smoke shots, no assembly: one job each."""
    lines = [
        "version: 1",
        f"project: {{id: {project}, title: {project}}}",
        *([f"priority: {priority}"] if priority else []),
        "defaults: {preset: draft, fps: 8, motion: core-smoke, duration: 4f}",
        "outputs: {assemble: false, report: false}",
        "scenes:",
        "  - id: all",
        "    shots:",
    ]
    lines += [
        f"      - {{id: s{i:03d}, action: 'shot {i}', params: {{width: 64, height: 64}}}}"
        for i in range(shots)
    ]
    path = tmp_path / f"{project}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_kill_9_workers_at_random_loses_and_duplicates_nothing(
    tmp_path: Path, sims: Callable[..., list[str]], farm_factory: Callable[..., Farm], pg_url: str
) -> None:
    urls = sims(3, job_seconds=0.3)
    farm = farm_factory(urls, BRIDGE_WORKER_JOBS="3", MAX_CONCURRENT_JOBS="6")
    names = ["w1", "w2", "w3"]
    for name in names:
        farm.start(name)
    spec = chain_spec(tmp_path)
    run_id = farm.submit(spec)
    rng = random.Random(13)
    for _ in range(5):
        time.sleep(rng.uniform(0.5, 2.5))
        victim = rng.choice(names)
        farm.kill(victim)
        farm.start(victim)
    assert wait_run(pg_url, run_id, timeout=150) == "succeeded"

    jobs = db_rows(pg_url, "SELECT job_id, state, prompt_id FROM jobs WHERE run_id = %s", run_id)
    assert len(jobs) == 61
    assert {state for _, state, _ in jobs} == {"succeeded"}
    posted = [p for url in urls for p in sim_state(url)["posted"]]
    assert len(posted) == len(set(posted)), "a prompt_id was posted twice"
    renders = {p for job, _, p in jobs if job.startswith("render:")}
    assert set(posted) == renders  # every render's final prompt, and nothing else
    assets = db_rows(pg_url, "SELECT job_id FROM generated_assets WHERE run_id = %s", run_id)
    assert sorted(job for (job,) in assets) == sorted(job for job, _, _ in jobs)  # one each
    manifest = json.loads((tmp_path / "out" / "farm" / "manifest.json").read_text())
    assert manifest["run"]["status"] == "succeeded"
    for job in manifest["jobs"]:
        assert job["outputs"], job["id"]
        assert (tmp_path / "out" / "farm" / job["outputs"][0]["path"]).is_file()
    takeovers = db_rows(
        pg_url,
        "SELECT count(*) FROM events WHERE kind = 'job_claimed' AND data::text LIKE '%%\"took_over\": true%%'",
    )
    assert takeovers[0][0] >= 1, "no job was ever taken over from a killed worker"


def test_server_limits_hold_across_four_workers(
    tmp_path: Path, sims: Callable[..., list[str]], farm_factory: Callable[..., Farm], pg_url: str
) -> None:
    urls = sims(2, job_seconds=0.2)
    farm = farm_factory(urls, BRIDGE_WORKER_JOBS="4", MAX_CONCURRENT_JOBS="4")  # 2 per server
    for name in ("w1", "w2", "w3", "w4"):
        farm.start(name)
    done = farm.bridge("submit", str(flat_spec(tmp_path, 24, "limits")), "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    loads = [sim_state(url)["max_load"] for url in urls]
    assert max(loads) <= 2, loads
    assert sum(len(sim_state(url)["posted"]) for url in urls) == 24
    # each waited for freed slots by LISTENing, not by polling the slots (bridge.slots)
    listening = db_rows(
        pg_url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND position(%s IN query) = 1",
        f"LISTEN {SLOTS_FREED};",
    )
    assert listening == [(4,)]


def test_a_high_run_overtakes_a_long_normal_run(
    tmp_path: Path, sims: Callable[..., list[str]], farm_factory: Callable[..., Farm], pg_url: str
) -> None:
    urls = sims(2, job_seconds=0.1)
    farm = farm_factory(urls, BRIDGE_WORKER_JOBS="2", MAX_CONCURRENT_JOBS="2")
    for name in ("w1", "w2"):
        farm.start(name)
    normal_id = farm.submit(flat_spec(tmp_path, 200, "long"))
    wait_first_success(pg_url, normal_id)
    high_id = farm.submit(flat_spec(tmp_path, 3, "urgent"), "--priority", "high")
    submitted = db_rows(pg_url, "SELECT started_at FROM runs WHERE id = %s", high_id)[0][0]
    assert wait_run(pg_url, high_id, timeout=60) == "succeeded"
    first = db_rows(pg_url, "SELECT min(started_at) FROM jobs WHERE run_id = %s", high_id)[0][0]
    overtaken = db_rows(
        pg_url,
        "SELECT count(*) FROM jobs WHERE run_id = %s AND started_at > %s AND started_at < %s",
        normal_id,
        submitted,
        first,
    )[0][0]
    # at most the jobs the two workers already held when it arrived start before it
    assert overtaken <= 4, overtaken
    remaining = db_rows(
        pg_url, "SELECT count(*) FROM jobs WHERE run_id = %s AND state = 'pending'", normal_id
    )[0][0]
    assert remaining > 0, "the normal run ended first: the test proved nothing"


def test_a_job_held_by_a_live_worker_waits_for_it_instead_of_being_dropped(
    tmp_path: Path, sims: Callable[..., list[str]], farm_factory: Callable[..., Farm], pg_url: str
) -> None:
    """A queue entry whose job another live worker holds (that worker's own try may have
    failed) is looked at again after a lease; when the holder dies, it is taken over."""
    import psycopg

    urls = sims(1, job_seconds=0.1)
    farm = farm_factory(urls)
    farm.env["BRIDGE_LEASE_SECONDS"] = "5"  # room for a loaded machine's late heartbeats
    run_id = farm.submit(flat_spec(tmp_path, 2, "held"))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        ghost = conn.execute(
            "INSERT INTO procrastinate_workers DEFAULT VALUES RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "UPDATE jobs SET worker_id = %s WHERE run_id = %s AND job_id LIKE '%%s000'",
            (ghost, run_id),
        )
        farm.start("w1")
        beating_until = time.monotonic() + 12  # the ghost looks alive for 2.4 leases, then dies
        while time.monotonic() < beating_until:
            conn.execute(
                "UPDATE procrastinate_workers SET last_heartbeat = now() WHERE id = %s", (ghost,)
            )
            time.sleep(0.2)
    held = db_rows(pg_url, "SELECT state FROM jobs WHERE run_id = %s ORDER BY job_id", run_id)
    assert [s for (s,) in held] == ["pending", "succeeded"]  # untouched while its holder lived
    assert wait_run(pg_url, run_id, timeout=60) == "succeeded"
    claims = db_rows(
        pg_url,
        "SELECT job_id, data::text FROM events WHERE run_id = %s AND kind = 'job_claimed'",
        run_id,
    )
    assert any(job.endswith("s000") and '"took_over": true' in data for job, data in claims)


def test_a_worker_stopped_mid_job_finishes_it_first(
    tmp_path: Path, sims: Callable[..., list[str]], farm_factory: Callable[..., Farm], pg_url: str
) -> None:
    """SIGTERM (systemctl stop, a deploy) stops claiming; the job in hand is finished under
    a lease kept alive meanwhile, not taken over by another worker."""
    urls = sims(1, job_seconds=1.5)
    farm = farm_factory(urls, BRIDGE_WORKER_JOBS="1", MAX_CONCURRENT_JOBS="2")
    farm.start("w1")
    farm.start("w2")
    run_id = farm.submit(flat_spec(tmp_path, 4, "stopped"))
    wait_on_servers(pg_url, run_id, 2)
    farm.procs["w1"].send_signal(signal.SIGTERM)
    assert farm.procs["w1"].wait(timeout=30) == 0
    assert wait_run(pg_url, run_id, timeout=60) == "succeeded"
    states = db_rows(pg_url, "SELECT state FROM jobs WHERE run_id = %s", run_id)
    assert {s for (s,) in states} == {"succeeded"}
    posted = sim_state(urls[0])["posted"]
    assert len(posted) == len(set(posted)) == 4, posted
    claims = db_rows(
        pg_url, "SELECT data::text FROM events WHERE run_id = %s AND kind = 'job_claimed'", run_id
    )
    assert not [c for (c,) in claims if '"took_over": true' in c], "w1 finished its job itself"
    assert "missed its lease" not in (tmp_path / "w1.log").read_text()


def test_a_worker_signalled_twice_stops_at_once_and_its_jobs_go_on(
    tmp_path: Path, sims: Callable[..., list[str]], farm_factory: Callable[..., Farm], pg_url: str
) -> None:
    """A second SIGTERM or Ctrl-C while it finishes its jobs in hand: it stops as kill -9
    would, with one line and no traceback, and another worker takes its jobs over."""
    urls = sims(1, job_seconds=1.5)
    farm = farm_factory(urls, MAX_CONCURRENT_JOBS="2")
    farm.start("w1")
    run_id = farm.submit(flat_spec(tmp_path, 4, "twice"))
    wait_on_servers(pg_url, run_id, 2)
    farm.procs["w1"].send_signal(signal.SIGTERM)
    time.sleep(0.3)
    farm.procs["w1"].send_signal(signal.SIGTERM)
    assert farm.procs["w1"].wait(timeout=10) == 1
    log = (tmp_path / "w1.log").read_text()
    assert "worker stopped at once: its jobs in hand go to other workers" in log
    assert "Traceback" not in log, log
    farm.start("w2")
    assert wait_run(pg_url, run_id, timeout=60) == "succeeded"
    posted = sim_state(urls[0])["posted"]
    assert len(posted) == len(set(posted)) == 4, posted


def test_a_run_whose_spec_changed_after_submit_fails_with_the_reason(
    tmp_path: Path, farm_factory: Callable[..., Farm], pg_url: str
) -> None:
    farm = farm_factory([], BRIDGE_BACKEND="preview")
    farm.env.pop("COMFYUI_URL")
    spec = flat_spec(tmp_path, 2, "edited")
    run_id = farm.submit(spec)
    spec.write_text(spec.read_text().replace("shot 1", "shot one"))
    farm.start("w1")
    assert wait_run(pg_url, run_id, timeout=60) == "failed"
    states = db_rows(pg_url, "SELECT state, error FROM jobs WHERE run_id = %s", run_id)
    assert {state for state, _ in states} == {"failed"}
    assert all("changed since run" in error and "submit it again" in error for _, error in states)
    followed = farm.bridge("status", str(run_id), "--wait")
    assert followed.returncode != 0, followed.stdout
    assert "Traceback" not in followed.stderr, followed.stderr


def test_workers_that_lose_the_database_carry_on_when_it_is_back(
    tmp_path: Path, sims: Callable[..., list[str]], farm_factory: Callable[..., Farm], pg_url: str
) -> None:
    urls = sims(2, job_seconds=0.2)
    farm = farm_factory(urls, BRIDGE_WORKER_JOBS="2", MAX_CONCURRENT_JOBS="2")
    for name in ("w1", "w2"):
        farm.start(name)
    run_id = farm.submit(flat_spec(tmp_path, 30, "outage"))
    wait_first_success(pg_url, run_id)
    name = pg_url.rsplit("/", 1)[1]
    for _ in range(2):  # every connection of every worker is cut, twice
        db_rows(
            PG_ADMIN,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            name,
        )
        time.sleep(1.0)
    state = wait_run(pg_url, run_id, timeout=120)
    unfinished = db_rows(
        pg_url,
        "SELECT job_id, state, error FROM jobs WHERE run_id = %s AND state <> 'succeeded'",
        run_id,
    )
    assert state == "succeeded", unfinished
    assert all(p.poll() is None for p in farm.procs.values()), "a worker exited"
    posted = [p for url in urls for p in sim_state(url)["posted"]]
    assert len(posted) == len(set(posted)) == 30


def test_a_worker_started_before_its_database_waits_for_it(
    tmp_path: Path, sims: Callable[..., list[str]]
) -> None:
    name = f"bridge_test_{uuid.uuid4().hex[:12]}"  # not created yet
    url = postgres_url(name)
    env = process_env(
        tmp_path,
        DATABASE_URL=url,
        COMFYUI_URL=sims(1)[0],
        BRIDGE_LEASE_SECONDS="2",
        LOG_LEVEL="INFO",
    )
    farm = Farm(tmp_path, env)
    farm.start("early")
    with postgres_admin() as admin:
        try:
            time.sleep(3)
            assert farm.procs["early"].poll() is None, (tmp_path / "early.log").read_text()
            log = (tmp_path / "early.log").read_text()
            assert "waiting for the database before taking jobs" in log
            assert f"database postgresql://***@127.0.0.1:5432/{name} is unavailable" in log
            admin.execute(f'CREATE DATABASE "{name}"')
            run_id = farm.submit(flat_spec(tmp_path, 3, "early"))
            assert wait_run(url, run_id, timeout=60) == "succeeded"
        finally:
            farm.stop()
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_run_waits_while_its_spec_cannot_be_read(
    tmp_path: Path, sims: Callable[..., list[str]], farm_factory: Callable[..., Farm], pg_url: str
) -> None:
    farm = farm_factory(sims(1))
    spec = flat_spec(tmp_path, 3, "nfs")
    run_id = farm.submit(spec)
    kept = spec.read_bytes()
    spec.unlink()
    spec.symlink_to("/proc/self/mem")  # reads fail with EIO, as on a soft NFS mount that is away
    farm.start("w1")
    time.sleep(4)
    assert db_rows(pg_url, "SELECT status FROM runs WHERE id = %s", run_id) == [("running",)]
    assert "cannot read its spec" in (tmp_path / "w1.log").read_text()
    spec.unlink()
    spec.write_bytes(kept)
    assert wait_run(pg_url, run_id, timeout=60) == "succeeded"


def preview_farm_watching(tmp_path: Path, farm_factory: Callable[..., Farm]) -> tuple[Farm, Path]:
    """BRIDGE_WORKERS=1 on the preview backend: one worker started, and an inbox folder."""
    farm = farm_factory([], BRIDGE_BACKEND="preview", BRIDGE_WORKERS="1")
    farm.env.pop("COMFYUI_URL")
    farm.start("w1")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    return farm, inbox


def filed_run(inbox: Path, name: str) -> int:
    """The run id the watch folder filed `name` under in done/, once it has."""
    note = inbox / "done" / f"{name}.manifest.txt"
    deadline = time.monotonic() + 90
    while not note.exists():
        assert time.monotonic() < deadline, sorted(p.name for p in inbox.rglob("*"))
        time.sleep(0.2)
    return int(note.read_text().split("run ")[1])


def test_watch_folder_and_api_submit_to_the_workers(
    tmp_path: Path, farm_factory: Callable[..., Farm], pg_url: str
) -> None:
    """BRIDGE_WORKERS=1: neither front door renders; the worker does (preview backend)."""
    from tests.test_front_doors import call, start, stop

    farm, inbox = preview_farm_watching(tmp_path, farm_factory)
    watch, _ = start(["watch", str(inbox)], farm.env)
    serve, listening = start(["serve", "--port", "0"], farm.env)
    try:
        url = listening.removeprefix("listening on ")
        status, body = call(
            f"{url}/api/specs", "POST", flat_spec(tmp_path, 3, "posted", "high").read_bytes()
        )
        assert status == 202, body
        posted = body["run_id"]  # type: ignore[index]
        (inbox / "dropped.yaml").write_bytes(flat_spec(tmp_path, 2, "dropped").read_bytes())
        dropped = filed_run(inbox, "dropped.yaml")
        for run_id in (posted, dropped):
            assert wait_run(pg_url, run_id, timeout=90) == "succeeded"
        priority = db_rows(pg_url, "SELECT priority FROM runs WHERE id = %s", posted)[0][0]
        assert priority == 10  # the posted spec's `priority: high`
        deadline = time.monotonic() + 30  # the API's probe (every 2 s) on a busy host
        while True:
            health = call(f"{url}/api/health", token=None)[1]
            metrics = str(call(f"{url}/metrics", token=None)[1])
            if "bridge_job_claims_total 5.0" in metrics or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert [w["name"] for w in health["workers"]] == ["w1"]  # type: ignore[index]
        assert "bridge_job_claims_total 5.0" in metrics
    finally:
        stop(serve)
        stop(watch)


def test_the_watch_folder_submits_to_a_database_no_worker_has_opened_yet(
    tmp_path: Path, farm_factory: Callable[..., Farm], pg_url: str
) -> None:
    """The watch folder brings the schema up itself before it submits, as a run would:
    a worker starting beside it may not have made the tables yet."""
    from tests.test_front_doors import start, stop

    farm = farm_factory([], BRIDGE_BACKEND="preview", BRIDGE_WORKERS="1")
    farm.env.pop("COMFYUI_URL")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    watch, _ = start(["watch", str(inbox)], farm.env)
    try:
        (inbox / "early.yaml").write_bytes(flat_spec(tmp_path, 2, "early").read_bytes())
        run_id = filed_run(inbox, "early.yaml")
        assert db_rows(pg_url, "SELECT status FROM runs WHERE id = %s", run_id) == [("running",)]
        farm.start("w1")
        assert wait_run(pg_url, run_id, timeout=90) == "succeeded"
    finally:
        stop(watch)


def test_a_directed_spec_dropped_in_the_watch_folder_renders_on_the_workers(
    tmp_path: Path, farm_factory: Callable[..., Farm], pg_url: str
) -> None:
    """The watch folder directs the spec (rules: no LLM here), then submits it: the workers
    read the kept copy, and the direction it was submitted with travels with it."""
    from tests.test_front_doors import start, stop

    farm, inbox = preview_farm_watching(tmp_path, farm_factory)
    watch, _ = start(["watch", str(inbox)], farm.env)
    try:
        (inbox / "auto.yaml").write_bytes((ROOT / "specs" / "autonomous.yaml").read_bytes())
        run_id = filed_run(inbox, "auto.yaml")
        assert wait_run(pg_url, run_id, timeout=90) == "succeeded"
        renders = db_rows(
            pg_url,
            "SELECT count(*) FROM jobs WHERE run_id = %s AND job_id LIKE 'render:%%'",
            run_id,
        )[0][0]
        assert renders > 0
    finally:
        stop(watch)


def test_runs_of_equal_priority_take_turns(
    tmp_path: Path, sims: Callable[..., list[str]], farm_factory: Callable[..., Farm], pg_url: str
) -> None:
    urls = sims(2, job_seconds=0.1)
    farm = farm_factory(urls, BRIDGE_WORKER_JOBS="2", MAX_CONCURRENT_JOBS="2")
    first = farm.submit(flat_spec(tmp_path, 20, "first"))
    second = farm.submit(flat_spec(tmp_path, 20, "second"))
    farm.start("w1")  # both runs wait in the queue before anyone takes a job
    for run_id in (first, second):
        assert wait_run(pg_url, run_id, timeout=120) == "succeeded"
    order = [
        r[0]
        for r in db_rows(
            pg_url,
            "SELECT run_id FROM jobs WHERE run_id IN (%s, %s) ORDER BY started_at",
            first,
            second,
        )
    ]
    assert order[:10].count(first) in range(3, 8), order[:10]  # not the whole first run first
