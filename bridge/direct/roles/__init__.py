"""The three direction roles: each a versioned prompt file, an answer schema and its fields.

A role may fill only its own fields; its answer schema has no other keys, so text in a scene
cannot make a model change anything outside the role.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from bridge.hashing import digest

NAMES = ("reasoning", "narration", "coding")


@dataclass(frozen=True)
class Role:
    name: str
    version: str  # "1:ab12cd34": the file's declared version and a digest of its text
    system: str
    schema: dict[str, Any]
    inputs: tuple[str, ...]  # the scene inputs whose change makes this role's fields stale


_INPUTS = {
    "reasoning": (
        "description",
        "visual_description",
        "characters",
        "cast",
        "frame_count",
        "fps",
        "preset",
    ),
    "narration": ("description", "visual_description", "characters", "cast", "style", "shots"),
    "coding": ("description", "characters", "frame_count", "preset", "template", "shots"),
}


@functools.cache
def role(name: str) -> Role:
    text = resources.files(__package__).joinpath(f"{name}.md").read_text(encoding="utf-8")
    header, _, body = text.partition("\n---\n")
    declared = header.removeprefix("version:").strip()
    schema_text = (
        resources.files("bridge")
        .joinpath("schemas", f"direct-{name}.schema.json")
        .read_text(encoding="utf-8")
    )
    return Role(
        name=name,
        version=f"{declared}:{digest(text)[:8]}",
        system=body.strip(),
        schema=json.loads(schema_text),
        inputs=_INPUTS[name],
    )
