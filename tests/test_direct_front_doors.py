"""Direction through the front doors, as real processes: the `bridge` CLI, the REST API and the
watch folder, against the chat-completions double running as its own process."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import process_env
from tests.inprocess import Result, api_in_thread, bridge_main
from tests.test_front_doors import call, outcome, start, stop, wait_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "specs" / "autonomous.yaml"
pytestmark = pytest.mark.slow


def bridge(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def llm_url() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.sim.llm", "--port", str(port)],
        cwd=ROOT,
        env=process_env(Path("/nonexistent")),
    )
    try:
        wait_for(lambda: _listening(port), timeout=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_committed_example_is_fresh_and_made_by_the_rules(tmp_path: Path) -> None:
    result = bridge("plan", str(EXAMPLE), env=process_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "direction" not in result.stderr
    text = EXAMPLE.with_name("autonomous.direction.yaml").read_text()
    assert "director: rules" in text
    assert "llm:" not in text


def test_cli_rules_then_stale_then_run_direct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "auto.yaml"
    shutil.copy(EXAMPLE, spec)
    monkeypatch.setenv("OUTPUT_PATH", str(tmp_path / "out"))
    monkeypatch.setenv("BRIDGE_BACKEND", "preview")

    def bridge(*args: str) -> Result:
        return bridge_main(capsys, *args)

    first = bridge("direct", str(spec))
    assert first.returncode == 0, first.stderr
    assert "RULE-BASED director" in first.stderr
    assert "6 roles by rules, 0 model calls" in first.stdout
    data = yaml.safe_load(spec.read_text())
    data["scenes"][1]["visual_description"] = "school rooftop at dawn"
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    plan = bridge("plan", str(spec))
    assert plan.returncode == 0, plan.stderr
    assert "rooftop: direction stale: visual_description changed (narration)" in plan.stderr
    run = bridge("run", str(spec), "--direct")
    assert run.returncode == 0, run.stderr
    assert "directed rooftop: narration (visual_description changed)" in run.stdout
    assert "directed garden" not in run.stdout
    assert "school rooftop at dawn" in spec.with_name("auto.direction.yaml").read_text()
    again = bridge("direct", str(spec))
    assert "direction fresh" in again.stdout
    assert "RULE-BASED" not in again.stderr  # nothing to do: no director was even chosen


def test_cli_with_the_llm_never_shows_the_key(tmp_path: Path, llm_url: str) -> None:
    spec = tmp_path / "auto.yaml"
    shutil.copy(EXAMPLE, spec)
    env = process_env(
        tmp_path, BRIDGE_LLM_URL=llm_url, BRIDGE_LLM_MODEL="tiny", BRIDGE_LLM_API_KEY="sk-secret"
    )
    result = bridge("direct", str(spec), "--scene-id", "garden", env=env)
    assert result.returncode == 0, result.stderr
    assert "3 roles by llm:tiny, 3 model calls" in result.stdout
    lock_text = spec.with_name("auto.direction.yaml").read_text()
    assert "director: llm:tiny" in lock_text
    for text in (result.stdout, result.stderr, lock_text):
        assert "sk-secret" not in text
    missing = bridge("plan", str(spec), env=env)
    assert missing.returncode == 1
    assert "scene 'rooftop' is directed but auto.direction.yaml has no shots" in missing.stderr
    unknown = bridge("direct", str(spec), "--scene-id", "nope", env=env)
    assert unknown.returncode == 2
    assert "--scene-id 'nope' is not a scene" in unknown.stderr


def test_api_health_direct_spec_and_analyze(tmp_path: Path, llm_url: str) -> None:
    environ = {
        "BRIDGE_BACKEND": "preview",
        "BRIDGE_API_TOKEN": "s3cret",
        "BRIDGE_LLM_URL": llm_url,
        "BRIDGE_LLM_MODEL": "tiny",
        "BRIDGE_LLM_API_KEY": "sk-secret",
    }
    with api_in_thread(tmp_path, environ) as api:  # `bridge serve` itself: test_front_doors
        status, body = call(f"{api}/api/health", token=None)
        assert status == 200
        assert body["direction"]["llm"]["reachable"] is True
        assert body["direction"]["llm"]["model"] == "tiny"
        assert "sk-secret" not in str(body)
        status, body = call(f"{api}/api/capabilities")
        assert body["direction"]["director"] == "llm:tiny"

        status, body = call(f"{api}/api/specs", "POST", EXAMPLE.read_bytes())
        assert status == 202, body
        run_id = body["run_id"]
        wait_for(lambda: call(f"{api}/api/status/{run_id}")[1]["status"] != "running")
        assert call(f"{api}/api/status/{run_id}")[1]["status"] == "succeeded"
        locks = list((tmp_path / "out").rglob("*.direction.yaml"))
        assert len(locks) == 1
        assert "director: llm:tiny" in locks[0].read_text()

        status, body = call(
            f"{api}/api/generate/scene/garden",
            "POST",
            b'{"analyze": true, "quality_preset": "draft"}',
        )
        assert status == 202, body
        wait_for(lambda: call(f"{api}/api/status/{body['run_id']}")[1]["status"] != "running")


def test_watch_directs_a_dropped_spec(tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    env = process_env(tmp_path, BRIDGE_BACKEND="preview")
    proc, _ = start(["watch", str(folder), "--settle", "0.2"], env)
    try:
        shutil.copy(EXAMPLE, folder / "auto.yaml")
        wait_for(lambda: bool(outcome(folder, "auto.yaml")), timeout=120)
        assert outcome(folder, "auto.yaml") == ["done"]
    finally:
        out = stop(proc)
    assert "the RULE-BASED director fills the open fields" in out  # no LLM is configured
    lock = folder / "done" / "auto.direction.yaml"  # filed with the spec it directed
    assert "director: rules" in lock.read_text()


def test_watch_uses_a_direction_file_dropped_beside_the_spec(tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    env = process_env(tmp_path, BRIDGE_BACKEND="preview")
    proc, _ = start(["watch", str(folder), "--settle", "0.2"], env)
    try:
        shutil.copy(EXAMPLE.with_name("autonomous.direction.yaml"), folder / "auto.direction.yaml")
        shutil.copy(EXAMPLE, folder / "auto.yaml")
        wait_for(lambda: bool(outcome(folder, "auto.yaml")), timeout=120)
        assert outcome(folder, "auto.yaml") == ["done"]
        assert not list(folder.rglob("auto.direction.yaml.*.txt"))  # never taken as a spec
    finally:
        out = stop(proc)
    assert "RULE-BASED" not in out  # the reviewed direction was fresh: nothing redone
    dropped = (folder / "auto.direction.yaml").read_text()
    assert (folder / "done" / "auto.direction.yaml").read_text() == dropped
