"""A static HTML report of one run, beside its manifest: what a director opens first.

Per scene a contact sheet (a strip of thumbnails per shot), the probe facts, quality scores
with their reasons, timings per job and server, and links to every file. It is one HTML
file with relative links and inline CSS, so it opens from disk with no server, and can be
copied or zipped with the outputs.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bridge import lengths, media
from bridge.outputs import atomic_write_bytes
from bridge.states import JobState

REPORT_NAME = "report.html"
THUMBS = "thumbs"

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2rem;color:#1d1d28;background:#fafafc}
h1{margin:0 0 .2rem}h2{margin-top:2rem;border-bottom:1px solid #ccd}
.banner{background:#ffe08a;padding:.6rem 1rem;border-radius:6px;font-weight:600}
table{border-collapse:collapse;width:100%;margin:.5rem 0}
td,th{border-bottom:1px solid #e3e3ea;padding:.3rem .5rem;text-align:left;vertical-align:top}
.strip{white-space:nowrap}.strip img{height:72px;margin-right:2px;border-radius:3px}
.ok{color:#1b7f3b}.bad{color:#b3261e}.muted{color:#777}
.state-failed,.state-skipped,.state-cancelled{color:#b3261e;font-weight:600}
"""


async def write(manifest: Mapping[str, Any], folder: Path) -> Path:
    """Render the report for `manifest` (whose paths are relative to `folder`)."""
    thumbs: dict[str, list[str]] = {}
    for job in manifest["jobs"]:
        out = (job.get("outputs") or [None])[0]
        if not out or job["state"] not in (JobState.SUCCEEDED, JobState.CACHED):
            continue
        path = folder / out["path"]
        if job["kind"] in ("render", "assemble") and path.suffix == ".mp4" and path.exists():
            frames = ((out.get("probe") or {}).get("frames")) or None
            made = await media.thumbnails(
                path, folder / THUMBS / _slug(job["id"]), count=4, frames=frames
            )
            thumbs[job["id"]] = [p.relative_to(folder).as_posix() for p in made]
        elif path.suffix == ".png" and path.exists():
            thumbs[job["id"]] = [out["path"]]
    target = folder / REPORT_NAME
    atomic_write_bytes(target, render(manifest, thumbs).encode())
    return target


def _slug(job_id: str) -> str:
    return job_id.replace(":", "-").replace("/", "-")


def render(manifest: Mapping[str, Any], thumbs: Mapping[str, list[str]]) -> str:
    e = html.escape
    run = manifest["run"]
    project = manifest["project"]
    jobs = manifest["jobs"]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{e(project.get('title') or project['id'])}: run {e(str(run['id']))}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{e(project.get('title') or project['id'])}</h1>",
        f"<p class=muted>run {e(str(run['id']))} · {e(run['status'])} · {e(run.get('backend', ''))}"
        f" · {e(run.get('started_at') or '')} → {e(run.get('finished_at') or '')}</p>",
    ]
    if run.get("preview"):
        parts.append(f"<p class=banner>{e(run.get('notice') or 'PREVIEW animatic')}</p>")
    counts = ", ".join(f"{n} {s}" for s, n in (run.get("counts") or {}).items())
    parts.append(f"<p>{e(counts)}</p>")
    for name, path in (manifest.get("videos") or {}).items():
        parts.append(f"<p>▶ <a href='{e(path)}'>{e(name)} video</a></p>")
    scenes: dict[str | None, list[Mapping[str, Any]]] = {}
    for job in jobs:
        scenes.setdefault(job.get("scene"), []).append(job)
    for scene, members in scenes.items():
        parts.append(f"<h2>{e(scene) if scene else 'project'}</h2>")
        parts.append(
            "<table><tr><th>job</th><th>state</th><th>contact sheet</th><th>probe</th>"
            "<th>quality</th><th>time · server</th><th>files</th></tr>"
        )
        for job in members:
            parts.append(_row(job, thumbs.get(job["id"], [])))
        parts.append("</table>")
    # Marks images that failed to load, for anyone (or any test) checking the page.
    parts.append(
        "<script>addEventListener('load',()=>{document.body.dataset.brokenImages="
        "[...document.images].filter(i=>!i.complete||!i.naturalWidth).length})</script>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def _row(job: Mapping[str, Any], images: list[str]) -> str:
    e = html.escape
    out = (job.get("outputs") or [None])[0] or {}
    probe = out.get("probe") or {}
    quality = out.get("quality") or {}
    facts = ""
    if probe:
        facts = f"{probe.get('width')}x{probe.get('height')}"
        if probe.get("frames"):
            facts += f", {probe['frames']} frames @ {probe.get('fps')} fps"
    checks = "".join(
        f"<div class={'ok' if c['ok'] else 'bad'}>"
        f"{e(c['name'])} {c['score']:.2f}: {e(c['reason'])}</div>"
        for c in quality.get("checks", [])
        if c["name"] != "readable"
    )
    score = f"<b>{quality['score']:.2f}</b>" if quality else ""
    strip = "".join(f"<img src='{e(src)}' alt='{e(job['id'])}'>" for src in images)
    seconds = f"{job['seconds']:.1f} s" if job.get("seconds") else ""
    links = " ".join(
        f"<a href='{e(o['path'])}'>{e(Path(o['path']).name)}</a>" for o in job.get("outputs", [])
    )
    if out.get("workflow"):
        links += f" <a href='{e(out['workflow'])}'>workflow</a>"
    error = f"<div class=bad>{e(job['error'])}</div>" if job.get("error") else ""
    action = str((job.get("meta") or {}).get("action") or "")
    length = lengths.note(job.get("meta") or {})
    if length:
        facts += f" ({length})"
    return (
        f"<tr><td>{e(job['id'])}<div class=muted>{e(action)}</div></td>"
        f"<td class='state-{e(job['state'])}'>{e(job['state'])}{error}</td>"
        f"<td class=strip>{strip}</td><td>{e(facts)}</td><td>{score}{checks}</td>"
        f"<td>{e(seconds)}<div class=muted>{e(job.get('server') or '')}</div></td>"
        f"<td>{links}</td></tr>"
    )
