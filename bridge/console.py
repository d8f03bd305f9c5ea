"""The only module that writes to the terminal: messages, error lines, plan tables.

Formatting is split from writing so the front doors (CLI, watch folder, API) can reuse the
same text — a rejected spec's .errors.txt reads exactly like `bridge validate`.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

import networkx as nx

from bridge.errors import SpecError
from bridge.freshness import NEW, Reason
from bridge.plan import JobKind, Plan

ERROR_FORMATS = ("text", "json", "github")


def out(text: str = "", stream: TextIO | None = None) -> None:
    print(text, file=stream or sys.stdout, flush=True)


def err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def spec_errors(errors: Sequence[SpecError], fmt: str = "text") -> str:
    """Spec errors as text lines, a JSON document, or GitHub Actions annotations."""
    if fmt == "json":
        return json.dumps([error_record(e) for e in errors], indent=2)
    if fmt == "github":
        return "\n".join(_annotation(e) for e in errors)
    return "\n".join(str(e) for e in errors)


def error_record(e: SpecError) -> dict[str, Any]:
    w = e.where
    return {
        "file": w.file if w else None,
        "line": w.line if w else None,
        "column": w.column if w else None,
        "pointer": w.pointer if w else "",
        "path": e.path,
        "message": e.message,
    }


def _annotation(e: SpecError) -> str:
    def esc(text: str, prop: bool = False) -> str:
        text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        return text.replace(":", "%3A").replace(",", "%2C") if prop else text

    w = e.where
    props = [f"file={esc(w.file or '', True)}"] if w and w.file else []
    if w and w.line:
        props.append(f"line={w.line}")
        if w.column:
            props.append(f"col={w.column}")
    props.append("title=bridge spec")
    body = f"{e.path}: {e.message}" if e.path else e.message
    return f"::error {','.join(props)}::{esc(body)}"


def plan_summary(plan: Plan, reasons: Mapping[str, Reason] | None = None) -> dict[str, Any]:
    """Counts by kind, stages, and the video to render, as plain data for JSON or text."""
    from bridge import lengths  # the plan path has loaded the templates already

    reasons = reasons or {}
    jobs = list(plan.jobs())
    kinds = Counter(j.kind.value for j in jobs)
    renders = [j for j in jobs if j.kind is JobKind.RENDER and j.expect]
    todo = [j for j in renders if reasons.get(j.id, NEW).runs]
    position = {job_id: i for i, job_id in enumerate(plan.order)}
    stages = [sorted(s, key=position.__getitem__) for s in nx.topological_generations(plan.graph)]
    return {
        "project": plan.project,
        "spec": plan.meta.get("spec"),
        "jobs": len(jobs),
        "by_kind": {k.value: kinds.get(k.value, 0) for k in JobKind},
        "frames_to_render": sum(j.expect.frames or 0 for j in todo if j.expect),
        "seconds_to_render": round(sum(j.expect.seconds or 0 for j in todo if j.expect), 3),
        "cached": sum(1 for r in reasons.values() if not r.runs),
        "stages": [
            [
                {
                    "id": job_id,
                    "kind": plan.job(job_id).kind.value,
                    "template": plan.job(job_id).template,
                    "expect": _expect(plan, job_id),
                    "length": lengths.note(plan.job(job_id).meta),
                    "hash": plan.job(job_id).hash,
                    "reason": reasons.get(job_id, NEW).text,
                }
                for job_id in stage
            ]
            for stage in stages
        ],
    }


def _expect(plan: Plan, job_id: str) -> str:
    e = plan.job(job_id).expect
    if e is None:
        return ""
    if e.kind == "image":
        return f"{e.width}x{e.height} still"
    return f"{e.width}x{e.height} {e.frames}f @ {e.fps:g}fps"


def plan_text(summary: dict[str, Any]) -> str:
    kinds = ", ".join(f"{n} {k}" for k, n in summary["by_kind"].items() if n)
    lines = [
        f"{summary['project']}: {summary['jobs']} jobs ({kinds})",
        f"to render: {summary['frames_to_render']} frames, "
        f"{summary['seconds_to_render']:g} s of video"
        + (f"; {summary['cached']} jobs cached" if summary["cached"] else ""),
    ]
    width = max((len(j["id"]) for s in summary["stages"] for j in s), default=0)
    for n, stage in enumerate(summary["stages"], 1):
        lines.append(f"stage {n}:")
        for j in stage:
            template = j["template"] or "(local)"
            lines.append(f"  {j['id']:<{width}}  {template:<14} {j['expect']:<26} {j['reason']}")
            if j["length"]:
                lines.append(f"  {'':<{width}}  ! {j['length']}")
    return "\n".join(lines)


def plan_dot(plan: Plan) -> str:
    lines = ["digraph plan {", "  rankdir=LR;", '  node [shape=box, fontname="Helvetica"];']
    for job in plan.jobs():
        lines.append(f'  "{job.id}" [label="{job.id}\\n{job.template or job.kind.value}"];')
    lines.extend(f'  "{u}" -> "{v}";' for u, v in sorted(plan.graph.edges))
    lines.append("}")
    return "\n".join(lines)


def bullet(items: Iterable[str]) -> str:
    return "\n".join(f"  - {i}" for i in items)


class Progress:
    """Live job progress: a rich display on a terminal, timestamped lines otherwise.

    Subscribed to the run's event bus; it only reads events, so a display problem can
    never change what the run does.
    """

    def __init__(self, total: int, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.total = total
        self.done = 0
        self.live = self.stream.isatty() if live is None else live
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        if self.live:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description:<34}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._overall = self._bar.add_task("all jobs", total=total)
            self._bar.start()

    def line(self, text: str) -> None:
        from datetime import datetime

        stamp = datetime.now().strftime("%H:%M:%S")
        if self._bar is not None:
            self._bar.console.print(f"{stamp} {text}", highlight=False, markup=False)
        else:
            print(f"{stamp} {text}", file=self.stream, flush=True)

    def __call__(self, event: Any) -> None:
        from bridge import events as ev

        name = type(event).__name__
        job_id = getattr(event, "job_id", "")
        if isinstance(event, ev.JobStarted):
            if self._bar is not None:
                self._tasks[job_id] = self._bar.add_task(job_id, total=None)
            suffix = f" (attempt {event.attempt})" if event.attempt > 1 else ""
            self.line(f"start  {job_id}{suffix}")
        elif isinstance(event, ev.JobProgress):
            if self._bar is not None and job_id in self._tasks:
                self._bar.update(self._tasks[job_id], completed=event.value, total=event.max)
        elif isinstance(event, ev.JobFailed) and not event.final:
            self.line(f"retry  {job_id}: {event.error}")
        else:
            labels = {
                "JobSucceeded": "done  ",
                "JobCached": "cached",
                "JobFailed": "FAILED",
                "JobSkipped": "skip  ",
            }
            if name not in labels:
                return
            self.done += 1
            detail = ""
            if isinstance(event, ev.JobSucceeded):
                detail = f" in {event.seconds:.1f} s"
            elif isinstance(event, ev.JobFailed):
                detail = f": {event.error}"
            elif isinstance(event, ev.JobSkipped):
                detail = f" ({event.because} failed)"
            if self._bar is not None:
                task = self._tasks.pop(job_id, None)
                if task is not None:
                    self._bar.remove_task(task)
                self._bar.update(self._overall, completed=self.done)
            self.line(f"{labels[name]} {job_id}{detail}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def counts(by_state: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in by_state.items()) or "nothing to do"
