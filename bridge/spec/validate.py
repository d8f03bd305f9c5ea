"""Schema and semantic checks of a loaded spec; every problem is reported, in file order.

The schema (schemas/spec.schema.json) catches shapes and types; the semantic pass catches
what a schema cannot: duplicate ids, references that do not resolve, loops, durations that
do not fit their scene, files outside the spec's folder, and template bindings. Both passes
always run and their errors are reported together, so a user fixes a spec in one round.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import networkx as nx

from bridge import gcpause
from bridge.errors import CycleError, SpecError, SpecErrors
from bridge.paths import PathEscape, resolve_inside
from bridge.presets import DEFAULT_PRESET, PRESETS
from bridge.spec.load import Document, escape, load_file
from bridge.spec.model import (
    DEFAULT_MOTION,
    Spec,
    build,
    parse_duration,
    parse_ref,
    preset_of,
    scene_shots,
)
from bridge.templates import Template, bundled, load_user_template

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "spec.schema.json"
SPEC_VERSION = 1
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
    with SCHEMA_PATH.open(encoding="utf-8") as fh:
        loaded: dict[str, Any] = json.load(fh)
    return loaded


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


def load_spec(path: str | Path, display: str | None = None) -> Spec:
    """Load, check and build a spec; raises SpecErrors with every problem found."""
    with gcpause.paused():
        return validate(load_file(path, display))


def validate(doc: Document) -> Spec:
    checker = _Checker(doc)
    checker.run()
    if checker.errors:
        raise SpecErrors(checker.errors)
    revision = hashlib.sha256(doc.text.encode()).hexdigest()
    return build(doc.data, doc.file, doc.folder, revision, checker.templates)


def display_path(pointer: str) -> str:
    """'/scenes/0/shots/1/seed' → 'scenes[0].shots[1].seed'."""
    out = ""
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        out += f"[{token}]" if token.isdigit() else (f".{token}" if out else token)
    return out


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
        self.user_templates()
        self.characters()
        self.scenes()

    # -- schema ----------------------------------------------------------------

    def schema_errors(self) -> None:
        for err in _validator().iter_errors(self.data):
            self._translate(err)

    def _translate(self, err: jsonschema.ValidationError) -> None:
        pointer = "".join(f"/{escape(p)}" for p in err.absolute_path)
        v, inst, sch = err.validator, err.instance, err.schema
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
        v, inst, sch, arg = err.validator, err.instance, err.schema, err.validator_value
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
        return err.message

    # -- semantics ---------------------------------------------------------------

    def user_templates(self) -> None:
        entries = self.data.get("templates")
        if not isinstance(entries, dict):
            return
        for name, entry in entries.items():
            if not isinstance(entry, dict) or "workflow" not in entry or "bind" not in entry:
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
            if isinstance(char, dict) and isinstance(char.get("reference_image"), str):
                self.file(f"/characters/{escape(cid)}/reference_image", char["reference_image"])

    def _ids(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        """Shot ids per scene id, and the pointer of each scene, for well-formed scenes."""
        shots: dict[str, list[str]] = {}
        pointers: dict[str, str] = {}
        scenes = self.data.get("scenes")
        for i, sc in enumerate(scenes if isinstance(scenes, list) else []):
            if not isinstance(sc, dict) or not isinstance(sc.get("id"), str):
                continue
            ptr = f"/scenes/{i}"
            if sc["id"] in pointers:
                first = self.doc.locate(pointers[sc["id"]] + "/id")
                self.error(
                    f"{ptr}/id",
                    f"duplicate scene id '{sc['id']}' (first used at line {first.line})",
                )
                continue
            pointers[sc["id"]] = ptr
            if "shots" in sc and "shot_list" in sc:
                self.error(ptr, "give either 'shots' or 'shot_list', not both")
            elif "shots" not in sc and "shot_list" not in sc:
                self.error(ptr, "a scene needs 'shots' (or the 'shot_list' shorthand)")
            ids: list[str] = []
            for j, sh in enumerate(self._shots(sc)):
                if not isinstance(sh, dict) or not isinstance(sh.get("id"), str):
                    continue
                if sh["id"] in ids:
                    first = self.doc.locate(f"{ptr}/shots/{ids.index(sh['id'])}/id")
                    self.error(
                        f"{ptr}/shots/{j}/id",
                        f"duplicate shot id '{sh['id']}' in scene '{sc['id']}' "
                        f"(first used at line {first.line})",
                    )
                ids.append(sh["id"])
            shots[sc["id"]] = ids
        return shots, pointers

    @staticmethod
    def _shots(scene: Mapping[str, Any]) -> list[Any]:
        if isinstance(scene.get("shots"), list):
            return list(scene["shots"])
        if isinstance(scene.get("shot_list"), list) and "shots" not in scene:
            return scene_shots({"shot_list": [s for s in scene["shot_list"] if s]})
        return []

    def scenes(self) -> None:
        shots, pointers = self._ids()
        chars = self.data.get("characters")
        char_ids = set(chars) if isinstance(chars, dict) else set()
        defaults = self.data.get("defaults") if isinstance(self.data.get("defaults"), dict) else {}
        self.preset(defaults, "/defaults")
        self.template_ref(defaults.get("keyframe"), "/defaults/keyframe", "image")
        self.template_ref(defaults.get("motion"), "/defaults/motion", "video")
        graph: nx.DiGraph = nx.DiGraph()
        edge_at: dict[tuple[str, str], str] = {}
        for scene_id, ptr in pointers.items():
            sc = self.data["scenes"][int(ptr.rsplit("/", 1)[1])]
            self.char_refs(sc.get("characters"), f"{ptr}/characters", char_ids)
            self.preset(sc, ptr)
            self.template_ref(sc.get("template"), f"{ptr}/template", "video")
            for j, sh in enumerate(self._shots(sc)):
                if not isinstance(sh, dict) or not isinstance(sh.get("id"), str):
                    continue
                sp = f"{ptr}/shots/{j}"
                key = f"{scene_id}/{sh['id']}"
                graph.add_node(key)
                self.char_refs(sh.get("characters"), f"{sp}/characters", char_ids)
                self.preset(sh, sp)
                motion = sh.get("template") or sc.get("template") or defaults.get("motion")
                self.template_ref(sh.get("template"), f"{sp}/template", "video")
                self.template_ref(sh.get("keyframe"), f"{sp}/keyframe", "image")
                if isinstance(sh.get("start_image"), str):
                    self.file(f"{sp}/start_image", sh["start_image"])
                    if "continue_from" in sh:
                        self.error(
                            f"{sp}/continue_from",
                            "a shot starts from either 'start_image' or 'continue_from', not both",
                        )
                refs: list[tuple[str, str]] = []
                if isinstance(sh.get("continue_from"), str):
                    refs.append((f"{sp}/continue_from", sh["continue_from"]))
                    self.takes_start_image(motion, f"{sp}/continue_from")
                after = sh.get("after")
                for k, ref in enumerate(after if isinstance(after, list) else []):
                    if isinstance(ref, str):
                        refs.append((f"{sp}/after/{k}", ref))
                for ref_ptr, ref in refs:
                    target = self.shot_ref(ref, scene_id, sh["id"], shots, ref_ptr)
                    if target is not None:
                        graph.add_edge(target, key)
                        edge_at.setdefault((target, key), ref_ptr)
            self.durations(sc, ptr, defaults)
        self.cycles(graph, edge_at)

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
        template = self.templates.get(motion or DEFAULT_MOTION)
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
        self, ref: str, scene_id: str, shot_id: str, shots: dict[str, list[str]], ptr: str
    ) -> str | None:
        target_scene, target_shot = parse_ref(ref, scene_id)
        if target_scene not in shots:
            self.error(
                ptr,
                f"unknown scene '{target_scene}' in '{ref}' (scenes: {_one_of(shots)})"
                + did_you_mean(target_scene, shots),
            )
            return None
        if target_shot not in shots[target_scene]:
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

    def durations(self, sc: Mapping[str, Any], ptr: str, defaults: Mapping[str, Any]) -> None:
        frame_count = sc.get("frame_count")
        if not isinstance(frame_count, int) or isinstance(frame_count, bool):
            return
        preset = sc.get("preset") or defaults.get("preset") or DEFAULT_PRESET
        fps = (
            sc.get("fps")
            or defaults.get("fps")
            or preset_of(preset if preset in PRESETS else None).fps
        )
        if not isinstance(fps, int | float) or fps <= 0:
            return
        explicit: list[tuple[str, int]] = []
        open_shots = 0
        for sh in self._shots(sc):
            if not isinstance(sh, dict):
                return
            duration = sh.get("duration", defaults.get("duration"))
            try:
                frames = parse_duration(duration, fps) if duration is not None else None
            except (AssertionError, TypeError):
                return  # malformed duration: the schema reported it
            if frames is None:
                open_shots += 1
            else:
                explicit.append((str(sh.get("id")), frames))
        total = sum(f for _, f in explicit)
        parts = " + ".join(f"{i} {f}" for i, f in explicit)
        where = f"{ptr}/frame_count"
        if total > frame_count:
            self.error(
                where,
                f"shot durations add up to {total} frames ({parts}) but the scene's "
                f"frame_count is {frame_count} (at {fps:g} fps)",
            )
        elif open_shots and frame_count - total < open_shots:
            self.error(
                where,
                f"frame_count {frame_count} leaves {frame_count - total} frames for "
                f"{open_shots} shots without a duration",
            )
        elif not open_shots and total != frame_count:
            self.error(
                where,
                f"shot durations add up to {total} frames ({parts}) but the scene's "
                f"frame_count is {frame_count}; lengthen a shot, or drop a shot's duration "
                "to let it fill the rest",
            )

    def cycles(self, graph: nx.DiGraph, edge_at: dict[tuple[str, str], str]) -> None:
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

    def file(self, ptr: str, rel: str) -> None:
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
            return
        if not path.exists():
            self.error(ptr, f"file not found: '{rel}' (paths are relative to the spec's folder)")
        elif not path.is_file():
            self.error(ptr, f"'{rel}' is not a file")
