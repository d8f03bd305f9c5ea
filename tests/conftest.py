"""Shared fixtures: a clean environment and a tree() factory for spec folders."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

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
            }
        ) and name != "BRIDGE_REQUIRE_POSTGRES":
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
