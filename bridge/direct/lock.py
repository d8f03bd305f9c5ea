"""The direction file (SPEC.direction.yaml): a lock file of every generated field.

Per scene and role it keeps the fields, `made_from` (a short hash of each input they were
made from, plus the role prompt's version), `director` and `sum` (a hash of the fields as
written). Inputs that no longer hash the same make the role stale, with the names as the
reason; fields whose `sum` no longer matches were edited by hand and are kept. Keys are
written in one fixed order, block style, so a Git diff shows one line per changed field.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from bridge.direct.roles import NAMES
from bridge.errors import DirectionError
from bridge.hashing import digest

LOCK_VERSION = 1
CACHE = Path.home() / ".cache" / "bridge" / "direction"
CACHE_COPIES = 256  # the newest parsed lock files kept
_SUFFIX = ".direction.yaml"
_HEADER = (
    "# Direction for {spec}, written by `bridge direct`: review it like code.\n"
    "# A field you edit here is kept (its role's `sum` no longer matches); `bridge direct`\n"
    "# redoes only roles whose `made_from` inputs changed.\n"
)
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_META = ("director", "note", "edited", "made_from", "sum", "call")


@dataclass(frozen=True)
class Entry:
    """One role's fields for one scene, and what they were made from."""

    director: str
    made_from: Mapping[str, str]
    fields: Mapping[str, Any]
    sum: str
    note: str = ""
    edited: bool = False  # marked by hand, or its fields no longer match `sum`
    call: Mapping[str, Any] = field(default_factory=dict)


def is_lock_file(path: str | Path) -> bool:
    """Whether `path` names a direction file (SPEC.direction.yaml), not a spec."""
    return Path(path).name.endswith(_SUFFIX)


def spec_path_of(lock_file: str | Path) -> Path:
    """The spec a direction file belongs to (it sits beside it, `.yaml` assumed)."""
    p = Path(lock_file)
    return p.with_name(p.name.removesuffix(_SUFFIX) + ".yaml")


def lock_path(spec_path: str | Path) -> Path:
    p = Path(spec_path)
    stem = p.name.rsplit(".", 1)[0] if p.suffix in (".yaml", ".yml") else p.name
    return p.with_name(stem + _SUFFIX)


def short(value: Any) -> str:
    return digest(value)[:12]


def fields_sum(fields: Mapping[str, Any]) -> str:
    return short(dict(fields))


def made_from(inputs: Mapping[str, Any], names: tuple[str, ...], version: str) -> dict[str, str]:
    """The hashes of exactly the inputs a role reads, and its prompt's version."""
    return {**{n: short(inputs.get(n)) for n in names}, "prompt": version}


def stale_reasons(entry: Entry, current: Mapping[str, str]) -> list[str]:
    """'visual_description changed', ... for each input that no longer hashes the same."""
    reasons = []
    for name, value in current.items():
        if entry.made_from.get(name) != value:
            what = "role prompt" if name == "prompt" else name
            reasons.append(f"{what} changed")
    return reasons


def _parse(path: Path, text: str) -> Any:
    """The YAML, from a JSON copy keyed by the text's hash when there is one.

    PyYAML builds a 200-scene lock file in about 0.3 s; the copy reads in milliseconds, so
    a fresh lock adds almost nothing to `bridge plan`. A missing or unreadable copy is
    simply rebuilt: it is a cache, never the truth.
    """
    key = hashlib.sha256(text.encode()).hexdigest()
    cached = CACHE / f"{key}.json"
    try:
        return orjson.loads(cached.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        pass
    try:
        data = yaml.load(text, Loader=_Loader) or {}
    except yaml.YAMLError as exc:
        raise DirectionError(f"{path} is not valid YAML: {exc}") from None
    try:
        CACHE.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=CACHE, prefix=".", suffix=".json")
        with os.fdopen(fd, "wb") as fh:
            fh.write(orjson.dumps(data))
        os.replace(tmp, cached)
        copies = sorted(CACHE.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for stale in copies[:-CACHE_COPIES]:
            stale.unlink(missing_ok=True)
    except (OSError, TypeError):
        pass  # no cache: the next read parses the YAML again
    return data


def read(path: Path) -> dict[str, dict[str, Entry]]:
    """Entries by scene id and role; a missing file is empty, a broken one an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise DirectionError(f"cannot read {path}: {exc.strerror}") from None
    data = _parse(path, text)
    if not isinstance(data, dict) or not isinstance(data.get("scenes", {}), dict):
        raise DirectionError(f"{path}: expected 'version: 1' and a 'scenes' mapping")
    if data.get("version", LOCK_VERSION) != LOCK_VERSION:
        raise DirectionError(f"{path}: unsupported direction file version {data['version']!r}")
    out: dict[str, dict[str, Entry]] = {}
    for scene_id, roles in (data.get("scenes") or {}).items():
        if not isinstance(roles, dict):
            raise DirectionError(f"{path}: scene '{scene_id}' must be a mapping of roles")
        out[str(scene_id)] = {}
        for name, body in roles.items():
            if name not in NAMES or not isinstance(body, dict):
                raise DirectionError(
                    f"{path}: scene '{scene_id}': '{name}' is not a role "
                    f"({', '.join(NAMES)}) with fields"
                )
            fields = {k: v for k, v in body.items() if k not in _META}
            written = str(body.get("sum", ""))
            out[str(scene_id)][name] = Entry(
                director=str(body.get("director", "")),
                made_from={str(k): str(v) for k, v in (body.get("made_from") or {}).items()},
                fields=fields,
                sum=written,
                note=str(body.get("note") or ""),
                edited=bool(body.get("edited")) or fields_sum(fields) != written,
                call=dict(body.get("call") or {}),
            )
    return out


def dump(entries: Mapping[str, Mapping[str, Entry]], spec_name: str) -> str:
    scenes: dict[str, Any] = {}
    for scene_id in sorted(entries):
        roles = entries[scene_id]
        scenes[scene_id] = {}
        for name in NAMES:
            if name not in roles:
                continue
            e = roles[name]
            body: dict[str, Any] = {"director": e.director}
            if e.note:
                body["note"] = e.note
            if e.edited:
                body["edited"] = True
            body["made_from"] = dict(e.made_from)
            body["sum"] = e.sum
            if e.call:
                body["call"] = dict(e.call)
            body.update(e.fields)
            scenes[scene_id][name] = body
    text = yaml.dump(
        {"version": LOCK_VERSION, "scenes": scenes},
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=1_000_000,
        default_flow_style=False,
    )
    return _HEADER.format(spec=spec_name) + text


def write(path: Path, entries: Mapping[str, Mapping[str, Entry]], spec_name: str) -> None:
    """Atomically: a reader never sees half a lock file."""
    text = dump(entries, spec_name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DirectionError(f"cannot write {path}: {exc.strerror}") from None
    _parse(path, text)  # so the next `bridge plan` finds the parsed copy
