"""`bridge run` on its way to the first prompt imports only what that way needs (issue 14):
what acts on finished outputs, directs scenes, upgrades schemas or speaks PostgreSQL
waits until it is used. Speed itself is `make bench startup`'s; this guards the cause."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.db.store import Store
from tests.conftest import process_env, simulator

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# `bridge run`, noting sys.modules as its first prompt is posted.
_NOTING_RUN = """
import sys
from bridge.backends.comfyui import ComfyUIBackend

post, noted = ComfyUIBackend._submit, sys.argv[1]

async def submit(self, attempt):
    if noted:
        open(noted, "w").write("\\n".join(sorted(sys.modules)))
        sys.argv[1] = ""
    return await post(self, attempt)

ComfyUIBackend._submit = submit
from bridge.cli import main
sys.exit(main(sys.argv[2:]))
"""

# Needed after the first prompt, by other commands, or by other databases only.
LATER = (
    "ffmpeg",  # assembly and continuity frames
    "bridge.media",
    "bridge.probe",  # checks of a downloaded output
    "bridge.report",
    "bridge.direct.direct",  # directing scenes, with its LLM clients
    "bridge.direct.llm",
    "jsonschema",  # describing spec errors; jsonschema_rs finds them
    "alembic",  # only when the schema is behind
    "sqlalchemy.dialects.postgresql",
    "psycopg",
    "bridge.api",
    "bridge.watch",
    "bridge.worker",
    "bridge.queue",
)


@pytest.fixture
def sim_url() -> Iterator[str]:
    with simulator("--job-seconds", "0.05") as url:
        yield url


def test_run_posts_its_first_prompt_before_importing_later_stages(
    tmp_path: Path, sim_url: str
) -> None:
    spec = tmp_path / "quick.yaml"
    spec.write_text(
        "version: 1\nproject: {id: quick}\n"
        "defaults: {preset: draft, fps: 12, motion: core-smoke, duration: 2f}\n"
        "outputs: {assemble: true, report: true}\n"
        "scenes:\n  - id: a\n    shots:\n"
        "      - {id: s1, action: one, params: {width: 64, height: 64}}\n"
        "      - {id: s2, action: two, params: {width: 64, height: 64}}\n"
    )
    env = process_env(tmp_path, COMFYUI_URL=sim_url, BRIDGE_BACKEND="comfyui")
    Store(f"sqlite:///{tmp_path / 'out' / 'bridge.db'}").close()  # a user's second run
    noted = tmp_path / "modules.txt"
    proc = subprocess.run(
        [sys.executable, "-c", _NOTING_RUN, str(noted), "run", str(spec)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "report:" in proc.stdout  # the later stages did run, after the first prompt
    modules = set(noted.read_text().split())
    assert {"bridge.runner", "bridge.db.store", "aiohttp"} <= modules  # noted on the way
    early = sorted(m for m in modules for later in LATER if m == later or m.startswith(later + "."))
    assert early == [], f"imported before the first prompt, needed only later: {early}"
