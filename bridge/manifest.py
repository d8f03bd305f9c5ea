"""The results manifest: one JSON document beside the outputs saying what a run made.

It follows schemas/manifest.schema.json, paths in it are relative to the manifest's folder
(the project's output folder), and it is replaced atomically, so a reader never sees half.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bridge.outputs import atomic_write_json
from bridge.plan import JobKind, Plan
from bridge.states import JobState

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class OutputFile:
    path: Path
    sha256: str
    bytes: int
    probe: Mapping[str, Any] | None = None
    quality: Mapping[str, Any] | None = None
    workflow: Path | None = None


@dataclass(frozen=True)
class JobResult:
    """What a finished job left behind; the first file is its main output."""

    files: tuple[OutputFile, ...]
    server: str | None = None
    prompt_id: str | None = None
    seconds: float | None = None
    attempts: int = 1
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def main(self) -> Path:
        return self.files[0].path


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def build(
    plan: Plan,
    *,
    root: Path,
    run: Mapping[str, Any],
    states: Mapping[str, str],
    results: Mapping[str, JobResult],
    errors: Mapping[str, str],
) -> dict[str, Any]:
    base = root.resolve()
    prefixes = [f"{under}/" for under in (root, base) if under.is_absolute()]

    def rel(p: Path | None) -> str | None:
        """Relative to the output root; a path spelled under it is taken as it is (a
        600-job run's 1,200 resolves were most of its manifest's time)."""
        if p is None:
            return None
        text = str(p)
        if ".." not in p.parts:
            for prefix in prefixes:
                if text.startswith(prefix):
                    return text[len(prefix) :]
        try:
            return p.resolve().relative_to(base).as_posix()
        except ValueError:
            return str(p)

    jobs = []
    videos: dict[str, str] = {}
    for job in plan.jobs():
        result = results.get(job.id)
        outputs = [
            {
                "path": rel(f.path),
                "sha256": f.sha256,
                "bytes": f.bytes,
                "probe": dict(f.probe) if f.probe else None,
                "quality": dict(f.quality) if f.quality else None,
                "workflow": rel(f.workflow),
            }
            for f in (result.files if result else ())
        ]
        if job.kind is JobKind.ASSEMBLE and result and result.files:
            videos[job.scene or "project"] = rel(result.main) or ""
        jobs.append(
            {
                "id": job.id,
                "kind": job.kind.value,
                "scene": job.scene,
                "shot": job.shot,
                "state": str(states.get(job.id, JobState.PENDING)),
                "hash": job.hash,
                "template": job.template,
                "server": result.server if result else None,
                "prompt_id": result.prompt_id if result else None,
                "attempts": result.attempts if result else 0,
                "seconds": round(result.seconds, 3) if result and result.seconds else None,
                "error": errors.get(job.id),
                "expect": asdict(job.expect) if job.expect else None,
                "outputs": outputs,
                "meta": dict(job.meta),
            }
        )
    counts = Counter(j["state"] for j in jobs)
    return {
        "manifest_version": MANIFEST_VERSION,
        "project": {"id": plan.project, "title": plan.meta.get("title", plan.project)},
        "spec": {"file": plan.meta.get("spec"), "revision": plan.meta.get("revision")},
        "run": {**run, "counts": dict(sorted(counts.items()))},
        "jobs": jobs,
        "videos": videos,
    }


def write(root: Path, manifest: Mapping[str, Any]) -> Path:
    """manifest.json describes the latest run; runs/<id>.json keeps each run's own."""
    atomic_write_json(run_path(root, manifest["run"]["id"]), manifest)
    path = root / MANIFEST_NAME
    atomic_write_json(path, manifest)
    return path


def run_path(root: Path, run_id: str | int) -> Path:
    return root / "runs" / f"{run_id}.json"
