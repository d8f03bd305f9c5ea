"""ComfyUI API-format workflows and where a job's parameters go in them.

A template is a workflow exported with "Save (API)" plus bindings: `seed: "3.seed"` says the
seed goes to input `seed` of node `3`. Bundled templates live beside this file as
`NAME.json` + `NAME.yaml`; a spec's own templates use the same keys. Every binding is checked
against the workflow when the template is loaded, so a typo is a spec error with a line and
column, not a 400 from the server an hour into a run.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bridge.errors import Location, SpecError, SpecErrors
from bridge.paths import PathEscape, resolve_inside

HERE = Path(__file__).resolve().parent

PARAMS = (
    "prompt",
    "negative",
    "seed",
    "steps",
    "cfg",
    "sampler",
    "scheduler",
    "denoise",
    "width",
    "height",
    "frames",
    "fps",
    "seconds",
    "context",
    "start_image",
    "filename_prefix",
)
KINDS = ("video", "image")


@dataclass(frozen=True, slots=True)
class Binding:
    node: str
    input: str
    mod: int | None = None  # the value is taken modulo this (a seed into a colour, say)


@dataclass(frozen=True, slots=True)
class LoraSlot:
    """The node that applies one LoRA; it is bypassed for none and chained for several.

    `through` maps an output slot to the input it passes on (LoraLoader: model, clip), so
    with no LoRA its consumers are wired to what fed it. `chain` names the input that takes
    the previous LoRA node (FramePackLoraSelect's prev_lora); with no LoRA the consumers'
    links to it are dropped, which only optional inputs allow.
    """

    node: str
    name: str
    strength: tuple[str, ...]
    through: Mapping[str, str] = field(default_factory=dict)
    chain: str | None = None


@dataclass(frozen=True, slots=True)
class FramesRule:
    """Frame counts a model can make: `step * n + plus`, where step may scale with context."""

    step: int = 1
    plus: int = 0
    tolerance: int = 0
    context_step: int = 0


@dataclass(frozen=True)
class Template:
    name: str
    kind: str
    workflow: Mapping[str, Any]
    bind: Mapping[str, tuple[Binding, ...]]
    output: str
    description: str = ""
    lora: LoraSlot | None = None
    frames: FramesRule = FramesRule()
    fixed_fps: float | None = None
    size_multiple: int = 16  # width and height must divide by this (latent or encoder blocks)
    max_frames: int = 1800  # the longest shot the model can render, at the template's fps
    still: bool = False  # static by design (core-smoke): no frozen-picture check
    source: str = "bundled"

    @property
    def needs_start_image(self) -> bool:
        return "start_image" in self.bind

    @property
    def frames_tolerance(self) -> int:
        return self.frames.tolerance

    @functools.cached_property
    def lora_consumers(self) -> tuple[tuple[str, str, int], ...]:
        """(node, input, output slot) of every link out of the LoRA node."""
        if self.lora is None:
            return ()
        return tuple(
            (nid, key, value[1])
            for nid, n in self.workflow.items()
            for key, value in n["inputs"].items()
            if _is_link(value) and value[0] == self.lora.node
        )

    @functools.cached_property
    def writes(self) -> tuple[tuple[str, tuple[tuple[str, str, int | None], ...]], ...]:
        """The bindings grouped by node, so injecting copies each written node once."""
        by_node: dict[str, list[tuple[str, str, int | None]]] = {}
        for param, bindings in self.bind.items():
            for b in bindings:
                by_node.setdefault(b.node, []).append((param, b.input, b.mod))
        return tuple((nid, tuple(w)) for nid, w in by_node.items())

    @functools.cached_property
    def next_node_id(self) -> int:
        return max((int(k) for k in self.workflow if k.isdigit()), default=0) + 1

    @property
    def class_types(self) -> frozenset[str]:
        return frozenset(n["class_type"] for n in self.workflow.values())


def frames_for(template: Template, frames: int, context: int = 9) -> int:
    """The frame count nearest `frames` that the template's model can produce."""
    rule = template.frames
    step = rule.context_step * context if rule.context_step else rule.step
    if step <= 1 and rule.plus == 0:
        return max(frames, 1)
    return max(1, round(frames / step)) * step + rule.plus


def inject(
    template: Template, params: Mapping[str, Any], loras: tuple[tuple[str, float], ...] = ()
) -> dict[str, Any]:
    """A fresh API prompt: the template with `params` bound and `loras` applied.

    Copy-on-write: nodes nothing is written to are shared with the template, so a job's
    workflow must be treated as read-only (copy a node before changing it).
    """
    workflow = dict(template.workflow)
    copied: set[str] = set()

    def node(nid: str) -> dict[str, Any]:
        if nid not in copied:
            workflow[nid] = {**workflow[nid], "inputs": dict(workflow[nid]["inputs"])}
            copied.add(nid)
        copy: dict[str, Any] = workflow[nid]
        return copy

    for nid, writes in template.writes:
        bound: dict[str, Any] | None = None
        for param, input_name, mod in writes:
            if param in params:
                if bound is None:
                    bound = node(nid)["inputs"]
                value = params[param]
                bound[input_name] = value % mod if mod else value
    slot = template.lora
    if slot is None:
        return workflow
    original = template.workflow[slot.node]
    consumers = template.lora_consumers
    if not loras:
        del workflow[slot.node]
        for nid, key, out in consumers:
            if slot.chain is None:
                node(nid)["inputs"][key] = original["inputs"][slot.through[str(out)]]
            else:
                del node(nid)["inputs"][key]
        return workflow
    next_id = template.next_node_id
    previous = None
    for i, (file, strength) in enumerate(loras):
        nid = slot.node if i == 0 else str(next_id + i - 1)
        inputs: dict[str, Any] = dict(original["inputs"])
        inputs[slot.name] = file
        for key in slot.strength:
            inputs[key] = strength
        if previous is not None:
            if slot.chain is None:
                for slot_out, key in slot.through.items():
                    inputs[key] = [previous, int(slot_out)]
            else:
                inputs[slot.chain] = [previous, 0]
        workflow[nid] = {**original, "inputs": inputs}
        previous = nid
    for nid, key, out in consumers:
        node(nid)["inputs"][key] = [previous, out]
    return workflow


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


# -- loading -------------------------------------------------------------------------------


Locate = Callable[[str], Location]


class _Problems:
    def __init__(self, name: str, base: str, locate: Locate) -> None:
        self.name, self.base, self.locate = name, base, locate
        self.errors: list[SpecError] = []

    def add(self, pointer: str, message: str) -> None:
        ptr = self.base + pointer
        path = ptr.strip("/").replace("/", ".")
        self.errors.append(SpecError(message, self.locate(ptr), path=path))


def parse(
    name: str,
    entry: Mapping[str, Any],
    workflow: Any,
    problems: _Problems,
    source: str,
) -> Template | None:
    """Check `entry`'s bindings against `workflow`; problems go to `problems`."""
    if isinstance(workflow, dict) and ("nodes" in workflow or "links" in workflow):
        problems.add(
            "/workflow",
            "this is a UI-format workflow; in ComfyUI use Workflow > Export (API) "
            '("Save (API)") and point to that file',
        )
        return None
    if not isinstance(workflow, dict) or not workflow:
        problems.add("/workflow", "an API-format workflow is a JSON object of nodes by id")
        return None
    for nid, node in workflow.items():
        if (
            not isinstance(node, dict)
            or not isinstance(node.get("class_type"), str)
            or not isinstance(node.get("inputs"), dict)
        ):
            problems.add(
                "/workflow",
                f"node '{nid}' has no class_type and inputs; is this an API-format export?",
            )
            return None

    def binding(pointer: str, raw: Any) -> Binding | None:
        mod = None
        if isinstance(raw, dict):
            mod = raw.get("mod")
            raw = raw.get("to")
            if not isinstance(raw, str) or not (mod is None or isinstance(mod, int)):
                problems.add(pointer, 'a binding object is {to: "node.input", mod: N}')
                return None
        if not isinstance(raw, str) or "." not in raw:
            problems.add(pointer, f'\'{raw}\' is not "node.input" (e.g. "3.seed")')
            return None
        nid, _, input_name = raw.partition(".")
        node = workflow.get(nid)
        if node is None:
            problems.add(
                pointer,
                f"node '{nid}' is not in the workflow (nodes: {_list(workflow)})",
            )
            return None
        if input_name not in node["inputs"]:
            problems.add(
                pointer,
                f"node '{nid}' ({node['class_type']}) has no input '{input_name}' "
                f"(inputs: {_list(node['inputs'])})",
            )
            return None
        if _is_link(node["inputs"][input_name]):
            problems.add(
                pointer,
                f"'{raw}' is a link from node '{node['inputs'][input_name][0]}'; "
                "bind a widget value instead",
            )
            return None
        return Binding(nid, input_name, mod)

    bind: dict[str, tuple[Binding, ...]] = {}
    raw_bind = entry.get("bind") or {}
    for param, targets in raw_bind.items():
        pointer = f"/bind/{param}"
        if param not in PARAMS:
            problems.add(
                pointer,
                f"unknown parameter '{param}' (parameters: {', '.join(PARAMS)})",
            )
            continue
        items = targets if isinstance(targets, list) else [targets]
        found = [
            b
            for i, t in enumerate(items)
            if (b := binding(f"{pointer}/{i}" if isinstance(targets, list) else pointer, t))
        ]
        if len(found) == len(items):
            bind[param] = tuple(found)

    kind = entry.get("kind", "video")
    output = entry.get("output")
    if output is None and "filename_prefix" in bind:
        output = bind["filename_prefix"][0].node
    if output is None:
        problems.add(
            "/bind",
            "bind filename_prefix (or name the output node with `output`) so the result "
            "can be found",
        )
    elif str(output) not in workflow:
        problems.add("/output", f"output node '{output}' is not in the workflow")

    lora = None
    if entry.get("lora") is not None:
        lora = _lora(entry["lora"], workflow, problems)
    frames_raw = entry.get("frames") or {}
    if problems.errors:
        return None
    return Template(
        name=name,
        kind=kind,
        workflow=workflow,
        bind=bind,
        output=str(output),
        description=entry.get("description", ""),
        lora=lora,
        frames=FramesRule(**frames_raw),
        fixed_fps=entry.get("fixed_fps"),
        size_multiple=int(entry.get("size_multiple", 16)),
        max_frames=int(entry.get("max_frames", 1800)),
        still=bool(entry.get("still", False)),
        source=source,
    )


def _lora(raw: Any, workflow: Mapping[str, Any], problems: _Problems) -> LoraSlot | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("node"), str | int):
        problems.add("/lora", "lora is {node, name, strength, through | chain}")
        return None
    nid = str(raw["node"])
    node = workflow.get(nid)
    if node is None:
        problems.add("/lora/node", f"node '{nid}' is not in the workflow")
        return None
    strength = raw.get("strength") or []
    strength = (strength,) if isinstance(strength, str) else tuple(strength)
    through = {str(k): str(v) for k, v in (raw.get("through") or {}).items()}
    chain = raw.get("chain")
    name = raw.get("name", "lora_name")
    for key in (name, *strength):
        if key not in node["inputs"]:
            problems.add("/lora", f"node '{nid}' ({node['class_type']}) has no input '{key}'")
    for key in through.values():
        if not _is_link(node["inputs"].get(key)):
            problems.add("/lora/through", f"input '{key}' of node '{nid}' is not a link")
    if not through and chain is None:
        problems.add("/lora", "say how to bypass the node: `through` or `chain`")
    return LoraSlot(nid, name, strength, through, chain)


def _list(items: Mapping[str, Any]) -> str:
    keys = sorted(items, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
    return ", ".join(keys[:12]) + (", ..." if len(keys) > 12 else "")


def load_user_template(
    name: str, entry: Mapping[str, Any], folder: Path, locate: Locate
) -> Template:
    """A spec's own template: its workflow file read and its bindings checked."""
    problems = _Problems(name, f"/templates/{name}", locate)
    rel = entry["workflow"]
    try:
        path = resolve_inside(folder, rel)
    except PathEscape:
        problems.add("/workflow", f"'{rel}' is outside the spec's folder")
        raise SpecErrors(problems.errors) from None
    try:
        workflow = json.loads(path.read_bytes())
    except FileNotFoundError:
        problems.add(
            "/workflow", f"file not found: '{rel}' (paths are relative to the spec's folder)"
        )
    except (OSError, ValueError) as exc:
        problems.add("/workflow", f"'{rel}' is not readable JSON: {exc}")
    else:
        template = parse(name, entry, workflow, problems, source=rel)
        if template is not None:
            return template
    raise SpecErrors(problems.errors)


def _nowhere(file: str, pointer: str) -> Location:
    return Location(file, None, None, pointer)


@functools.cache
def bundled() -> Mapping[str, Template]:
    """The templates shipped with bridge, by name; a broken one is a bug, raised loudly."""
    out: dict[str, Template] = {}
    for meta in sorted(HERE.glob("*.yaml")):
        entry = yaml.safe_load(meta.read_text())
        workflow = json.loads(meta.with_suffix(".json").read_text())
        problems = _Problems(meta.stem, "", functools.partial(_nowhere, str(meta)))
        template = parse(meta.stem, entry, workflow, problems, source="bundled")
        if template is None:
            raise SpecErrors(problems.errors)
        out[meta.stem] = template
    return out
