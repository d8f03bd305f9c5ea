"""The watch daemon and the REST API on the preview backend: as real processes for
start-up, signals and restarts, in process where only the answers matter."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import process_env
from tests.inprocess import api_in_thread

ROOT = Path(__file__).resolve().parent.parent
BAD = ROOT / "tests" / "cases" / "bad"
pytestmark = pytest.mark.slow


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return process_env(tmp_path, BRIDGE_BACKEND="preview", **extra)


def start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    return proc, first


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM, a clean exit, and what the process said (shown when a test fails)."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    print(out, err)
    assert proc.returncode == 0, err
    return out


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


# -- watch -------------------------------------------------------------------------------


def outcome(folder: Path, name: str) -> list[str]:
    return [d for d in ("done", "rejected", "failed") if (folder / d / name).exists()]


def test_watch_files_every_drop_in_exactly_one_place(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    shutil.copy(ROOT / "specs" / "smoke.yaml", drop / "present.yaml")  # there at start-up
    env = env_for(tmp_path)
    proc, first = start(["watch", str(drop), "--settle", "0.3"], env)
    try:
        assert first.startswith("watching ")
        shutil.copy(BAD / "cycle.yaml", drop / "cycle.yaml")
        shutil.copy(ROOT / "specs" / "smoke.yaml", drop / "twice.yaml")  # same content again
        (drop / ".hidden.yaml").write_text("version: 1\n")  # an editor's temp file
        (drop / "notes.txt").write_text("not a spec")
        # a partial copy: written in two halves, with a pause longer than a poll
        text = (ROOT / "specs" / "smoke.yaml").read_text()
        with (drop / "partial.yaml").open("w") as fh:
            fh.write(text[: len(text) // 2])
            fh.flush()
            time.sleep(0.15)
            fh.write(text[len(text) // 2 :])
        names = ["present.yaml", "cycle.yaml", "twice.yaml", "partial.yaml"]
        wait_for(lambda: all(outcome(drop, n) for n in names))
    finally:
        stop(proc)
    assert {n: outcome(drop, n) for n in names} == {
        "present.yaml": ["done"],
        "cycle.yaml": ["rejected"],
        "twice.yaml": ["done"],
        "partial.yaml": ["done"],
    }
    errors = (drop / "rejected" / "cycle.yaml.errors.txt").read_text()
    assert errors.startswith("cycle.yaml:6:27: scenes[0].shots[0].after[0]: dependency cycle")
    manifest = Path((drop / "done" / "twice.yaml.manifest.txt").read_text().strip())
    assert manifest.is_file()
    assert (drop / ".hidden.yaml").exists()
    assert (drop / "notes.txt").exists()
    assert list((drop / ".processing").iterdir()) == []


def test_watch_killed_mid_run_resumes_and_finishes(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    env = env_for(tmp_path)
    proc, _ = start(["watch", str(drop), "--settle", "0.2"], env)
    shutil.copy(ROOT / "specs" / "smoke.yaml", drop / "ep.yaml")
    # Killed once the first of its seven jobs has rendered: mid-run, whatever the load.
    wait_for(lambda: any((tmp_path / "out").rglob("render-*.mp4")), 120)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert outcome(drop, "ep.yaml") == []
    assert (drop / ".processing" / "ep.yaml").exists()  # nothing dropped is lost
    proc, first = start(["watch", str(drop), "--settle", "0.2"], env)
    try:
        assert first == "resuming ep.yaml (claimed by an earlier start)"
        wait_for(lambda: outcome(drop, "ep.yaml") == ["done"], 120)
    finally:
        stop(proc)


# -- API ---------------------------------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path) -> Iterator[str]:
    env = env_for(tmp_path, BRIDGE_API_TOKEN="s3cret", BRIDGE_WEBHOOK_SECRET_HOOK="hook-key")
    proc, first = start(["serve", "--port", "0"], env)
    assert first.startswith("listening on "), first + (proc.stderr.read() if proc.stderr else "")
    yield first.removeprefix("listening on ")
    stop(proc)


@pytest.fixture
def api_here(tmp_path: Path) -> Iterator[str]:
    """The same API and settings in this process (see tests/inprocess.py)."""
    environ = {
        "BRIDGE_BACKEND": "preview",
        "BRIDGE_API_TOKEN": "s3cret",
        "BRIDGE_WEBHOOK_SECRET_HOOK": "hook-key",
    }
    with api_in_thread(tmp_path, environ) as url:
        yield url


def call(
    url: str, method: str = "GET", body: bytes | None = None, token: str | None = "s3cret"
) -> tuple[int, object]:
    request = urllib.request.Request(url, data=body, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            raw, status, ctype = resp.read(), resp.status, resp.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        raw, status, ctype = exc.read(), exc.code, exc.headers.get_content_type()
    return status, json.loads(raw) if ctype == "application/json" else raw.decode()


def test_api_endpoints(api: str) -> None:
    assert call(f"{api}/api/health", token=None)[0] == 200
    assert call(f"{api}/api/jobs", token=None) == (401, {"error": "missing or wrong bearer token"})
    assert call(f"{api}/api/jobs", token="wrong")[0] == 401

    status, body = call(f"{api}/api/capabilities")
    assert status == 200
    assert "core-smoke" in body["templates"]
    assert body["presets"]["high"]["width"] == 704

    status, body = call(f"{api}/api/specs", "POST", (BAD / "many_errors.yaml").read_bytes())
    assert status == 422
    assert (body["errors"][0]["line"], body["errors"][0]["column"]) == (2, 21)
    assert call(f"{api}/api/specs", "POST", b"")[0] == 400
    assert call(f"{api}/api/specs", "POST", b"x" * (2 * 1024 * 1024))[0] == 413

    status, body = call(f"{api}/api/specs", "POST", (ROOT / "specs" / "smoke.yaml").read_bytes())
    assert status == 202
    run_id = body["run_id"]
    wait_for(lambda: call(f"{api}/api/status/{run_id}")[1]["status"] != "running")
    status, body = call(f"{api}/api/status/{run_id}")
    assert body["status"] == "succeeded"
    assert body["progress"] == {"finished": 7, "total": 7}

    status, body = call(f"{api}/api/generate/scene/dusk", "POST", b'{"quality_preset": "draft"}')
    assert status == 202
    wait_for(lambda: call(f"{api}/api/status/{body['run_id']}")[1]["status"] != "running")
    assert call(f"{api}/api/runs/{body['run_id']}")[1]["counts"] == {"cached": 3}

    assert call(f"{api}/api/generate/project/smoke", "POST", b'{"quality_preset": "max"}')[0] == 400
    assert call(f"{api}/api/generate/project/nope", "POST")[0] == 404
    assert call(f"{api}/api/generate/scene/nope", "POST")[0] == 404
    assert call(f"{api}/api/status/999")[0] == 404
    assert call(f"{api}/api/status/abc")[0] == 404
    assert call(f"{api}/api/jobs?status=weird")[0] == 400
    assert call(f"{api}/api/jobs?limit=0")[0] == 400
    status, body = call(f"{api}/api/jobs?status=succeeded&limit=1")
    assert status == 200
    assert len(body["jobs"]) == 1

    status, text = call(f"{api}/metrics")
    assert status == 200
    assert 'bridge_jobs{state="succeeded"} 7.0' in text
    assert "bridge_subscriber_errors_total 0.0" in text
    assert "s3cret" not in text


def test_api_refuses_to_listen_beyond_loopback_without_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bridge.cli import main

    monkeypatch.setenv("OUTPUT_PATH", str(tmp_path / "out"))
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 1
    assert "without BRIDGE_API_TOKEN" in capsys.readouterr().err


def test_webhook_is_signed_and_a_dead_one_does_not_hold_up_the_run(
    api_here: str, tmp_path: Path
) -> None:
    api = api_here
    import http.server
    import threading

    received: list[tuple[str, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers.get("X-Bridge-Signature", ""), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_port}/hook"
    try:
        spec = (ROOT / "specs" / "smoke.yaml").read_text()
        spec += f"webhooks:\n  - {{url: '{hook}', events: [run_finished], secret_env: BRIDGE_WEBHOOK_SECRET_HOOK}}\n"
        spec += "  - {url: 'http://127.0.0.1:9/never', events: [run_finished]}\n"
        started = time.monotonic()
        status, body = call(f"{api}/api/specs", "POST", spec.encode())
        assert status == 202
        wait_for(lambda: call(f"{api}/api/status/{body['run_id']}")[1]["status"] != "running")
        assert time.monotonic() - started < 30
        wait_for(lambda: bool(received), 20)
    finally:
        server.shutdown()
    signature, payload = received[0]
    notice = json.loads(payload)
    assert notice["event"] == "run_finished"
    assert notice["run_id"] == body["run_id"]
    assert (notice["status"], notice["run_status"]) == ("completed", "succeeded")
    verify = readme_verifier()
    assert verify(payload, signature, "hook-key")
    assert not verify(payload + b" ", signature, "hook-key")
    assert not verify(payload, signature, "other-key")
    stale = signature.replace("t=", "t=1", 1)  # a timestamp far in the future is refused too
    assert not verify(payload, stale, "hook-key")


def readme_verifier():
    """The README's copy-pasteable receiver snippet, run as written."""
    readme = (ROOT / "README.md").read_text()
    code = readme.split("```python\n# verify a bridge webhook\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(code, namespace)
    return namespace["verify"]


def test_schemathesis_finds_no_server_error(api_here: str) -> None:
    """Property-based requests from schemas/openapi.json: no 5xx, responses as documented."""
    api = api_here
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            str(ROOT / "schemas" / "openapi.json"),
            "--url",
            api,
            "--checks",
            "not_a_server_error",
            "--header",
            "Authorization: Bearer s3cret",
            "--max-examples",
            "25",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
