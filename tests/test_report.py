"""The HTML report, opened in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bridge import report
from bridge.compile import compile_plan
from bridge.runner import Runner
from bridge.settings import Settings
from bridge.spec.validate import load_spec

ROOT = Path(__file__).resolve().parent.parent


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        reason = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("BRIDGE_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


async def test_report_loads_in_a_browser_with_every_thumbnail(tmp_path: Path) -> None:
    browser = chromium()
    settings = Settings(
        output_path=tmp_path / "out",
        database_url=f"sqlite:///{tmp_path / 'b.db'}",
        backend="preview",
    )
    spec = load_spec(ROOT / "specs" / "moonlit-garden.yaml")
    runner = Runner(settings)
    try:
        run = await runner.run(spec, compile_plan(spec))
    finally:
        await runner.close()
    import json

    manifest = json.loads(run.manifest.read_text())
    page = await report.write(manifest, run.manifest.parent)
    text = page.read_text()
    assert "PREVIEW" in text
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert 'data-broken-images="0"' in dom
    shots = ["render:garden/s01", "render:garden/s02"]
    for shot in shots:
        assert len(re.findall(rf"<img [^>]*alt=\"{re.escape(shot)}\"", dom)) == 4
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
