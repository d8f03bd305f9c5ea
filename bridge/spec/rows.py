"""A production held as database rows ↔ the spec data the YAML loader produces.

Rows come from `bridge` itself (`Store.sync_spec`) or from the old Content Generation
Bridge's clients, which insert scenes without a project, `characters` as plain text
("Mei") and `character_lora_mapping` as name → LoRA name without extension. Reading turns
either into spec *data*, which then goes through the same validation and compiler as a
YAML file, so a database production cannot skip a check a file would get.

A scene inserted without a project is a one-scene project of its own, `scene-<scene id>`
(not the scene id itself: the project's and the scene's assembled videos need two names).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from sqlalchemy import or_
from sqlmodel import Session, col, select

from bridge.db.models import Character as CharacterRow
from bridge.db.models import Project as ProjectRow
from bridge.db.models import Scene as SceneRow
from bridge.direct.merge import merge_direction
from bridge.errors import ConflictError, NotFoundError
from bridge.masking import mask_url
from bridge.presets import DEFAULT_PRESET, PRESETS
from bridge.spec.load import Document, load_bytes
from bridge.spec.model import Scene, Shot, Spec
from bridge.spec.validate import validate

if TYPE_CHECKING:
    from bridge.db.store import Store

DATABASE_FILE = "<database project "  # the `file` of a spec read from rows
SCENE_PROJECT = "scene-"  # the project of a scene inserted without one
_LORA_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
_SHOT_KEYS = (
    "id",
    "action",
    "prompt",
    "negative",
    "camera",
    "duration",
    "seed",
    "preset",
    "params",
    "template",
    "keyframe",
    "characters",
    "start_image",
    "continue_from",
    "after",
    "quality",
)


# -- spec → rows -----------------------------------------------------------------------


def shot_list(scene: Scene) -> list[dict[str, Any]]:
    """The scene's shots as the `shot_list` column holds them: spec shot objects with
    every default resolved, so reading them back needs nothing the rows lack."""
    return [_shot_object(shot, scene) for shot in scene.shots]


def _shot_object(shot: Shot, scene: Scene) -> dict[str, Any]:
    out: dict[str, Any] = {"id": shot.id, "action": shot.action}
    optional: dict[str, Any] = {
        "prompt": shot.prompt,
        "negative": shot.negative,
        "camera": shot.camera,
        "duration": f"{shot.frames}f" if shot.frames is not None else None,
        "seed": shot.seed,
        "preset": shot.preset,
        "params": dict(shot.params),
        "template": shot.template,
        "keyframe": shot.keyframe,
        "start_image": shot.start_image,
        "continue_from": "/".join(shot.continue_from) if shot.continue_from else None,
        "after": ["/".join(ref) for ref in shot.after],
        "quality": _quality(shot),
    }
    out.update({k: v for k, v in optional.items() if v not in (None, "", [], {})})
    if shot.characters != scene.characters:
        out["characters"] = list(shot.characters)
    return out


def _quality(shot: Shot) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if shot.quality_threshold is not None:
        out["threshold"] = shot.quality_threshold
    if shot.quality_retries:
        out["retries"] = shot.quality_retries
    return out


def lora_mapping(spec: Spec, scene: Scene) -> dict[str, Any]:
    return {
        cid: {"file": lora.file, "strength": lora.strength}
        for cid in scene.characters
        if (lora := spec.characters[cid].lora) is not None
    }


def project_options(spec: Spec) -> dict[str, Any]:
    """What the spec holds that has no row: its own templates, outputs and webhooks (their
    URLs masked like everything else written to the database, so an export of a project
    with credentials in a webhook URL needs them put back by hand)."""
    out = {k: spec.data[k] for k in ("templates", "outputs") if k in spec.data}
    if "webhooks" in spec.data:
        out["webhooks"] = [{**h, "url": mask_url(h["url"])} for h in spec.data["webhooks"]]
    return out


# -- rows → spec -----------------------------------------------------------------------


def spec_for_project(store: Store, project_id: str) -> Spec:
    """The project as a validated Spec: from the spec it was last rendered from while that
    file exists (the source; its rows are a copy), else from its rows.

    The file is read as the stored revision, resolved against the folder it came from (the
    watch folder's or the API's kept copy, or the file `bridge run` was given); a file that
    now holds other text is refused, never rendered in its place.
    """
    with store.session() as s:
        project = s.get(ProjectRow, project_id)
    kept = Path(project.spec_file) if project is not None and project.spec_file else None
    if project is None or kept is None or not kept.is_file():
        return spec_from_rows(store, project_id)
    folder = Path(project.spec_folder) if project.spec_folder else kept.parent
    doc = merge_direction(load_bytes(kept.read_bytes(), kept.name, base=folder), kept)
    spec = validate(doc)
    if spec.revision != project.revision:
        raise ConflictError(
            f"project {project_id!r}: its spec file {kept.name} has changed since it was "
            "rendered; render the file itself (`bridge run FILE`) or send it again"
        )
    return replace(spec, file=project.spec_file)


def spec_from_rows(store: Store, project_id: str) -> Spec:
    """The project as a validated Spec, read from its rows only (what `bridge export` writes).

    Image paths in rows are relative to the folder of the spec file the project was synced
    from, as written there; a project that never had one resolves them from the current folder.
    """
    data = project_data(store, project_id)
    with store.session() as s:
        project = s.get(ProjectRow, project_id)
    synced = project.spec_file if project is not None else ""
    folder = Path(synced).resolve().parent if synced else Path.cwd()
    text = json.dumps(data, sort_keys=True, default=str)
    name = str(folder / f"{DATABASE_FILE}{data['project']['id']}>")
    return validate(Document(data, name, {}, {}, text))


def from_database(spec: Spec) -> bool:
    return Path(spec.file).name.startswith(DATABASE_FILE)


def spec_for_scene(store: Store, scene_id: str) -> Spec:
    """The project that holds `scene_id`, as a validated Spec."""
    return spec_for_project(store, project_of_scene(store, scene_id))


def project_of_scene(store: Store, scene_id: str, project: str | None = None) -> str:
    """The project that holds `scene_id` (only `project` considered, when given)."""
    with store.session() as s:
        owners = sorted(
            {
                row.project_id or SCENE_PROJECT + row.id
                for row in s.exec(select(SceneRow).where(SceneRow.id == scene_id))
            }
        )
    if project is not None:
        owners = [o for o in owners if o == project]
    if not owners:
        where = f" in project {project!r}" if project is not None else ""
        raise NotFoundError(f"there is no scene {scene_id!r}{where} in the database")
    if len(owners) > 1:
        raise ConflictError(
            f"scene {scene_id!r} is in several projects ({', '.join(owners)}); name its project",
            candidates=owners,
        )
    return owners[0]


def project_data(store: Store, project_id: str) -> dict[str, Any]:
    """Spec data (as YAML would load it) for a project held in the database."""
    with store.session() as s:
        project = s.get(ProjectRow, project_id)
        scenes = list(
            s.exec(
                select(SceneRow)
                .where(SceneRow.project_id == project_id)
                .order_by(
                    col(SceneRow.position).is_(None), col(SceneRow.position), col(SceneRow.pk)
                )
            )
        )
        if not scenes and project is None:
            scene_id = project_id.removeprefix(SCENE_PROJECT)
            scenes = list(
                s.exec(
                    select(SceneRow).where(
                        col(SceneRow.project_id).is_(None), SceneRow.id == scene_id
                    )
                )
            )
            if not scenes:
                raise NotFoundError(f"there is no project {project_id!r} in the database")
            project_id = SCENE_PROJECT + scene_id
        characters = _character_rows(s, project_id)
    data: dict[str, Any] = {"version": 1, "project": _project(project, project_id, scenes)}
    cast = _Cast(characters)
    data["scenes"] = [_scene(row, cast) for row in scenes]
    cast.add_unused(project_id)
    if cast.used:
        data["characters"] = cast.used
    if project is not None and project.options:
        data.update(project.options)
    return data


def to_yaml(data: Mapping[str, Any]) -> str:
    """Spec data as a YAML file a person reviews: keys in the spec's order, block style."""
    head = f"# Exported from the database by `bridge export {data['project']['id']}`.\n"
    return head + yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True, width=100)


def _character_rows(s: Session, project_id: str) -> list[CharacterRow]:
    """The project's characters first, then those the old system inserted without one."""
    rows = s.exec(
        select(CharacterRow)
        .where(
            or_(col(CharacterRow.project_id) == project_id, col(CharacterRow.project_id).is_(None))
        )
        .order_by(col(CharacterRow.project_id).is_(None), col(CharacterRow.pk))
    )
    return list(rows)


def _project(row: ProjectRow | None, project_id: str, scenes: Sequence[SceneRow]) -> dict[str, Any]:
    if row is None:
        title = scenes[0].title if len(scenes) == 1 and scenes[0].title else project_id
        return {"id": project_id, "title": title}
    out: dict[str, Any] = {"id": row.id, "title": row.title or row.id}
    for key in ("description", "style", "negative"):
        if value := getattr(row, key):
            out[key] = value
    return out


def _scene(row: SceneRow, cast: _Cast) -> dict[str, Any]:
    out: dict[str, Any] = {"id": row.id}
    for key in ("title", "description", "visual_description"):
        if value := getattr(row, key):
            out[key] = value
    mapping = row.character_lora_mapping if isinstance(row.character_lora_mapping, dict) else {}
    ids = [cast.id_for(token, mapping.get(token)) for token in split_names(row.characters)]
    if ids:
        out["characters"] = ids
    if row.fps:
        out["fps"] = row.fps
    if row.frame_count is not None:
        out["frame_count"] = row.frame_count
    out["shots"] = _shots(row)
    return out


def split_names(text: str | None) -> list[str]:
    """The `characters` column: bridge's "mei,haru", the old "Mei", or a JSON list."""
    if not text or not text.strip():
        return []
    text = text.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            items = None
        if isinstance(items, list):
            return [str(i).strip() for i in items if str(i).strip()]
    return [name.strip() for name in text.split(",") if name.strip()]


def _shots(row: SceneRow) -> list[dict[str, Any]]:
    entries = row.shot_list if isinstance(row.shot_list, list) else None
    if entries:
        return [_shot(entry, i) for i, entry in enumerate(entries, 1)]
    action = row.description or row.title or row.visual_description or ""
    return [{"id": f"s{i:02d}", "action": action} for i in range(1, _count(row) + 1)]


def _count(row: SceneRow) -> int:
    """How many shots of the default preset's length make up the scene's frame_count;
    the loader then shares frame_count between them."""
    chosen = PRESETS[DEFAULT_PRESET]
    if not row.frame_count or row.frame_count < 1:
        return 1
    fps = row.fps or chosen.fps
    length = chosen.frames * fps / chosen.fps
    return max(1, math.ceil(row.frame_count / length))


def _shot(entry: Any, index: int) -> dict[str, Any]:
    """One `shot_list` entry: a string, the old system's {description, action, camera,
    duration (seconds)}, or bridge's spec shot object."""
    if not isinstance(entry, dict):
        return {"id": f"s{index:02d}", "action": str(entry)}
    out: dict[str, Any] = {"id": str(entry.get("id") or f"s{index:02d}")}
    for key, value in entry.items():
        if key in _SHOT_KEYS[1:]:
            out[key] = value
        elif key == "description":
            out.setdefault("action", value)
        elif key != "id":
            out[key if str(key).startswith("x-") else f"x-{key}"] = value
    duration = out.get("duration")
    if isinstance(duration, float) or (isinstance(duration, str) and _NUMBER.match(duration)):
        out["duration"] = f"{float(duration):g}s"  # the old system wrote seconds
    return out


_NUMBER = re.compile(r"^[0-9]+(?:\.[0-9]+)?$")


class _Cast:
    """Characters a production's scenes name, found by id or by name in the rows."""

    def __init__(self, rows: Iterable[CharacterRow]) -> None:
        self.rows = list(rows)
        self.used: dict[str, dict[str, Any]] = {}

    def id_for(self, token: str, lora: Any) -> str:
        row = next((r for r in self.rows if r.id == token), None) or next(
            (r for r in self.rows if (r.name or "").casefold() == token.casefold()), None
        )
        cid = (row.id if row is not None else None) or _slug(token)
        entry = self.used.get(cid)
        if entry is None:
            entry = self.used[cid] = _character(row, token)
        if "lora" not in entry and (found := _lora(lora)) is not None:
            entry["lora"] = found
        return cid

    def add_unused(self, project_id: str) -> None:
        """The project's own characters no scene names, so an export keeps them."""
        for row in self.rows:
            if row.project_id == project_id and row.id and row.id not in self.used:
                self.used[row.id] = _character(row, row.id)


def _character(row: CharacterRow | None, token: str) -> dict[str, Any]:
    if row is None:
        return {"name": token}
    out: dict[str, Any] = {"name": row.name or token}
    for key in ("description", "design_prompt", "trigger_words", "reference_image"):
        if value := getattr(row, key):
            out[key] = value
    if isinstance(row.traits, dict) and row.traits:
        out["traits"] = row.traits
    if row.lora_file:
        strength = row.lora_strength if row.lora_strength is not None else 1.0
        out["lora"] = {"file": row.lora_file, "strength": strength}
    return out


def _lora(value: Any) -> dict[str, Any] | None:
    """bridge's {"file", "strength"} or the old system's LoRA name without extension."""
    if isinstance(value, dict) and isinstance(value.get("file"), str):
        return {"file": value["file"], "strength": value.get("strength", 1.0)}
    if isinstance(value, str) and value.strip():
        name = value.strip()
        return {"file": name if name.endswith(_LORA_SUFFIXES) else f"{name}.safetensors"}
    return None


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9_-]+", "-", name.casefold()).strip("-_")
    return slug[:64] or "character"
