"""The rule-based director: the same fields as the agents, deterministically, with no model.

It answers through the same interface and its answers pass the same checks, so a fresh
machine directs and renders a scenes-only spec (`director: rules` in the lock file).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from bridge.direct.llm import Reply
from bridge.direct.roles import Role

CAMERAS = ("static wide establishing shot", "slow push in", "medium shot, gentle pan", "close-up")


def _join(*parts: str) -> str:
    return ", ".join(p.strip().strip(",") for p in parts if p and p.strip())


def _clip(text: str, budget: int) -> str:
    """Whole comma-separated parts that fit the budget, so a prompt never ends mid-word."""
    if len(text) <= budget:
        return text
    kept: list[str] = []
    for part in text.split(", "):
        if len(", ".join([*kept, part])) > budget:
            break
        kept.append(part)
    return ", ".join(kept) or text[:budget]


def shots(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Split frame_count into equal shots no longer than the preset's shot length."""
    longest = int(payload["max_frames_per_shot"])
    total = int(payload.get("frame_count") or longest)
    count = max(1, math.ceil(total / longest))
    base, extra = divmod(total, count)
    beats = [b.strip() for b in str(payload.get("description", "")).replace(";", ".").split(".")]
    beats = [b for b in beats if b] or [str(payload.get("visual_description") or payload["scene"])]
    planned = [
        {
            "id": f"s{i + 1:02d}",
            "action": beats[min(i * len(beats) // count, len(beats) - 1)][:400],
            "camera": CAMERAS[0] if i == 0 else CAMERAS[1 + (i - 1) % (len(CAMERAS) - 1)],
            "frames": base + (1 if i < extra else 0),
        }
        for i in range(count)
    ]
    why = f"{total} frames in {count} shot(s) of at most {longest} (the preset's shot length)"
    return {"shots": planned, "why": why}


def prompts(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Style + look + each character's design prompt and trigger words + action + camera."""
    budget = int(payload["prompt_budget"])
    cast = payload.get("cast", [])
    looks = [c.get("design_prompt", "") for c in cast]
    words = [w for c in cast for w in c.get("trigger_words", [])]
    written = [
        {
            "shot": shot["id"],
            "prompt": _clip(
                _join(
                    (payload.get("style") or {}).get("style", ""),
                    payload.get("visual_description", ""),
                    *looks,
                    *words,
                    shot.get("action", ""),
                    shot.get("camera", ""),
                ),
                budget,
            )
            or shot["id"],
            "negative": "",
        }
        for shot in payload["shots"]
    ]
    why = "project style, scene look, character design prompts and trigger words, action, camera"
    return {"prompts": written, "why": why}


def parameters(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The scene's own template and preset; more steps for crowded or long scenes."""
    preset = payload["preset"]
    steps = int(preset["steps"])
    busy = len(payload.get("cast", [])) > 1 or len(payload.get("shots", [])) > 3
    if busy:
        steps = min(steps + 4, 60)
    why = f"preset {preset['name']}" + (
        f"; {steps} steps for a busy scene (several characters or shots)" if busy else ""
    )
    return {
        "template": payload["template"],
        "preset": preset["name"],
        "steps": steps,
        "cfg": float(preset["cfg"]),
        "why": why,
    }


_ROLES = {"reasoning": shots, "narration": prompts, "coding": parameters}


class RulesClient:
    label = "rules"

    async def answer(self, role: Role, payload: Mapping[str, Any], feedback: str) -> Reply:
        return Reply(text=json.dumps(_ROLES[role.name](payload)), model="rules", seconds=0.0)

    async def close(self) -> None:
        return None
