"""core-smoke on a real ComfyUI, when one is given: BRIDGE_TEST_COMFYUI_URL=http://host:8188.

Skipped otherwise (CI has no ComfyUI). `specs/smoke.yaml` uses stock core nodes only, so
any ComfyUI 0.8 renders it with no models installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
URL = os.environ.get("BRIDGE_TEST_COMFYUI_URL")  # read before the fixture cleans the environment


@pytest.mark.skipif(URL is None, reason="set BRIDGE_TEST_COMFYUI_URL to test a real ComfyUI")
def test_core_smoke_on_a_real_comfyui(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(COMFYUI_URL=str(URL), OUTPUT_PATH=str(tmp_path / "out"), BRIDGE_BACKEND="comfyui")
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "run", "specs/smoke.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "7 succeeded" in proc.stdout
