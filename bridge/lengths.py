"""What length a template renders for the length asked, and how a scene's frame_count is
kept when its shots cannot be rendered at exactly the lengths asked.

A template's model makes only some frame counts (`frames: {step, plus, context_step}`) at
its own frame rate (`fixed_fps`): a 3 s shot on framepack-i2v is 73 frames at 30 fps,
2.43 s. A scene with a frame_count spreads the difference over its shots (some rounded up,
some down) so the joined length is frame_count; when no choice of lengths gives it exactly,
the shortest choice past it is rendered and the scene's assembly trims the few frames over.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.presets import PRESETS
from bridge.spec.model import Scene, Shot
from bridge.templates import Template, frames_for

MAX_TOTALS = 512  # partial sums kept per group of alike shots while searching


@dataclass(frozen=True, slots=True)
class Length:
    frames: int
    fps: float

    @property
    def seconds(self) -> float:
        return self.frames / self.fps


def options(template: Template, frames: int, fps: float, context: int) -> tuple[Length, ...]:
    """What the template renders for `frames` at `fps` (the nearest length it can make),
    then the length on the other side of the request, when the request is not exact."""
    model_fps = template.fixed_fps or fps
    wanted = frames / fps * model_fps
    nearest = frames_for(template, round(wanted) if template.fixed_fps else frames, context)
    rule = template.frames
    step = rule.context_step * context if rule.context_step else rule.step
    if nearest == wanted or (step <= 1 and rule.plus == 0 and model_fps == fps):
        return (Length(nearest, model_fps),)
    other = nearest + step if nearest < wanted else nearest - step
    if other < max(1, rule.plus + 1) or other > template.max_frames:
        return (Length(nearest, model_fps),)
    return Length(nearest, model_fps), Length(other, model_fps)


def rendered(template: Template, frames: int, fps: float, context: int) -> Length:
    """What the template renders for `frames` at `fps`: the nearest length it can make."""
    return options(template, frames, fps, context)[0]


@functools.lru_cache(maxsize=4096)
def fit(
    frame_count: int, fps: float, choices: tuple[tuple[Length, ...], ...]
) -> tuple[tuple[Length, ...], int]:
    """One length per shot (from each shot's options) whose joined length at the scene's
    `fps` is `frame_count`; when none is, the shortest past it, and the frames the assembly
    trims (0 when exact). Shots with the same options are one group, whose only question is
    how many take each option, so a scene of many alike shots is a small search."""
    groups: dict[tuple[Length, ...], list[int]] = {}
    for index, options_ in enumerate(choices):
        groups.setdefault(options_, []).append(index)
    target = frame_count / fps
    kinds = list(groups)
    # total → (previous total, how many of the group take its second option)
    layers: list[dict[float, tuple[float, int]]] = []
    reach: dict[float, tuple[float, int]] = {0.0: (0.0, 0)}
    for g, options_ in enumerate(kinds, 1):
        members = len(groups[options_])
        first = options_[0].seconds
        second = options_[-1].seconds
        nxt: dict[float, tuple[float, int]] = {}
        for total in reach:
            for k in range(members + 1 if len(options_) > 1 else 1):
                key = round(total + (members - k) * first + k * second, 6)
                nxt.setdefault(key, (total, k))
        if len(nxt) > MAX_TOTALS:  # keep the partial totals nearest their share of the scene
            share = target * sum(len(groups[o]) for o in kinds[:g]) / len(choices)
            nxt = {t: nxt[t] for t in sorted(nxt, key=lambda t: abs(t - share))[:MAX_TOTALS]}
        layers.append(nxt)
        reach = nxt
    exact = [t for t in reach if round(t * fps) == frame_count]
    longer = [t for t in reach if round(t * fps) > frame_count]
    if exact:
        best = min(exact, key=lambda t: (abs(t - target), t))
    elif longer:
        best = min(longer)
    else:
        best = max(reach)
    chosen: list[Length] = [c[0] for c in choices]
    total = best
    for options_, layer in zip(reversed(kinds), reversed(layers), strict=True):
        previous, k = layer[total]
        shots = groups[options_]
        for n, index in enumerate(shots):  # the k second options spread over the group
            if (n + 1) * k // len(shots) > n * k // len(shots):
                chosen[index] = options_[-1]
        total = previous
    return tuple(chosen), max(0, round(best * fps) - frame_count)


def shot_options(shot: Shot, template: Template) -> tuple[Length, ...]:
    preset = PRESETS[shot.preset]
    context = int(shot.params.get("context", preset.context))
    return options(template, shot.frames or preset.frames, shot.fps, context)


def for_scene(scene: Scene, templates: Mapping[str, Template]) -> tuple[tuple[Length, ...], int]:
    """Each shot's rendered length, and the frames the scene's assembly trims."""
    choices = tuple(shot_options(shot, templates[shot.template]) for shot in scene.shots)
    if scene.frame_count:
        return fit(scene.frame_count, scene.fps, choices)
    return tuple(c[0] for c in choices), 0


def unkept(scene: Scene, templates: Mapping[str, Template]) -> str:
    """Why the scene's frame_count cannot be kept (trimming would cut its last shot away),
    or empty when it can."""
    if not scene.frame_count or not scene.shots:
        return ""
    chosen, trim = for_scene(scene, templates)
    last = round(chosen[-1].seconds * scene.fps)
    if trim < last:
        return ""
    joined = scene.frame_count + trim
    names = ", ".join(sorted({shot.template for shot in scene.shots}))
    return (
        f"frame_count {scene.frame_count} ({scene.frame_count / scene.fps:.2f} s at "
        f"{scene.fps:g} fps) is shorter than the scene's {len(scene.shots)} shots can be: the "
        f"shortest lengths {names} renders join to {joined} frames; set frame_count to at "
        f"least {joined}, or give the scene fewer shots"
    )


def note(meta: Mapping[str, Any]) -> str:
    """Requested vs rendered, in words, from a job's meta; empty when they are the same."""
    asked = meta.get("requested")
    if not asked:
        return ""
    if "trim_frames" in meta:
        trim = int(meta["trim_frames"])
        if not trim:
            return ""
        return (
            f"frame_count {asked['frames']} kept: the shots join to {meta['joined_frames']} "
            f"frames, the last {trim} are trimmed"
        )
    return (
        f"asked {asked['seconds']:g} s ({asked['frames']} frames at {asked['fps']:g} fps), "
        f"renders {meta['seconds']:.2f} s"
    )
