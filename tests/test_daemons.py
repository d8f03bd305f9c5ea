"""Issue 9: the watch daemon and the REST API under hostile files, big specs, dead
dependencies and concurrent clients, as real processes (bridge, the ComfyUI simulator)."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import process_env
from tests.test_front_doors import ROOT, call, outcome, start, stop, wait_for

pytestmark = pytest.mark.slow
START_PNG = ROOT / "tests" / "cases" / "bad" / "files" / "start.png"
SMOKE = ROOT / "specs" / "smoke.yaml"
# One 2-frame shot: what the watch tests are about is which files are taken, not rendering.
TINY = (
    "version: 1\nproject: {id: tiny}\n"
    "defaults: {preset: draft, fps: 12, motion: core-smoke, duration: 2f}\n"
    "outputs: {report: false}\n"
    "scenes: [{id: a, shots: [{id: s01, params: {width: 64, height: 64}}]}]\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sim(port: int, job_seconds: float = 0.2) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.sim.comfyui"),
            *("--port", str(port), "--job-seconds", str(job_seconds)),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("listening on ")
    return proc


def stop_sim(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)


@pytest.fixture
def sim_port() -> Iterator[tuple[int, list[subprocess.Popen]]]:
    """A port for a simulator the test starts when it wants; stopped at the end."""
    procs: list[subprocess.Popen] = []
    yield free_port(), procs
    for proc in procs:
        if proc.poll() is None:
            stop_sim(proc)


# -- the watch folder --------------------------------------------------------------------


def test_watch_takes_only_complete_regular_files(tmp_path: Path) -> None:
    """Items 1-5: devices, FIFOs, sockets, directories and outside symlinks are left alone;
    a spec that killed the daemon twice is failed; a slowly written spec runs once; a
    renamed-in symlink target inside DIR runs; relative paths resolve against DIR."""
    drop = tmp_path / "drop"
    (drop / ".processing").mkdir(parents=True)
    (drop / "src").mkdir()
    # Left behind by two starts that died with it, and by one that died once.
    (drop / ".processing" / "killer.yaml").write_text(TINY)
    (drop / ".processing" / ".killer.yaml.tries").write_text("2")
    (drop / ".processing" / "again.yaml").write_text(TINY)
    (drop / ".processing" / ".again.yaml.tries").write_text("1")
    os.symlink("/dev/zero", drop / "zero.yaml")
    os.symlink("/etc/passwd", drop / "passwd.yaml")
    os.mkfifo(drop / "fifo.yaml")
    (drop / "dir.yaml").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(drop / "sock.yaml"))
    (drop / "src" / "inside.txt").write_text(TINY.replace("id: tiny", "id: linked"))
    os.symlink("src/inside.txt", drop / "linked.yaml")
    (drop / "start.png").write_bytes(START_PNG.read_bytes())
    (drop / "rel.yaml").write_text(
        "version: 1\nproject: {id: relproj}\ndefaults: {preset: draft, fps: 12, duration: 1s}\n"
        "scenes:\n  - id: a\n    shots: [{id: s01, action: x, start_image: start.png}]\n"
    )
    env = process_env(tmp_path, BRIDGE_BACKEND="preview")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "watch", str(drop), "--settle", "1.0"],
        cwd=tmp_path,  # not the drop folder: relative paths must not depend on the cwd
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.umask(0o077),
    )
    try:
        os.mkfifo(drop / "live-fifo.yaml")  # live as well as at start
        # Appended line by line, 0.3 s apart, each append closing the file.
        lines = TINY.splitlines(keepends=True)
        for line in lines:
            with (drop / "slow.yaml").open("a") as fh:
                fh.write(line.replace("id: tiny", "id: slow"))
            time.sleep(0.3 if line.strip() else 0)
        (drop / "bad.yaml").write_text("version: 1\nproject: {id: 'no way'}\n")
        # The documented atomic way: written under a skipped name, then renamed in.
        (drop / ".moved.yaml").write_text(TINY.replace("id: tiny", "id: moved"))
        os.rename(drop / ".moved.yaml", drop / "moved.yaml")
        for name, where in [
            ("killer.yaml", "failed"),
            ("again.yaml", "done"),
            ("linked.yaml", "done"),
            ("rel.yaml", "done"),
            ("slow.yaml", "done"),
            ("bad.yaml", "rejected"),
            ("moved.yaml", "done"),
        ]:
            wait_for(lambda n=name: outcome(drop, n) != [], 120)
            assert outcome(drop, name) == [where], name
    finally:
        out = stop(proc)
        sock.close()
    assert "died with it 2 times" in out
    assert out.count("running slow.yaml") == 1  # claimed once, complete
    assert out.count("running moved.yaml") == 1
    for name in ("zero.yaml", "passwd.yaml", "fifo.yaml", "dir.yaml", "sock.yaml"):
        assert out.count(f"ignoring {name}:") == 1, name
        assert os.path.lexists(drop / name), name  # left where it was
    assert out.count("ignoring live-fifo.yaml:") == 1
    assert stat.S_ISFIFO(os.lstat(drop / "fifo.yaml").st_mode)
    errors = drop / "rejected" / "bad.yaml.errors.txt"
    assert stat.S_IMODE(errors.stat().st_mode) & 0o077 == 0  # the daemon's umask
    assert not list((drop / ".processing").iterdir())  # no tries markers left behind
    # The database keeps the absolute path of a kept copy, and the folder it came from.
    import sqlite3

    db = sqlite3.connect(tmp_path / "out" / "bridge.db")
    query = "SELECT spec_file, spec_folder FROM projects WHERE id = 'relproj'"
    spec_file, folder = db.execute(query).fetchone()
    assert Path(spec_file).is_absolute()
    assert "start_image: start.png" in Path(spec_file).read_text()
    assert Path(folder) == drop.resolve()


def test_watch_waits_for_a_server_then_gives_up_after_the_limit(
    tmp_path: Path, sim_port: tuple[int, list[subprocess.Popen]]
) -> None:
    """Item 6: a spec dropped while no ComfyUI answers waits, visibly, and runs when one
    comes back; with a short BRIDGE_WAIT_FOR_SERVER it ends in failed/ with the reason."""
    port, sims = sim_port
    drop = tmp_path / "drop"
    drop.mkdir()
    url = f"http://127.0.0.1:{port}"
    env = process_env(tmp_path, COMFYUI_URL=url)
    proc, first = start(["watch", str(drop), "--settle", "0.2"], env)
    try:
        assert first.startswith("watching")
        (drop / "later.yaml").write_text(TINY)
        wait_for(lambda: (drop / ".waiting" / "later.yaml").exists(), 30)
        assert outcome(drop, "later.yaml") == []
        sims.append(start_sim(port))
        wait_for(lambda: outcome(drop, "later.yaml") != [], 120)
        assert outcome(drop, "later.yaml") == ["done"]
        assert not (drop / ".waiting" / "later.yaml").exists()
    finally:
        stop(proc)

    short = tmp_path / "short"
    short.mkdir()
    dead = f"http://127.0.0.1:{free_port()}"
    env = process_env(tmp_path, COMFYUI_URL=dead, BRIDGE_WAIT_FOR_SERVER="1")
    proc, _ = start(["watch", str(short), "--settle", "0.2"], env)
    try:
        (short / "never.yaml").write_text(TINY)
        wait_for(lambda: outcome(short, "never.yaml") != [], 60)
    finally:
        stop(proc)
    assert outcome(short, "never.yaml") == ["failed"]
    assert "BRIDGE_WAIT_FOR_SERVER" in (short / "failed" / "never.yaml.reason.txt").read_text()


# -- the REST API ------------------------------------------------------------------------


def big_spec(shots: int, project: str = "big") -> bytes:
    rows = "".join(f"      - {{id: s{i:05d}, action: 'shot {i}'}}\n" for i in range(shots))
    return (
        f"version: 1\nproject: {{id: {project}}}\n"
        "defaults: {preset: draft, fps: 12, motion: core-smoke, duration: 1s}\n"
        f"scenes:\n  - id: long\n    shots:\n{rows}"
    ).encode()


def raw_request(
    url: str, method: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_serve_without_comfyui_then_with_it_under_concurrent_clients(
    tmp_path: Path, sim_port: tuple[int, list[subprocess.Popen]]
) -> None:
    """Items 7-11 on one `bridge serve` process."""
    port, sims = sim_port
    env = process_env(
        tmp_path,
        COMFYUI_URL=f"http://127.0.0.1:{port}",
        BRIDGE_API_TOKEN="s3cret",
        MAX_JOBS_PER_SPEC="3000",
    )
    proc, first = start(["serve", "--port", "0"], env)
    try:
        assert first.startswith("listening on "), first  # item 8: starts without ComfyUI
        api = first.removeprefix("listening on ")
        status, body = call(f"{api}/api/health", token=None)
        assert status == 503
        assert body["status"] == "degraded"
        assert body["dependencies"]["comfyui"]["up"] is False
        assert body["dependencies"]["database"]["up"] is True
        assert (
            f'bridge_server_up{{server="http://127.0.0.1:{port}"}} 0.0' in call(f"{api}/metrics")[1]
        )
        sims.append(start_sim(port, job_seconds=0.5))
        wait_for(lambda: call(f"{api}/api/health", token=None)[0] == 200, 30)
        wait_for(lambda: "node_classes" in call(f"{api}/api/capabilities")[1]["servers"][0], 30)

        # Item 7: while a spec too big for the cap is parsed and compiled, health answers.
        answered: list[float] = []
        done = threading.Event()

        def probe() -> None:
            while not done.is_set():
                t0 = time.monotonic()
                assert call(f"{api}/api/health", token=None)[0] == 200
                answered.append(time.monotonic() - t0)
                time.sleep(0.02)

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            status, body = call(f"{api}/api/specs", "POST", big_spec(4000))
        finally:
            done.set()
            prober.join()
        assert status == 422
        assert "MAX_JOBS_PER_SPEC" in body["error"]
        assert "4,002 jobs" in body["error"]  # 4,000 shots and their assemblies
        assert len(answered) >= 3  # health kept answering during the POST
        assert sorted(answered)[len(answered) // 2] < 1.0  # a generous liveness bound

        # Item 9: a second POST for a project under way is answered at once with a 409.
        status, running = call(f"{api}/api/specs", "POST", SMOKE.read_bytes())
        assert status == 202
        status, body = call(f"{api}/api/generate/project/smoke", "POST")
        assert status == 409
        assert body["run_id"] == running["run_id"]
        wait_for(lambda: call(f"{api}/api/status/{running['run_id']}")[1]["status"] != "running")

        # Item 10: a scene id two projects share needs ?project=.
        other = SMOKE.read_text().replace("id: smoke", "id: smoke-two").encode()
        status, body = call(f"{api}/api/specs", "POST", other)
        assert status == 202
        wait_for(lambda: call(f"{api}/api/status/{body['run_id']}")[1]["status"] != "running")
        status, body = call(f"{api}/api/generate/scene/dawn", "POST")
        assert status == 409
        assert body["candidates"] == ["smoke", "smoke-two"]
        status, body = call(f"{api}/api/generate/scene/dawn?project=smoke-two", "POST")
        assert status == 202
        assert call(f"{api}/api/runs/{body['run_id']}")[1]["project_id"] == "smoke-two"
        wait_for(lambda: call(f"{api}/api/status/{body['run_id']}")[1]["status"] != "running")

        # Item 11.
        auth = {"Authorization": "bEaReR s3cret"}
        status, _, raw = raw_request(
            f"{api}/api/specs", "POST", b"not gzip", {**auth, "Content-Encoding": "gzip"}
        )
        assert status == 400, raw
        status, _, _ = raw_request(
            f"{api}/api/specs",
            "POST",
            gzip.compress(b"version: 1\n"),
            {**auth, "Content-Encoding": "gzip"},
        )
        assert status == 422  # real gzip is decoded and validated
        bomb = gzip.compress(b"a" * (8 * 1024 * 1024))
        status, _, _ = raw_request(
            f"{api}/api/specs", "POST", bomb, {**auth, "Content-Encoding": "gzip"}
        )
        assert status == 413
        status, headers, _ = raw_request(f"{api}/api/specs", "GET", b"", auth)
        assert status == 405
        assert "POST" in headers["Allow"]
        for weird in ("+1", "%D9%A1", "1_0", "0"):
            assert call(f"{api}/api/status/{weird}")[0] == 404, weird
        assert call(f"{api}/api/status/1")[0] == 200
        status, body = call(f"{api}/api/generate/project/smoke", "POST", b'{"priority": "urgent"}')
        assert status == 202
        assert call(f"{api}/api/generate/project/smoke", "POST", b'{"priority": "soon"}')[0] == 400
        status, body = call(
            f"{api}/api/specs", "POST", b"version: 1\nproject: {id: p}\nscenes: []\nx: 1\n"
        )
        assert status == 422
        assert str(tmp_path) not in str(body)  # no server paths in error bodies

        # Item 8: the server goes away; health and capabilities say so.
        stop_sim(sims.pop())
        wait_for(lambda: call(f"{api}/api/health", token=None)[0] == 503, 30)
        server = call(f"{api}/api/capabilities")[1]["servers"][0]
        assert server["healthy"] is False
        assert server["stale"] is True
        assert server["age_seconds"] >= 0
    finally:
        stop(proc)


# -- secrets -----------------------------------------------------------------------------

PLANTED = ("comfy-user", "COMFY-PW-7f3", "DB-PW-91c", "hook-user", "HOOK-PW-5ab", "HOOK-TOK-c0d")


def test_planted_secrets_reach_no_artifact_of_a_run(
    tmp_path: Path, sim_port: tuple[int, list[subprocess.Popen]], pg_url: str
) -> None:
    """Item 12: credentials in COMFYUI_URL, DATABASE_URL and a webhook URL appear in no log
    line, manifest, runs/*.json, database row or webhook body of a real run."""
    import http.server

    import psycopg

    port, sims = sim_port
    sims.append(start_sim(port, job_seconds=0.05))
    bodies: list[bytes] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://hook-user:HOOK-PW-5ab@127.0.0.1:{server.server_port}/h?token=HOOK-TOK-c0d"
    spec = tmp_path / "spec" / "smoke.yaml"
    spec.parent.mkdir()
    spec.write_text(
        SMOKE.read_text() + f"webhooks:\n  - {{url: '{hook}', events: [run_finished, job_failed,"
        " job_finished]}\n"
    )
    env = process_env(
        tmp_path,
        COMFYUI_URL=f"http://comfy-user:COMFY-PW-7f3@127.0.0.1:{port}",
        DATABASE_URL=f"{pg_url}?password=DB-PW-91c",
        LOG_LEVEL="DEBUG",
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bridge", "run", str(spec)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        wait_for(lambda: any(b'"run_finished"' in b for b in bodies), 20)
    finally:
        server.shutdown()
    artifacts = {"stdout": proc.stdout, "stderr": proc.stderr}
    artifacts |= {f"webhook body {i}": b.decode() for i, b in enumerate(bodies)}
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in files)
    assert any(p.parent.name == "runs" and p.suffix == ".json" for p in files)
    artifacts |= {str(p): p.read_bytes().decode("utf-8", "replace") for p in files}
    with psycopg.connect(pg_url) as db:
        tables = [
            row[0]
            for row in db.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
        assert {"runs", "jobs", "events", "projects"} <= set(tables)
        for table in tables:
            rows = db.execute(f'SELECT t::text FROM "{table}" t').fetchall()
            artifacts[f"table {table}"] = "\n".join(r[0] for r in rows)
    assert "webhook_delivered" in artifacts["table events"]  # the hook was recorded
    assert "127.0.0.1" in artifacts["table runs"]  # the URLs are there, masked
    leaks = [(where, s) for where, text in artifacts.items() for s in PLANTED if s in text]
    assert leaks == []
