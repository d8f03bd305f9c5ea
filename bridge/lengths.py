"""What length a template renders for the length asked, and how a scene's frame_count is
kept when its shots cannot be rendered at exactly the lengths asked.

A template's model makes only some frame counts (`frames: {step, plus, context_step}`) at
its own frame rate (`fixed_fps`): a 3 s shot on framepack-i2v is 73 frames at 30 fps,
2.43 s. A scene with a frame_count spreads the difference over its shots (some rounded up,
some down) so the joined length is frame_count; when no choice of lengths gives it exactly,
the shortest choice past it is rendered and the scene's assembly trims the few frames over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.presets import PRESETS
from bridge.spec.model import Scene, Shot
from bridge.templates import Template, frames_for

MAX_TOTALS = 2048  # partial sums kept per shot while searching a scene's lengths


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


def fit(
    frame_count: int, fps: float, choices: Sequence[tuple[Length, ...]]
) -> tuple[list[Length], int]:
    """One length per shot (from each shot's options) whose joined length at the scene's
    `fps` is `frame_count`; when none is, the shortest past it, and the frames the assembly
    trims (0 when exact). Searched over the totals the choices can reach, layer by layer."""
    target = frame_count / fps
    n = len(choices)
    layers: list[dict[float, tuple[float, int]]] = []  # total → (previous total, option)
    reach: dict[float, tuple[float, int]] = {0.0: (0.0, -1)}
    for k, options_ in enumerate(choices, 1):
        nxt: dict[float, tuple[float, int]] = {}
        for total in reach:
            for index, option in enumerate(options_):
                nxt.setdefault(round(total + option.seconds, 6), (total, index))
        if len(nxt) > MAX_TOTALS:  # keep the partial totals nearest their share of the scene
            share = target * k / n
            kept = sorted(nxt, key=lambda t: abs(t - share))[:MAX_TOTALS]
            nxt = {t: nxt[t] for t in kept}
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
    chosen: list[Length] = []
    total = best
    for options_, layer in zip(reversed(choices), reversed(layers), strict=True):
        previous, index = layer[total]
        chosen.append(options_[index])
        total = previous
    chosen.reverse()
    return chosen, max(0, round(best * fps) - frame_count)


def shot_options(shot: Shot, template: Template) -> tuple[Length, ...]:
    preset = PRESETS[shot.preset]
    context = int(shot.params.get("context", preset.context))
    return options(template, shot.frames or preset.frames, shot.fps, context)


def for_scene(scene: Scene, templates: Mapping[str, Template]) -> tuple[list[Length], int]:
    """Each shot's rendered length, and the frames the scene's assembly trims."""
    choices = [shot_options(shot, templates[shot.template]) for shot in scene.shots]
    if scene.frame_count:
        return fit(scene.frame_count, scene.fps, choices)
    return [c[0] for c in choices], 0


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
