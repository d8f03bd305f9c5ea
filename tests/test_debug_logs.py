"""LOG_LEVEL=DEBUG: a real `bridge run` on the simulator logs its requests to ComfyUI
(method, URL without its password, status, time) and the scheduler's decisions, retries included."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, process_env
from tests.sim.comfyui import Simulator

pytestmark = pytest.mark.slow


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(job_seconds=0.05)
    await s.start()
    yield s
    await s.stop()


async def test_debug_run_logs_comfyui_requests_and_scheduler_decisions(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.fail_posts = 1  # one HTTP 500 on POST /prompt: a retry with its delay
    url = sim.url.replace("http://", "http://tower:s3cret@")
    env = process_env(
        tmp_path,
        LOG_LEVEL="DEBUG",
        COMFYUI_URL=url,
        BRIDGE_BACKEND="comfyui",
        MAX_CONCURRENT_JOBS="1",  # two remote slots for four renders: some wait
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "run",
        str(ROOT / "specs" / "smoke.yaml"),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, raw = await asyncio.wait_for(proc.communicate(), 120)
    log = raw.decode()
    assert proc.returncode == 0, log
    masked = rf"http://(tower:\*\*\*@)?{re.escape(sim.url.removeprefix('http://'))}"
    assert re.search(rf"bridge\.backends\.comfyui: POST {masked}/prompt -> 500 in \d+ ms", log)
    assert re.search(rf"bridge\.backends\.comfyui: POST {masked}/prompt -> 200 in \d+ ms", log)
    assert re.search(rf"bridge\.backends\.comfyui: GET {masked}/history/\S+ -> 200 in", log)
    assert "s3cret" not in log
    assert re.search(r"bridge\.scheduler: ready render:dawn/s01", log)
    assert re.search(r"bridge\.scheduler: start \S+, attempt 1 \(1 of \d+ remote slots busy\)", log)
    assert re.search(
        r"bridge\.scheduler: 2 ready remote job\(s\) wait for a slot \(all 2 busy", log
    )
    assert re.search(r"bridge\.scheduler: retry \S+ in \d+\.\d s", log)
    assert re.search(r"bridge\.scheduler: start \S+, attempt 2 ", log)
