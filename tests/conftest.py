"""Shared fixtures: a clean environment and a tree() factory for spec folders."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "comfyui"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees the developer's bridge settings."""
    for name in list(os.environ):
        if (
            name.startswith(("BRIDGE_", "COMFYUI_", "POSTGRES_"))
            or name
            in {
                "MAX_CONCURRENT_JOBS",
                "WORKFLOW_TIMEOUT",
                "QUALITY_THRESHOLD",
                "LORA_PATH",
                "OUTPUT_PATH",
                "DATABASE_URL",
                "LOG_LEVEL",
                "ECHO_BRAIN_URL",
            }
        ) and name not in ("BRIDGE_REQUIRE_POSTGRES", "BRIDGE_REQUIRE_BROWSER"):
            monkeypatch.delenv(name)
    return


@pytest.fixture
def tree(tmp_path: Path) -> Callable[[dict], Path]:
    """Write {"name": "text" | bytes | {nested}} under tmp_path and return tmp_path."""

    def gen(spec: dict, base: Path = tmp_path) -> Path:
        for name, content in spec.items():
            path = base / name
            if isinstance(content, dict):
                path.mkdir(parents=True, exist_ok=True)
                gen(content, path)
            elif isinstance(content, bytes):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
        return base

    return gen


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def postgres_admin() -> Any:
    """An autocommit connection to the test server's maintenance database. Without a
    reachable PostgreSQL the test skips with the reason, unless BRIDGE_REQUIRE_POSTGRES is
    set (CI), where it fails."""
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL is not reachable at 127.0.0.1:5432: {str(exc).strip()}"
        if os.environ.get("BRIDGE_REQUIRE_POSTGRES"):
            pytest.fail(reason)
        pytest.skip(reason)


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database's name; dropped after, whatever the test did."""
    name = f"bridge_test_{uuid.uuid4().hex[:12]}"
    with postgres_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_url(name: str) -> str:
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


@pytest.fixture
def pg_name() -> Iterator[str]:
    with fresh_postgres_database() as name:
        yield name


@pytest.fixture
def pg_url(pg_name: str) -> str:
    return postgres_url(pg_name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database of each kind; PostgreSQL gets its own database, dropped after."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'bridge.db'}"
        return
    with fresh_postgres_database() as name:
        yield postgres_url(name)


def process_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment for a bridge subprocess: none of the developer's bridge settings,
    outputs under tmp_path, and the repository importable (for the simulator)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRIDGE_", "COMFYUI_"))
        and k not in ("OUTPUT_PATH", "DATABASE_URL", "ECHO_BRAIN_URL")
    }
    env.update(OUTPUT_PATH=str(tmp_path / "out"), PYTHONPATH=str(ROOT), **extra)
    return env


def start_listening(*args: str) -> tuple[subprocess.Popen[str], str]:
    """`python -m ARGS` from the repository, and the URL its "listening on" line gives."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.startswith("listening on "), line
    return proc, line.removeprefix("listening on ")


@contextlib.contextmanager
def simulator(*args: str) -> Iterator[str]:
    """A ComfyUI simulator process on a free loopback port; it must stop cleanly."""
    proc, url = start_listening("tests.sim.comfyui", "--port", "0", *args)
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def smoke_spec(project: str, shots: int) -> str:
    """A spec of `shots` one-second core-smoke shots in one scene: the stock-node workload
    the process tests render."""
    lines = "\n".join(f"      - {{id: s{i:02d}, action: shot {i}}}" for i in range(shots))
    return (
        f"version: 1\nproject: {{id: {project}}}\n"
        "defaults: {preset: draft, fps: 12, motion: core-smoke, duration: 1s}\n"
        f"scenes:\n  - id: a\n    shots:\n{lines}\n"
    )
