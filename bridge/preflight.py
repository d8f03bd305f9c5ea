"""Check a plan against a server's /object_info before anything is queued.

Every node class must exist, every combo input (sampler, scheduler, LoRA, checkpoint, ...)
must hold a value the server offers, and number inputs must be within range. All problems of
all jobs are collected into one report, grouped so that 300 shots using one missing LoRA
read as one line, not 300.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from bridge.errors import PreflightError
from bridge.plan import Job


def combo_options(spec: Any) -> list[Any] | None:
    """The allowed values of an input spec, for V1 `[[...], {...}]` and V3 `["COMBO", {...}]`."""
    if not isinstance(spec, list | tuple) or not spec:
        return None
    head = spec[0]
    if isinstance(head, list):
        return head
    if head == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        options = spec[1].get("options")
        return list(options) if isinstance(options, list) else None
    return None


def _input_specs(info: Mapping[str, Any]) -> dict[str, Any]:
    inputs = info.get("input", {})
    return {**inputs.get("required", {}), **inputs.get("optional", {})}


def problems_for(workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> list[str]:
    """Problems of one bare workflow (a template before binding), ungrouped."""
    grouped: dict[str, list[str]] = defaultdict(list)
    _collect(workflow, object_info, None, "template", grouped)
    return list(grouped)


def problems(jobs: Iterable[Job], object_info: Mapping[str, Any]) -> list[str]:
    """Every way the jobs' workflows would fail validation on this server, grouped."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for job in jobs:
        skip = (job.start_image.node, job.start_image.input) if job.start_image else None
        _collect(job.workflow, object_info, skip, job.id, grouped)
    return [_group(message, job_ids) for message, job_ids in grouped.items()]


def _collect(
    workflow: Mapping[str, Any],
    object_info: Mapping[str, Any],
    skip: tuple[str, str] | None,
    job_id: str,
    grouped: dict[str, list[str]],
) -> None:
    for node_id, node in workflow.items():
        cls = node.get("class_type")
        info = object_info.get(cls)
        if info is None:
            grouped[f"node class '{cls}' is not installed on the server"].append(job_id)
            continue
        specs = _input_specs(info)
        required = info.get("input", {}).get("required", {})
        inputs = node.get("inputs", {})
        for name in required:
            if name not in inputs:
                grouped[f"{cls}.{name} is required but not set"].append(job_id)
        for name, value in inputs.items():
            if (node_id, name) == skip or isinstance(value, list):
                continue  # bound at run time, or a link
            message = _check_value(cls, name, value, specs.get(name))
            if message:
                grouped[message].append(job_id)


def _check_value(cls: str, name: str, value: Any, spec: Any) -> str | None:
    if spec is None:
        return None
    options = combo_options(spec)
    if options is not None:
        if value in options:
            return None
        if not options:
            return f"{cls}.{name}: '{value}' is not available (the server has none installed)"
        shown = ", ".join(map(str, options[:8])) + (", ..." if len(options) > 8 else "")
        return f"{cls}.{name}: '{value}' is not available (server has: {shown})"
    limits = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(value, int | float) and not isinstance(value, bool):
        low, high = limits.get("min"), limits.get("max")
        if low is not None and value < low:
            return f"{cls}.{name}: {value} is below the minimum {low}"
        if high is not None and value > high:
            return f"{cls}.{name}: {value} is above the maximum {high}"
    return None


def _group(message: str, job_ids: list[str]) -> str:
    unique = list(dict.fromkeys(job_ids))
    if len(unique) <= 3:
        return f"{message} (needed by {', '.join(unique)})"
    return f"{message} (needed by {', '.join(unique[:3])} and {len(unique) - 3} more)"


def check(jobs: Iterable[Job], object_info: Mapping[str, Any], server: str) -> None:
    found = problems(jobs, object_info)
    if found:
        raise PreflightError(f"{server}: {p}" for p in found)
