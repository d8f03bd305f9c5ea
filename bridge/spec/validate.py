"""Schema and semantic checks of a loaded spec; every problem is reported, in file order.

The schema (bridge/schemas/spec.schema.json) catches shapes and types; the semantic pass catches
what a schema cannot: duplicate ids, references that do not resolve, loops, durations that
do not fit their scene, files outside the spec's folder, and template bindings. Both passes
always run and their errors are reported together, so a user fixes a spec in one round; the
semantic pass sees every value the schema refused (unknown keys included) as REJECTED, so it
never builds anything from data already reported.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema_rs
import networkx as nx

from bridge import gcpause, lengths
from bridge.direct.merge import merge_direction
from bridge.errors import CycleError, SpecError, SpecErrors
from bridge.paths import PathEscape, resolve_inside
from bridge.presets import PRESETS, Preset
from bridge.spec.images import NotAnImage, image_size, size_problem
from bridge.spec.load import Document, escape, load_file
from bridge.spec.model import REJECTED, Spec, build, normalise, parse_ref
from bridge.templates import Template, bundled, load_user_template

if TYPE_CHECKING:
    import jsonschema

SPEC_VERSION = 1
MAX_FRAME_PIXELS = 2048 * 2048  # past this, video models run out of memory on a 24 GB card
_DRIVE = re.compile(r"^[A-Za-z]:")
_JSON_TYPES = {
    dict: "a mapping",
    list: "a list",
    str: "text",
    bool: "true/false",
    int: "a whole number",
    float: "a number",
    type(None): "nothing (null)",
}
_WANTED = {
    "object": "a mapping",
    "array": "a list",
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


@functools.cache
def schema() -> dict[str, Any]:
    """The spec schema shipped inside the package (schemas/ at the top is its published copy)."""
    text = resources.files("bridge").joinpath("schemas", "spec.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@functools.cache
def _fast() -> Any:
    """A compiled (Rust) validator: one pass over a 10,000-shot spec in milliseconds."""
    return jsonschema_rs.validator_for(schema())


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    """The Python validator, whose errors carry what messages need; run only on a failure."""
    import jsonschema

    return jsonschema.Draft202012Validator(schema())


def _schema_of(err: jsonschema.ValidationError) -> Mapping[str, Any]:
    """The sub-schema an error is about (always a mapping in the spec schema)."""
    return err.schema if isinstance(err.schema, Mapping) else {}


def _schema_valid(data: Any) -> bool:
    try:
        return bool(_fast().is_valid(data))
    except (ValueError, TypeError, OverflowError):
        return False  # let the Python validator say what is wrong


def load_spec(path: str | Path, display: str | None = None) -> Spec:
    """Load, merge its direction file, check and build; SpecErrors with every problem found."""
    with gcpause.paused():
        return validate(merge_direction(load_file(path, display), path))


def validate(doc: Document) -> Spec:
    checker = _Checker(doc)
    checker.run()
    if checker.errors:
        raise SpecErrors(checker.errors)
    revision = hashlib.sha256(doc.text.encode()).hexdigest()
    spec = build(checker.norm, doc.data, doc.file, doc.folder, revision, checker.templates)
    unkept = [
        SpecError(
            why,
            doc.locate(f"/scenes/{i}/frame_count"),
            path=display_path(f"/scenes/{i}/frame_count"),
        )
        for i, scene in enumerate(spec.scenes)
        if (why := lengths.unkept(scene, spec.templates))
    ]
    if unkept:
        raise SpecErrors(unkept)
    return spec


def _without(data: Any, paths: list[list[str | int]]) -> Any:
    """`data` with the value at each path replaced by REJECTED; copies only along the paths."""
    if not paths:
        return data
    if [] in paths:
        return REJECTED
    if isinstance(data, dict):
        out = dict(data)
        for key, rest in _group(paths).items():
            if key in out:
                out[key] = _without(out[key], rest)
        return out
    if isinstance(data, list):
        items = list(data)
        for key, rest in _group(paths).items():
            if isinstance(key, int) and key < len(items):
                items[key] = _without(items[key], rest)
        return items
    return REJECTED


def _group(paths: list[list[str | int]]) -> dict[str | int, list[list[str | int]]]:
    groups: dict[str | int, list[list[str | int]]] = {}
    for path in paths:
        groups.setdefault(path[0], []).append(path[1:])
    return groups


def display_path(pointer: str) -> str:
    """'/scenes/0/shots/1/seed' → 'scenes[0].shots[1].seed'."""
    out = ""
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        out += f"[{token}]" if token.isdigit() else (f".{token}" if out else token)
    return out


def model_name_problem(name: str) -> str | None:
    """Why a model or LoRA file name could leave the server's model folders, if it could;
    subfolders ('characters/mei.safetensors') are fine."""
    if "\x00" in name:
        return "contains a NUL byte"
    if "\\" in name:
        return "uses a backslash; write subfolders with '/' (characters/mei.safetensors)"
    relative = "name it relative to the server's models folder, e.g. characters/mei.safetensors"
    if name.startswith("/"):
        return f"is an absolute path; {relative}"
    if _DRIVE.match(name):
        return f"starts with a drive letter; {relative}"
    parts = name.split("/")
    if ".." in parts:
        return f"climbs out of the server's models folder with '..'; {relative}"
    if "" in parts or "." in parts:
        return f"has an empty or '.' folder name; {relative}"
    return None


def did_you_mean(word: str, options: Iterable[str]) -> str:
    match = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def _one_of(options: Iterable[str]) -> str:
    items = sorted(options)
    if not items:
        return "none are defined"
    return ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")


class _Checker:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.data = doc.data
        self.errors: list[SpecError] = []
        self.templates: dict[str, Template] = dict(bundled())
        self.rejected: set[str] = set()
        self.norm: dict[str, Any] = {}

    def error(
        self, pointer: str, message: str, *, key: bool = False, cls: type = SpecError
    ) -> None:
        self.errors.append(
            cls(message, self.doc.locate(pointer, key=key), path=display_path(pointer))
        )

    def run(self) -> None:
        if not isinstance(self.data, dict):
            found = _JSON_TYPES.get(type(self.data), type(self.data).__name__)
            self.error("", f"a spec is a mapping (version, project, scenes, ...), not {found}")
            return
        version = self.data.get("version")
        if "version" in self.data and version != SPEC_VERSION:
            self.error(
                "/version",
                f"unsupported spec version {version!r}; this bridge reads version "
                f"{SPEC_VERSION} (a newer bridge may read it)",
            )
            return
        self.schema_errors()
        self.norm = normalise(self.data)
        self.user_templates()
        self.characters()
        self.scenes()

    # -- schema ----------------------------------------------------------------

    def schema_errors(self) -> None:
        if _schema_valid(self.data):
            return
        rejected: list[list[str | int]] = []
        for err in _validator().iter_errors(self.data):
            self._translate(err)
            path = list(err.absolute_path)
            if err.validator == "additionalProperties" and isinstance(err.instance, dict):
                allowed = set(err.schema.get("properties", {}))
                rejected.extend(
                    [*path, k] for k in err.instance if k not in allowed and not k.startswith("x-")
                )
            elif err.validator == "required":
                if path:  # incomplete: nothing is built from it, but its keys are checked
                    self.rejected.add("".join(f"/{escape(p)}" for p in path))
            else:
                rejected.append(path)
        for path in rejected:
            self.rejected.add("".join(f"/{escape(p)}" for p in path))
        self.data = _without(self.data, rejected)

    def rejected_under(self, pointer: str) -> bool:
        """Whether the schema refused `pointer`, something in it, or something it is in."""
        return any(
            r == pointer or r.startswith(pointer + "/") or pointer.startswith(r + "/")
            for r in self.rejected
        )

    def _translate(self, err: jsonschema.ValidationError) -> None:
        pointer = "".join(f"/{escape(p)}" for p in err.absolute_path)
        v, inst, sch = err.validator, err.instance, _schema_of(err)
        if v == "additionalProperties" and isinstance(inst, dict):
            allowed = set(sch.get("properties", {}))
            for name in inst:
                if name in allowed or name.startswith("x-"):
                    continue
                hint = did_you_mean(name, allowed) or f"; allowed: {_one_of(allowed)}"
                self.error(f"{pointer}/{escape(name)}", f"unknown key '{name}'{hint}", key=True)
            return
        if v == "required":
            missing = err.message.split("'")[1] if "'" in err.message else err.message
            self.error(pointer, f"missing required key '{missing}'")
            return
        if v == "propertyNames":
            name = str(inst)
            message = sch.get("x-message") or err.message
            self.error(f"{pointer}/{escape(name)}", f"'{name}': {message}", key=True)
            return
        self.error(pointer, self._message(err))

    def _message(self, err: jsonschema.ValidationError) -> str:
        v, sch = err.validator, _schema_of(err)
        inst: Any = err.instance
        arg: Any = err.validator_value
        found = _JSON_TYPES.get(type(inst), type(inst).__name__)
        shown = repr(inst) if isinstance(inst, str | int | float) else found
        if sch.get("x-message") and v in ("pattern", "anyOf", "oneOf"):
            return f"{shown} is not valid: {sch['x-message']}"
        if v == "type":
            wanted = " or ".join(_WANTED[t] for t in ([arg] if isinstance(arg, str) else arg))
            return f"expected {wanted}, got {found}" + (
                f" {inst!r}" if isinstance(inst, str | int | float) else ""
            )
        if v == "const":
            return f"must be {arg!r}, not {inst!r}"
        if v == "enum":
            return f"{inst!r} is not one of {', '.join(map(str, arg))}" + did_you_mean(
                str(inst), map(str, arg)
            )
        if v == "pattern":
            if arg.startswith("^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"):
                return (
                    f"{shown} is not a valid id: use letters, digits, '-' and '_' "
                    "(up to 64, starting with a letter or digit)"
                )
            return f"{shown} does not match the pattern {arg}"
        bounds = {
            "minimum": "at least",
            "maximum": "at most",
            "exclusiveMinimum": "more than",
            "exclusiveMaximum": "less than",
        }
        if v in bounds:
            return f"{inst} is out of range: must be {bounds[v]} {arg}"
        if v == "multipleOf":
            return f"{inst} must be a multiple of {arg}"
        if v == "minItems":
            return "must not be empty" if arg == 1 else f"needs at least {arg} items"
        if v == "minLength":
            return "must not be empty"
        if v == "maxLength":
            return f"is {len(inst)} characters long; the limit is {arg}"
        if v == "uniqueItems":
            dupes = sorted({repr(x) for x in inst if inst.count(x) > 1})
            return f"lists {', '.join(dupes)} more than once"
        return str(err.message)

    # -- semantics ---------------------------------------------------------------

    def user_templates(self) -> None:
        entries = self.data.get("templates")
        if not isinstance(entries, dict):
            return
        for name, entry in entries.items():
            ptr = f"/templates/{escape(name)}"
            if not isinstance(entry, dict) or self.rejected_under(ptr):
                continue  # the schema reported it
            if name in self.templates:
                self.error(
                    f"/templates/{escape(name)}",
                    f"'{name}' is a bundled template; give yours another name",
                    key=True,
                )
                continue
            try:
                self.templates[name] = load_user_template(
                    name, entry, self.doc.folder, self.doc.locate
                )
            except SpecErrors as exc:
                self.errors.extend(exc.errors)

    def characters(self) -> None:
        chars = self.data.get("characters")
        if not isinstance(chars, dict):
            return
        for cid, char in chars.items():
            if not isinstance(char, dict):
                continue
            ptr = f"/characters/{escape(cid)}"
            if isinstance(char.get("reference_image"), str):
                self.image(f"{ptr}/reference_image", char["reference_image"])
            lora = char.get("lora")
            if isinstance(lora, dict) and isinstance(lora.get("file"), str):
                problem = model_name_problem(lora["file"])
                if problem:
                    self.error(f"{ptr}/lora/file", f"'{lora['file']}' {problem}")

    def _ids(self) -> tuple[dict[str, list[str]], dict[str, int]]:
        """Shot ids per scene id, and the index of each scene, for well-formed scenes."""
        shots: dict[str, list[str]] = {}
        indexes: dict[str, int] = {}
        raw = self.data.get("scenes")
        scenes = self.norm.get("scenes") if isinstance(raw, list) else None
        for i, sc in enumerate(scenes if isinstance(scenes, list) else []):
            if not isinstance(sc, dict) or not isinstance(sc.get("id"), str):
                continue
            ptr = f"/scenes/{i}"
            if sc["id"] in indexes:
                first = self.doc.locate(f"/scenes/{indexes[sc['id']]}/id")
                self.error(
                    f"{ptr}/id",
                    f"duplicate scene id '{sc['id']}' (first used at line {first.line})",
                )
                continue
            indexes[sc["id"]] = i
            if "shots" in raw[i] and "shot_list" in raw[i]:
                self.error(ptr, "give either 'shots' or 'shot_list', not both")
            elif "shots" not in raw[i] and "shot_list" not in raw[i]:
                self.error(ptr, "a scene needs 'shots' (or the 'shot_list' shorthand)")
            ids: list[str] = []
            first_at: dict[str, int] = {}
            for j, sh in enumerate(sc["shots"]):
                if not isinstance(sh, dict) or not isinstance(sh.get("id"), str):
                    continue
                if sh["id"] in first_at:
                    first = self.doc.locate(f"{ptr}/shots/{first_at[sh['id']]}/id")
                    self.error(
                        f"{ptr}/shots/{j}/id",
                        f"duplicate shot id '{sh['id']}' in scene '{sc['id']}' "
                        f"(first used at line {first.line})",
                    )
                else:
                    first_at[sh["id"]] = j
                ids.append(sh["id"])
            shots[sc["id"]] = ids
        return shots, indexes

    def scenes(self) -> None:
        shots, indexes = self._ids()
        known = {scene: set(ids) for scene, ids in shots.items()}
        chars = self.data.get("characters")
        char_ids = set(chars) if isinstance(chars, dict) else set()
        defaults = self.data.get("defaults") if isinstance(self.data.get("defaults"), dict) else {}
        self.preset(defaults, "/defaults")
        self.template_ref(defaults.get("keyframe"), "/defaults/keyframe", "image")
        self.template_ref(defaults.get("motion"), "/defaults/motion", "video")
        graph: nx.DiGraph[str] = nx.DiGraph()
        edge_at: dict[tuple[str, str], str] = {}
        for scene_id, index in indexes.items():
            ptr = f"/scenes/{index}"
            sc = self.norm["scenes"][index]
            self.char_refs(sc.get("characters"), f"{ptr}/characters", char_ids)
            self.preset(self.data["scenes"][index], ptr)
            self.template_ref(sc.get("template"), f"{ptr}/template", "video")
            for j, sh in enumerate(sc["shots"]):
                if not isinstance(sh, dict) or not isinstance(sh.get("id"), str):
                    continue
                sp = f"{ptr}/shots/{j}"
                key = f"{scene_id}/{sh['id']}"
                graph.add_node(key)
                written = self._written(index, j)
                self.char_refs(written.get("characters"), f"{sp}/characters", char_ids)
                self.preset(written, sp)
                self.template_ref(written.get("template"), f"{sp}/template", "video")
                self.template_ref(written.get("keyframe"), f"{sp}/keyframe", "image")
                if isinstance(sh.get("start_image"), str):
                    self.image(f"{sp}/start_image", sh["start_image"])
                    if "continue_from" in sh:
                        self.error(
                            f"{sp}/continue_from",
                            "a shot starts from either 'start_image' or 'continue_from', not both",
                        )
                refs: list[tuple[str, str]] = []
                if isinstance(sh.get("continue_from"), str):
                    refs.append((f"{sp}/continue_from", sh["continue_from"]))
                    self.takes_start_image(sh["template"], f"{sp}/continue_from")
                after = sh.get("after")
                for k, ref in enumerate(after if isinstance(after, list) else []):
                    if isinstance(ref, str):
                        refs.append((f"{sp}/after/{k}", ref))
                for ref_ptr, ref in refs:
                    target = self.shot_ref(ref, scene_id, sh["id"], known, shots, ref_ptr)
                    if target is not None:
                        graph.add_edge(target, key)
                        edge_at.setdefault((target, key), ref_ptr)
                self.shot_limits(sc, sh, sp, defaults)
            self.durations(sc, ptr)
        self.cycles(graph, edge_at)

    def _written(self, scene: int, shot: int) -> Mapping[str, Any]:
        """The shot as the user wrote it (no defaults), or {} for a shot_list entry."""
        raw = self.data["scenes"][scene].get("shots")
        if isinstance(raw, list) and shot < len(raw) and isinstance(raw[shot], dict):
            written: Mapping[str, Any] = raw[shot]
            return written
        return {}

    def preset(self, obj: Mapping[str, Any], ptr: str) -> None:
        name = obj.get("preset")
        if isinstance(name, str) and name not in PRESETS:
            self.error(
                f"{ptr}/preset",
                f"unknown preset '{name}' (presets: {_one_of(PRESETS)})"
                + did_you_mean(name, PRESETS),
            )

    def template_ref(self, name: Any, ptr: str, kind: str) -> None:
        if not isinstance(name, str):
            return
        template = self.templates.get(name)
        if template is None:
            user = self.data.get("templates")
            if isinstance(user, dict) and name in user:
                return  # defined but broken: its own errors were reported
            self.error(
                ptr,
                f"unknown template '{name}' (templates: {_one_of(self.templates)})"
                + did_you_mean(name, self.templates),
            )
        elif template.kind != kind:
            article = "an" if kind == "image" else "a"
            needed = f"{article} {kind} template is needed here"
            self.error(ptr, f"template '{name}' makes a {template.kind}; {needed}")

    def takes_start_image(self, motion: Any, ptr: str) -> None:
        template = self.templates.get(motion) if isinstance(motion, str) else None
        if template is not None and not template.needs_start_image:
            self.error(
                ptr,
                f"template '{template.name}' takes no start image, so it cannot continue from "
                "another shot; use an image-to-video template (framepack-i2v, wan-i2v)",
            )

    def char_refs(self, refs: Any, ptr: str, known: set[str]) -> None:
        for i, ref in enumerate(refs if isinstance(refs, list) else []):
            if isinstance(ref, str) and ref not in known:
                self.error(
                    f"{ptr}/{i}",
                    f"unknown character '{ref}' (characters: {_one_of(known)})"
                    + did_you_mean(ref, known),
                )

    def shot_ref(
        self,
        ref: str,
        scene_id: str,
        shot_id: str,
        known: dict[str, set[str]],
        shots: dict[str, list[str]],
        ptr: str,
    ) -> str | None:
        target_scene, target_shot = parse_ref(ref, scene_id)
        if target_scene not in known:
            self.error(
                ptr,
                f"unknown scene '{target_scene}' in '{ref}' (scenes: {_one_of(shots)})"
                + did_you_mean(target_scene, shots),
            )
            return None
        if target_shot not in known[target_scene]:
            self.error(
                ptr,
                f"unknown shot '{target_shot}' (scene '{target_scene}' has "
                f"{_one_of(shots[target_scene])})" + did_you_mean(target_shot, shots[target_scene]),
            )
            return None
        if (target_scene, target_shot) == (scene_id, shot_id):
            self.error(ptr, f"shot '{shot_id}' cannot depend on itself")
            return None
        return f"{target_scene}/{target_shot}"

    def durations(self, sc: Mapping[str, Any], ptr: str) -> None:
        frame_count = sc.get("frame_count")
        fps = sc.get("fps")
        if not isinstance(frame_count, int) or isinstance(frame_count, bool):
            return
        if not isinstance(fps, int | float) or fps <= 0:
            return
        explicit: list[tuple[str, int]] = []
        open_shots: list[Mapping[str, Any]] = []
        for sh in sc["shots"]:
            if not isinstance(sh, dict) or sh["frames"] is REJECTED or sh["frames"] == 0:
                return  # reported where the shot or its duration is
            if sh["frames"] is None:
                open_shots.append(sh)
            else:
                explicit.append((str(sh.get("id")), sh["frames"]))
        total = sum(f for _, f in explicit)
        parts = " + ".join(f"{i} {f}" for i, f in explicit)
        where = f"{ptr}/frame_count"
        if total > frame_count:
            self.error(
                where,
                f"shot durations add up to {total} frames ({parts}) but the scene's "
                f"frame_count is {frame_count} (at {fps:g} fps)",
            )
        elif open_shots and frame_count - total < len(open_shots):
            self.error(
                where,
                f"frame_count {frame_count} leaves {frame_count - total} frames for "
                f"{len(open_shots)} shots without a duration",
            )
        elif not open_shots and total != frame_count:
            self.error(
                where,
                f"shot durations add up to {total} frames ({parts}) but the scene's "
                f"frame_count is {frame_count}; lengthen a shot, or drop a shot's duration "
                "to let it fill the rest",
            )
        elif open_shots:
            share = -(-(frame_count - total) // len(open_shots))
            for sh in open_shots:
                self.length(sh, share, fps, where, f"frame_count {frame_count} gives it ")

    def length(
        self, sh: Mapping[str, Any], frames: int, fps: float, where: str, given: str = ""
    ) -> None:
        """A shot no longer than its template can render (the cap is the template's)."""
        template = self.templates.get(sh["template"])
        if template is None or template.kind != "video":
            return
        model_fps = template.fixed_fps or fps
        if round(frames / fps * model_fps) <= template.max_frames:
            return
        cap = template.max_frames / model_fps
        self.error(
            where,
            f"shot '{sh['id']}' is too long: {given}{frames / fps:.1f} s ({frames} frames at "
            f"{fps:g} fps); template '{template.name}' renders at most {cap:.1f} s "
            f"({template.max_frames} frames at {model_fps:g} fps); split it into shots "
            "joined with continue_from",
        )

    def shot_limits(
        self, sc: Mapping[str, Any], sh: Mapping[str, Any], sp: str, defaults: Mapping[str, Any]
    ) -> None:
        """What would otherwise fail only on the GPU: lengths, sizes, prompts."""
        fps = sc.get("fps")
        written = "duration" in sh
        where = f"{sp}/duration" if written else "/defaults/duration"
        preset = PRESETS.get(sh["preset"])
        if isinstance(fps, int | float) and fps > 0 and sh["frames"] is not REJECTED:
            frames = sh["frames"]
            if frames == 0:
                shown = sh["duration"] if written else defaults.get("duration")
                self.error(
                    where,
                    f"duration {shown!r} is 0 frames at {fps:g} fps; a shot needs at least "
                    "one frame: write a length like '2s' or '48f'",
                )
            elif frames is not None:
                self.length(sh, frames, fps, where)
            elif sc.get("frame_count") is None and preset is not None:
                self.length(
                    sh, round(preset.frames * fps / preset.fps), fps, sp, "its preset gives it "
                )
        if preset is not None:
            self.size(sh, sp, preset)
        self.prompt(sc, sh, sp)

    def size(self, sh: Mapping[str, Any], sp: str, preset: Preset) -> None:
        params: Mapping[str, Any] = sh["params"] if isinstance(sh.get("params"), dict) else {}
        width, height = params.get("width", preset.width), params.get("height", preset.height)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (width, height)):
            return
        if width * height > MAX_FRAME_PIXELS:
            self.error(
                f"{sp}/params",
                f"{width}x{height} is {width * height / 1e6:.1f} megapixels a frame; the limit "
                f"is {MAX_FRAME_PIXELS / 1e6:.1f} (about 2048x2048): render smaller and upscale",
            )
        render = self.templates.get(sh["template"])
        used = [render]
        if (
            render is not None
            and render.needs_start_image
            and "start_image" not in sh
            and "continue_from" not in sh
        ):
            used.append(self.templates.get(sh["keyframe"]))
        for template in used:
            if template is None:
                continue
            step = template.size_multiple
            for name, value in (("width", width), ("height", height)):
                if value % step == 0:
                    continue
                at = f"{sp}/params/{name}" if name in params else f"{sp}/preset"
                lower, upper = value - value % step, value - value % step + step
                self.error(
                    at,
                    f"{name} {value} is not a multiple of {step}, which template "
                    f"'{template.name}' needs; use {lower or upper} or {upper}",
                )
                return

    def prompt(self, sc: Mapping[str, Any], sh: Mapping[str, Any], sp: str) -> None:
        """A prompt written out is not empty and keeps the trigger words of the shot's LoRAs.

        A composed prompt always has them; one with nothing at all to compose from is allowed,
        as minimal specs (and title cards on core-smoke) rely on it.
        """
        chars = self.data.get("characters") if isinstance(self.data.get("characters"), dict) else {}
        cast = [
            chars[c]
            for c in (sh["characters"] if isinstance(sh["characters"], list) else [])
            if isinstance(c, str) and isinstance(chars.get(c), dict)
        ]
        template = self.templates.get(sh["template"])
        if template is None or "prompt" not in template.bind:
            return
        prompt = sh.get("prompt")
        if isinstance(prompt, str):
            if not prompt.strip():
                self.error(
                    f"{sp}/prompt",
                    "the prompt is empty; write what the shot shows, or leave 'prompt' out to "
                    "compose one from the style, scene, characters and action",
                )
                return
            for char in cast:
                words = char.get("trigger_words")
                if not isinstance(words, list) or "lora" not in char:
                    continue
                for word in words:
                    if isinstance(word, str) and word.lower() not in prompt.lower():
                        self.error(
                            f"{sp}/prompt",
                            f"the prompt leaves out '{word}', the trigger word of "
                            f"{char.get('name')}'s LoRA; add it to the prompt, or take the "
                            "character out of the shot's characters",
                        )

    def cycles(self, graph: nx.DiGraph[str], edge_at: dict[tuple[str, str], str]) -> None:
        for component in nx.strongly_connected_components(graph):
            if len(component) < 2:
                continue
            cycle = nx.find_cycle(graph.subgraph(component))
            path = [u for u, _ in cycle] + [cycle[0][0]]
            scenes = {p.split("/")[0] for p in path}
            names = path if len(scenes) > 1 else [p.split("/", 1)[1] for p in path]
            self.error(
                edge_at[cycle[-1][0], cycle[-1][1]],
                "dependency cycle: " + " -> ".join(names),
                cls=CycleError,
            )

    def image(self, ptr: str, rel: str) -> None:
        path = self.file(ptr, rel)
        if path is None:
            return
        try:
            kind, width, height = image_size(path)
        except NotAnImage as exc:
            self.error(ptr, f"'{rel}' {exc}; give a PNG, JPEG or WebP picture")
            return
        except OSError as exc:
            self.error(ptr, f"'{rel}' cannot be read: {exc.strerror}")
            return
        problem = size_problem(width, height)
        if problem:
            self.error(ptr, f"'{rel}' ({kind}) {problem}")

    def file(self, ptr: str, rel: str) -> Path | None:
        """The file `rel` names inside the spec's folder, or None after reporting why not."""
        try:
            path = resolve_inside(self.doc.folder, rel)
        except PathEscape as exc:
            if "\x00" in rel:
                self.error(ptr, str(exc))
            else:
                self.error(
                    ptr,
                    f"'{rel}' is outside the spec's folder; "
                    "files a spec uses must live beside it or below it",
                )
            return None
        if not path.exists():
            self.error(ptr, f"file not found: '{rel}' (paths are relative to the spec's folder)")
        elif not path.is_file():
            self.error(ptr, f"'{rel}' is not a file")
        else:
            return path
        return None
