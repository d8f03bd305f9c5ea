"""YAML text → plain data plus the line and column of every value.

PyYAML's `safe_load` forgets positions and silently keeps the last of two duplicate keys, so
the spec is composed into nodes and converted here, with guards against hostile input: a
size cap, a nesting cap, and a cap on the values aliases expand to (alias bombs, "billion
laughs"), measured on the node graph before anything is expanded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bridge.errors import Location, SpecError, SpecErrors

MAX_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 1_000_000

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_constructor = yaml.constructor.SafeConstructor()
_SCALARS = {
    "tag:yaml.org,2002:null": lambda n: None,
    "tag:yaml.org,2002:bool": _constructor.construct_yaml_bool,
    "tag:yaml.org,2002:int": _constructor.construct_yaml_int,
    "tag:yaml.org,2002:float": _constructor.construct_yaml_float,
}
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Document:
    """A loaded spec: its data, where each value and key sits, and its file."""

    data: Any
    file: str
    positions: dict[str, tuple[int, int]] = field(repr=False)
    key_positions: dict[str, tuple[int, int]] = field(repr=False)
    text: str = field(repr=False, default="")
    base: Path | None = None  # where relative paths resolve, when not beside `file`

    @property
    def folder(self) -> Path:
        return self.base or Path(self.file).resolve().parent

    def locate(self, pointer: str, *, key: bool = False) -> Location:
        """The position of `pointer`, or of its nearest ancestor that has one."""
        table = self.key_positions if key else self.positions
        probe = pointer
        while True:
            pos = table.get(probe) or self.positions.get(probe)
            if pos is not None:
                return Location(self.file, pos[0], pos[1], pointer)
            if not probe:
                return Location(self.file, None, None, pointer)
            probe = probe.rsplit("/", 1)[0]


def escape(token: str | int) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def load_file(path: str | Path, display: str | None = None) -> Document:
    """Read and load a spec file; every failure is a SpecErrors naming the file."""
    name = display or str(path)
    p = Path(path)
    try:
        with p.open("rb") as fh:  # bounded whatever stat() says (devices report 0)
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise _one("no such file", name) from None
    except IsADirectoryError:
        raise _one("is a directory, not a spec file", name) from None
    except PermissionError:
        raise _one("permission denied", name) from None
    return load_bytes(raw, name)


def load_bytes(raw: bytes, file: str = "<spec>", base: Path | None = None) -> Document:
    if len(raw) > MAX_BYTES:
        raise _one(f"spec is {len(raw):,} bytes; the limit is {MAX_BYTES:,}", file)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecErrors(
            [
                SpecError(
                    f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8",
                    Location(file, line, column),
                )
            ]
        ) from None
    return load_text(text.removeprefix("\ufeff"), file, base)


def load_text(text: str, file: str = "<spec>", base: Path | None = None) -> Document:
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "invalid YAML"
        if exc.context and exc.context_mark is not None and exc.problem_mark is not None:
            problem = f"{problem} ({exc.context} at line {exc.context_mark.line + 1})"
        where = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file)
        raise SpecErrors([SpecError(f"YAML syntax: {problem}", where)]) from None
    except yaml.YAMLError as exc:
        raise SpecErrors([SpecError(f"YAML syntax: {exc}", Location(file))]) from None
    if node is None:
        raise _one("the file is empty; a spec starts with 'version: 1'", file)
    if "&" in text or "*" in text:  # only anchors and aliases can expand; depth is checked below
        _check_size(node, file)
    walker = _Walker(file)
    data = walker.convert(node, "", 0)
    if walker.errors:
        raise SpecErrors(walker.errors)
    return Document(data, file, walker.positions, walker.key_positions, text, base)


def _check_size(root: yaml.Node, file: str) -> None:
    """Reject nesting too deep, self-containing aliases and alias bombs before converting.

    Sizes are memoised per node, so this costs one visit per distinct node however much the
    aliases would expand.
    """
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        known = sizes.get(id(node))
        if known is not None:
            if known < 0:
                raise _at("an alias refers to the collection that contains it", node, file)
            return known
        if depth > MAX_DEPTH:
            raise _at(f"nesting deeper than {MAX_DEPTH} levels", node, file)
        if isinstance(node, yaml.ScalarNode):
            return 1
        sizes[id(node)] = -1
        children = (
            node.value
            if isinstance(node, yaml.SequenceNode)
            else (child for pair in node.value for child in pair)
        )
        total = 1 + sum(size(child, depth + 1) for child in children)
        if total > MAX_VALUES:
            raise _at(
                f"aliases expand to more than {MAX_VALUES:,} values (an alias bomb?)", node, file
            )
        sizes[id(node)] = total
        return total

    size(root, 0)


def _at(message: str, node: yaml.Node, file: str) -> SpecErrors:
    mark = node.start_mark
    return SpecErrors([SpecError(message, Location(file, mark.line + 1, mark.column + 1))])


def _one(message: str, file: str) -> SpecErrors:
    return SpecErrors([SpecError(message, Location(file))])


class _Walker:
    def __init__(self, file: str) -> None:
        self.file = file
        self.positions: dict[str, tuple[int, int]] = {}
        self.key_positions: dict[str, tuple[int, int]] = {}
        self.errors: list[SpecError] = []

    def _where(self, node: yaml.Node) -> Location:
        return Location(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def convert(self, node: yaml.Node, pointer: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise _at(f"nesting deeper than {MAX_DEPTH} levels", node, self.file)
        self.positions[pointer] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return [
                self.convert(item, f"{pointer}/{i}", depth + 1) for i, item in enumerate(node.value)
            ]
        assert isinstance(node, yaml.MappingNode)
        return self._mapping(node, pointer, depth)

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        build = _SCALARS.get(node.tag)
        if build is None:
            # Strings, and also timestamps and binaries kept as the text the user wrote.
            return node.value
        try:
            value = build(node)
        except (ValueError, yaml.YAMLError):
            return node.value
        if isinstance(value, float) and not math.isfinite(value):
            # Every number in a spec passes here, so no check downstream sees NaN or infinity.
            self.errors.append(
                SpecError(
                    f"{node.value} is not a finite number; write a number such as 1.5 "
                    f"(or quote it, '{node.value}', if you mean the text)",
                    self._where(node),
                )
            )
        return value

    def _mapping(self, node: yaml.MappingNode, pointer: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        # Merged ('<<') keys first, so keys written out in this mapping override them.
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE:
                continue
            sources = (
                value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            )
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    self.errors.append(SpecError("'<<' merges only mappings", self._where(source)))
                    continue
                for k, v in self._mapping(source, pointer, depth + 1).items():
                    out.setdefault(k, v)
        explicit: dict[str, tuple[int, int]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.errors.append(SpecError("a key must be plain text", self._where(key_node)))
                continue
            key = key_node.value if key_node.tag == _STR else str(self._scalar(key_node))
            if key in explicit:
                self.errors.append(
                    SpecError(
                        f"duplicate key '{key}' (first defined at line {explicit[key][0]})",
                        self._where(key_node),
                    )
                )
                continue
            child = f"{pointer}/{escape(key)}"
            explicit[key] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            self.key_positions[child] = explicit[key]
            out[key] = self.convert(value_node, child, depth + 1)
        return out
