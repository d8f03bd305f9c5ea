"""Real processes: `bridge run` against a simulator process, the preview default, and a
bridge killed with SIGKILL mid-run and restarted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import process_env, simulator, smoke_spec

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture
def sim_process() -> Iterator[str]:
    with simulator("--job-seconds", "0.4") as url:
        yield url


def sim_state(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_sim", timeout=5) as resp:
        return json.load(resp)


def bridge(*args: str, env: dict[str, str], **kw: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_run_without_comfyui_renders_a_preview_and_says_so(tmp_path: Path) -> None:
    env = process_env(tmp_path, BRIDGE_BACKEND="preview")
    proc = bridge("run", "specs/smoke.yaml", env=env)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "PREVIEW" in err
    manifest = json.loads((tmp_path / "out" / "smoke" / "manifest.json").read_text())
    assert manifest["run"]["preview"] is True
    assert "PREVIEW" in manifest["run"]["notice"]
    assert manifest["run"]["counts"] == {"succeeded": 7}


def test_run_against_a_simulator_process(sim_process: str, tmp_path: Path) -> None:
    proc = bridge("run", "specs/smoke.yaml", env=process_env(tmp_path, COMFYUI_URL=sim_process))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "run 1: 7 succeeded" in out
    assert len(sim_state(sim_process)["posted"]) == 4


def test_unreachable_configured_server_is_a_clear_error(tmp_path: Path) -> None:
    proc = bridge(
        "run", "specs/smoke.yaml", env=process_env(tmp_path, COMFYUI_URL="http://127.0.0.1:9")
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "no ComfyUI server answered" in err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if "no ComfyUI server answered" in x]
    assert line.count("http://127.0.0.1:9") == 1, line  # the server named once
    assert line.endswith("did not answer GET /system_stats: cannot connect (Connection refused)")


def test_sigkill_mid_run_then_restart_submits_nothing_twice(
    sim_process: str, tmp_path: Path
) -> None:
    spec = tmp_path / "eight.yaml"
    spec.write_text(smoke_spec("eight", 8))
    env = process_env(tmp_path, COMFYUI_URL=sim_process, MAX_CONCURRENT_JOBS="3")
    first = bridge("run", str(spec), env=env)
    deadline = time.monotonic() + 60
    while len(sim_state(sim_process)["posted"]) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    posted_before = sim_state(sim_process)["posted"]
    assert 4 <= len(posted_before) < 8

    second = bridge("run", str(spec), env=env)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    posted = sim_state(sim_process)["posted"]
    assert len(posted) == len(set(posted)) == 8  # every shot once, none twice
    manifest = json.loads((tmp_path / "out" / "eight" / "manifest.json").read_text())
    assert all(j["state"] in ("succeeded", "cached") for j in manifest["jobs"])
    status = bridge("status", env=env)
    text, _ = status.communicate(timeout=30)
    assert "interrupted" in text.splitlines()[-1]
