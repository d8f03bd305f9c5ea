"""Why a job would run: a structured `Reason` per job, from the store and the output folder.

Pure reading: no backend, no scheduler, so `bridge plan` can ask without importing the
execution stack. Reasons stay values until an edge (the plan listing, the job rows, the
manifest, the API) renders them with `Reason.text`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bridge import outputs
from bridge.plan import Job, Plan
from bridge.templates import Binding, Template

if TYPE_CHECKING:  # the store's engine costs a third of `bridge plan` with no history
    from bridge.db.store import Store


class ReasonKind(StrEnum):
    NEW = "new"  # never rendered
    CACHED = "cached"  # an identical output exists and is intact: not run
    CHANGED = "changed"  # rendered before with other parameters or inputs
    OUTPUT_MISSING = "output missing"  # recorded, but the file is gone or altered
    FORCED = "forced"  # --force


@dataclass(frozen=True, slots=True)
class Reason:
    kind: ReasonKind
    params: tuple[str, ...] = ()  # bound parameters whose values differ from the last render
    inputs: tuple[str, ...] = ()  # upstream jobs rendered again

    @property
    def runs(self) -> bool:
        return self.kind is not ReasonKind.CACHED

    @property
    def text(self) -> str:
        if self.kind is not ReasonKind.CHANGED:
            return self.kind.value
        names = [*self.params, *(f"input {d}" for d in self.inputs)]
        return "changed " + (", ".join(names) if names else "(template or settings)")


NEW = Reason(ReasonKind.NEW)
CACHED = Reason(ReasonKind.CACHED)
FORCED = Reason(ReasonKind.FORCED)
OUTPUT_MISSING = Reason(ReasonKind.OUTPUT_MISSING)


def reasons(
    store: Store,
    plan: Plan,
    root: Path,
    templates: Mapping[str, Template],
    *,
    force: bool = False,
) -> dict[str, Reason]:
    """Why each job would run: cached, new, changed (and what), output missing or forced."""
    if force:
        return dict.fromkeys(plan.order, FORCED)
    assets = store.find_assets(plan.project, (j.hash for j in plan.jobs()))
    previous = store.latest_by_job(plan.project)
    out: dict[str, Reason] = {}
    for job in plan.jobs():  # inputs before the jobs that use them
        asset = assets.get(job.hash)
        if asset is not None and outputs.unchanged(root / asset.path, asset.sha256, asset.bytes):
            out[job.id] = CACHED
        elif asset is not None:
            out[job.id] = OUTPUT_MISSING
        elif job.id in previous:
            old = root / previous[job.id].path
            out[job.id] = Reason(
                ReasonKind.CHANGED,
                params=_changed_params(job, old, templates),
                inputs=tuple(d for d in job.deps if out[d].runs),
            )
        else:
            out[job.id] = NEW
    return out


def as_text(reasons: Mapping[str, Reason]) -> dict[str, str]:
    return {job_id: reason.text for job_id, reason in reasons.items()}


def _changed_params(
    job: Job, old_output: Path, templates: Mapping[str, Template]
) -> tuple[str, ...]:
    """The parameters whose bound values differ from the last render's saved workflow."""
    template = templates.get(job.template or "")
    if template is None:
        return ()
    try:
        old = orjson.loads(old_output.with_suffix(".workflow.json").read_bytes())
    except (OSError, ValueError):
        return ()
    if not isinstance(old, dict):
        return ()
    names = [
        param
        for param, bindings in template.bind.items()
        if param not in ("filename_prefix", "start_image")
        and any(_value(job.workflow, b) != _value(old, b) for b in bindings)
    ]
    if template.lora and _loras(job.workflow, template) != _loras(old, template):
        names.append("loras")
    return tuple(names)


def _value(workflow: Mapping[str, Any], b: Binding) -> Any:
    return workflow.get(b.node, {}).get("inputs", {}).get(b.input)


def _loras(workflow: Mapping[str, Any], template: Template) -> list[str]:
    slot = template.lora
    assert slot is not None
    cls = template.workflow[slot.node]["class_type"]
    return sorted(
        str([n["inputs"].get(slot.name), *(n["inputs"].get(k) for k in slot.strength)])
        for n in workflow.values()
        if isinstance(n, dict) and n.get("class_type") == cls
    )
