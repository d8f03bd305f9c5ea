"""The validated spec as frozen dataclasses, with every default applied.

Defaults are resolved once, by `normalise`, which the validator's semantic pass reads too.
`build` runs only on data that passed the schema and the semantic checks, so construction
here never fails on user input; the validator owns every message a user sees.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bridge import priority as priorities
from bridge.presets import DEFAULT_PRESET, PRESETS, Preset
from bridge.templates import Template

DEFAULT_KEYFRAME = "sdxl-keyframe"
DEFAULT_MOTION = "framepack-i2v"
_SECONDS = re.compile(r"^([0-9]+(?:\.[0-9]+)?)s$")
_FRAMES = re.compile(r"^([0-9]+)f$")


@dataclass(frozen=True, slots=True)
class Lora:
    file: str
    strength: float = 1.0


@dataclass(frozen=True)
class Character:
    id: str
    name: str
    description: str = ""
    design_prompt: str = ""
    traits: Mapping[str, Any] = field(default_factory=dict)
    trigger_words: tuple[str, ...] = ()
    reference_image: str | None = None
    lora: Lora | None = None


@dataclass(frozen=True)
class Shot:
    id: str
    scene: str
    position: int
    action: str
    prompt: str | None
    negative: str
    camera: str
    frames: int | None  # None: share what the scene's frame_count leaves, or the preset's length
    seed: int | None
    preset: str
    params: Mapping[str, Any]
    template: str
    keyframe: str
    characters: tuple[str, ...]
    start_image: str | None  # path relative to the spec folder
    continue_from: tuple[str, str] | None  # (scene, shot)
    after: tuple[tuple[str, str], ...]
    quality_threshold: float | None
    quality_retries: int
    fps: float

    @property
    def key(self) -> str:
        return f"{self.scene}/{self.id}"


@dataclass(frozen=True)
class Scene:
    id: str
    position: int
    title: str
    description: str
    visual_description: str
    characters: tuple[str, ...]
    fps: float
    frame_count: int | None
    shots: tuple[Shot, ...]


@dataclass(frozen=True)
class Project:
    id: str
    title: str
    description: str
    style: str
    negative: str


@dataclass(frozen=True)
class Spec:
    file: str
    folder: Path
    revision: str  # sha256 of the spec text
    project: Project
    characters: Mapping[str, Character]
    scenes: tuple[Scene, ...]
    templates: Mapping[str, Template]  # bundled and the spec's own, by name
    assemble: bool
    report: bool
    webhooks: tuple[Mapping[str, Any], ...]
    data: Mapping[str, Any] = field(repr=False, compare=False)
    priority: int = priorities.DEFAULT  # bridge.priority's scale; orders runs sharing slots

    def scene(self, scene_id: str) -> Scene:
        return next(s for s in self.scenes if s.id == scene_id)

    def shot(self, scene_id: str, shot_id: str) -> Shot:
        return next(s for s in self.scene(scene_id).shots if s.id == shot_id)


class _Rejected:
    """A value the schema refused: the semantic pass skips it like any wrong type."""

    def __repr__(self) -> str:
        return "REJECTED"


REJECTED: Any = _Rejected()


def parse_duration(value: Any, fps: float) -> int:
    """A duration as written ("5s", "2.5s", "48f", 48) in frames at `fps`; 0 for "0.01s"."""
    if isinstance(value, int):
        return value
    if m := _FRAMES.match(value):
        return int(m.group(1))
    m = _SECONDS.match(value)
    assert m is not None, value
    return round(float(m.group(1)) * fps)


def _frames(duration: Any, fps: Any) -> int | None:
    """Frames of a duration at `fps`: None when unset, REJECTED when either is unusable."""
    if duration is None:
        return None
    if not isinstance(fps, int | float) or isinstance(fps, bool) or fps <= 0:
        # REJECTED stands in for a value of any type the schema refused; it is not an int.
        return REJECTED  # type: ignore[no-any-return]
    if isinstance(duration, int) and not isinstance(duration, bool):
        return duration
    if isinstance(duration, str) and (_FRAMES.match(duration) or _SECONDS.match(duration)):
        return parse_duration(duration, fps)
    return REJECTED  # type: ignore[no-any-return]  # as above: the schema's refusal


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def normalise(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` with every default resolved: each scene gets `preset`, `fps` and `shots`
    (`shot_list` expanded), each shot its `preset`, `template`, `keyframe`, `characters`,
    `quality` and `frames` (None: a share of the scene, or the preset's length).

    Values of the wrong type (REJECTED, say) pass through, so the validator can run this on a
    spec the schema refused parts of.
    """
    defaults = data.get("defaults")
    defaults = defaults if isinstance(defaults, dict) else {}
    default_quality = defaults.get("quality")
    default_quality = default_quality if isinstance(default_quality, dict) else {}
    scenes = data.get("scenes")
    if not isinstance(scenes, list):
        return dict(data)
    out: list[Any] = []
    for sc in scenes:
        if not isinstance(sc, dict):
            out.append(sc)
            continue
        preset = _text(sc.get("preset")) or _text(defaults.get("preset")) or DEFAULT_PRESET
        fps = (
            sc.get("fps") or defaults.get("fps") or PRESETS.get(preset, PRESETS[DEFAULT_PRESET]).fps
        )
        characters = sc.get("characters", [])
        shots: list[Any] = []
        for sh in _raw_shots(sc):
            if not isinstance(sh, dict):
                shots.append(sh)
                continue
            quality = sh.get("quality")
            shots.append(
                {
                    **sh,
                    "preset": _text(sh.get("preset")) or preset,
                    "template": _text(sh.get("template"))
                    or _text(sc.get("template"))
                    or _text(defaults.get("motion"))
                    or DEFAULT_MOTION,
                    "keyframe": _text(sh.get("keyframe"))
                    or _text(defaults.get("keyframe"))
                    or DEFAULT_KEYFRAME,
                    "characters": sh.get("characters", characters),
                    "quality": {
                        **default_quality,
                        **(quality if isinstance(quality, dict) else {}),
                    },
                    "frames": _frames(sh.get("duration", defaults.get("duration")), fps),
                }
            )
        out.append({**sc, "preset": preset, "fps": fps, "shots": shots})
    return {**data, "scenes": out}


def _raw_shots(scene: Mapping[str, Any]) -> list[Any]:
    if isinstance(scene.get("shots"), list):
        return list(scene["shots"])
    if isinstance(scene.get("shot_list"), list):
        return scene_shots({"shot_list": scene["shot_list"]})
    return []


def parse_ref(ref: str, scene: str) -> tuple[str, str]:
    """'s01' → (this scene, 's01'); 'garden/s01' → ('garden', 's01')."""
    if "/" in ref:
        scene_id, shot_id = ref.split("/", 1)
        return scene_id, shot_id
    return scene, ref


def scene_shots(scene: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A scene's shots, expanding the `shot_list` shorthand into s01, s02, ..."""
    if "shots" in scene:
        return list(scene["shots"])
    return [{"id": f"s{i:02d}", "action": text} for i, text in enumerate(scene["shot_list"], 1)]


def preset_of(name: str | None) -> Preset:
    return PRESETS[name or DEFAULT_PRESET]


def build(
    norm: Mapping[str, Any],
    data: Mapping[str, Any],
    file: str,
    folder: Path,
    revision: str,
    templates: Mapping[str, Template],
) -> Spec:
    """The Spec of checked `data`, whose defaults `norm` (= normalise(data)) has resolved."""
    project_data = data["project"]
    characters = {
        cid: Character(
            id=cid,
            name=c["name"],
            description=c.get("description", ""),
            design_prompt=c.get("design_prompt", ""),
            traits=dict(c.get("traits", {})),
            trigger_words=tuple(c.get("trigger_words", ())),
            reference_image=c.get("reference_image"),
            lora=Lora(c["lora"]["file"], float(c["lora"].get("strength", 1.0)))
            if "lora" in c
            else None,
        )
        for cid, c in data.get("characters", {}).items()
    }
    scenes = []
    for index, sc in enumerate(norm["scenes"]):
        fps = float(sc["fps"])
        scene_chars = tuple(sc.get("characters", ()))
        shots = [
            Shot(
                id=sh["id"],
                scene=sc["id"],
                position=position,
                action=sh.get("action", ""),
                prompt=sh.get("prompt"),
                negative=sh.get("negative", ""),
                camera=sh.get("camera", ""),
                frames=sh["frames"],
                seed=sh.get("seed"),
                preset=sh["preset"],
                params=dict(sh.get("params", {})),
                template=sh["template"],
                keyframe=sh["keyframe"],
                characters=tuple(sh["characters"]),
                start_image=sh.get("start_image"),
                continue_from=parse_ref(sh["continue_from"], sc["id"])
                if "continue_from" in sh
                else None,
                after=tuple(parse_ref(r, sc["id"]) for r in sh.get("after", ())),
                quality_threshold=sh["quality"].get("threshold"),
                quality_retries=int(sh["quality"].get("retries", 0)),
                fps=fps,
            )
            for position, sh in enumerate(sc["shots"])
        ]
        scenes.append(
            Scene(
                id=sc["id"],
                position=index,
                title=sc.get("title", ""),
                description=sc.get("description", ""),
                visual_description=sc.get("visual_description", ""),
                characters=scene_chars,
                fps=fps,
                frame_count=sc.get("frame_count"),
                shots=tuple(_share_frames(shots, sc.get("frame_count"))),
            )
        )
    outputs = data.get("outputs", {})
    return Spec(
        file=file,
        folder=folder,
        revision=revision,
        project=Project(
            id=project_data["id"],
            title=project_data.get("title", project_data["id"]),
            description=project_data.get("description", ""),
            style=project_data.get("style", ""),
            negative=project_data.get("negative", ""),
        ),
        characters=characters,
        scenes=tuple(scenes),
        templates=dict(templates),
        assemble=bool(outputs.get("assemble", True)),
        report=bool(outputs.get("report", True)),
        webhooks=tuple(data.get("webhooks", ())),
        data=data,
        priority=_priority(data.get("priority", priorities.DEFAULT)),
    )


def _priority(raw: Any) -> int:
    """A value the schema refused was reported there; the run is never started with it."""
    return priorities.DEFAULT if raw is REJECTED else priorities.parse(raw)


def _share_frames(shots: list[Shot], frame_count: int | None) -> list[Shot]:
    """Give shots without a duration their share of the scene, or the preset's length.

    The validator has already refused scenes whose explicit durations exceed frame_count
    or leave nothing for the shots without one.
    """
    open_shots = [s for s in shots if s.frames is None]
    if not open_shots:
        return shots
    if frame_count is None:
        shares = [preset_of(s.preset).frames * s.fps / preset_of(s.preset).fps for s in open_shots]
        fill = {s.id: max(1, round(f)) for s, f in zip(open_shots, shares, strict=True)}
    else:
        left = frame_count - sum(s.frames or 0 for s in shots)
        base, extra = divmod(left, len(open_shots))
        fill = {s.id: base + (1 if i < extra else 0) for i, s in enumerate(open_shots)}
    return [s if s.frames is not None else replace(s, frames=fill[s.id]) for s in shots]
