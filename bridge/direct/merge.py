"""Merge the direction file into a loaded spec before validation.

What the spec says always wins: direction only fills what a directed scene leaves open, and
the merged spec then goes through the same schema and semantic checks as a hand-written one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from bridge.direct import lock
from bridge.errors import DirectionError, Location, SpecError, SpecErrors
from bridge.spec.load import Document
from bridge.spec.model import scene_shots


def directed(data: Any) -> list[int]:
    """Indexes of the scenes with `direct: true`, themselves or through `defaults`."""
    if not isinstance(data, dict) or not isinstance(data.get("scenes"), list):
        return []
    defaults = data.get("defaults")
    default = isinstance(defaults, dict) and defaults.get("direct") is True
    return [
        i
        for i, sc in enumerate(data["scenes"])
        if isinstance(sc, dict)
        and isinstance(sc.get("id"), str)
        and sc.get("direct", default) is True
    ]


def has_shots(scene: Mapping[str, Any]) -> bool:
    return "shots" in scene or "shot_list" in scene


def apply(scene: dict[str, Any], roles: Mapping[str, lock.Entry]) -> dict[str, Any]:
    """The scene with the direction's fields filled in where the scene is silent."""
    out = copy.deepcopy(scene)
    reasoning = roles.get("reasoning")
    if not has_shots(out) and reasoning is not None:
        out["shots"] = [
            {
                k: v
                for k, v in (
                    ("id", s.get("id")),
                    ("action", s.get("action")),
                    ("camera", s.get("camera")),
                    ("duration", s.get("frames")),
                )
                if v not in (None, "")
            }
            for s in reasoning.fields.get("shots") or []
            if isinstance(s, dict)
        ]
    elif "shot_list" in out and "shots" not in out:
        out["shots"] = scene_shots(out)
        del out["shot_list"]
    narration = roles.get("narration")
    prompts = narration.fields.get("prompts") if narration else None
    coding = roles.get("coding")
    params = coding.fields if coding else {}
    for shot in out.get("shots") or []:
        if not isinstance(shot, dict):
            continue
        written = prompts.get(shot.get("id")) if isinstance(prompts, dict) else None
        if isinstance(written, dict) and "prompt" not in shot and written.get("prompt"):
            shot["prompt"] = written["prompt"]
            if written.get("negative") and "negative" not in shot:
                shot["negative"] = written["negative"]
        if coding is not None and "preset" not in shot:
            shot_params = shot.setdefault("params", {})
            if isinstance(shot_params, dict):
                for key in ("steps", "cfg"):
                    if key in params:
                        shot_params.setdefault(key, params[key])
    for key in ("template", "preset"):
        if coding is not None and key not in out and params.get(key):
            out[key] = params[key]
    return out


def merge_direction(doc: Document, spec_path: str | Path) -> Document:
    """`doc` with SPEC.direction.yaml merged into its directed scenes.

    A directed scene with no shots and no direction yet is a spec error that says which
    command makes one; a broken direction file is an error naming that file.
    """
    indexes = directed(doc.data)
    if not indexes:
        return doc
    path = lock.lock_path(spec_path)
    try:
        entries = lock.read(path)
    except DirectionError as exc:
        raise SpecErrors([SpecError(exc.message, Location(str(path)))]) from None
    data = dict(doc.data)
    scenes = list(data["scenes"])
    errors = []
    for i in indexes:
        scene = scenes[i]
        roles = entries.get(scene["id"], {})
        if not has_shots(scene) and "reasoning" not in roles:
            errors.append(
                SpecError(
                    f"scene '{scene['id']}' is directed but {path.name} has no shots for it "
                    f"yet: run `bridge direct {spec_path}` (or `bridge run --direct`)",
                    doc.locate(f"/scenes/{i}/id"),
                    path=f"scenes[{i}]",
                )
            )
            continue
        if roles:
            scenes[i] = apply(scene, roles)
    if errors:
        raise SpecErrors(errors)
    data["scenes"] = scenes
    return replace(doc, data=data)
