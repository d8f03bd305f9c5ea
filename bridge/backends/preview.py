"""The preview backend: an ffmpeg animatic when no ComfyUI answers.

Each shot becomes a card of exactly the size, fps and length the real render would have,
showing the scene, shot, action, camera and characters over a slowly moving marker (so it
passes the frozen-picture check like a real clip). Everything downstream (continuity
frames, assembly, manifest, report) runs on it unchanged, which is what makes the README's
first command useful on a machine with no GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from bridge.backends.base import Attempt, Outcome, Progress, ProgressFn
from bridge.errors import PermanentBackendError
from bridge.plan import Job, Media

BACKGROUND = "0x1b1f3a"


class PreviewBackend:
    name = "preview"

    def __init__(self, slots: int | None = None) -> None:
        self.slots = slots or max(2, os.cpu_count() or 2)
        self.healthy = True
        self._procs: dict[str, asyncio.subprocess.Process] = {}

    async def start(self) -> None:
        if shutil.which("ffmpeg") is None:
            raise PermanentBackendError("the preview backend needs ffmpeg on PATH")

    async def close(self) -> None:
        for proc in list(self._procs.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    async def object_info(self, classes: Collection[str] | None = None) -> Mapping[str, Any]:
        return {}

    async def cancel(self, attempt: Attempt) -> None:
        proc = self._procs.get(attempt.prompt_id)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    async def execute(self, attempt: Attempt, progress: ProgressFn) -> Outcome:
        job = attempt.job
        video = _expect(job).kind == "video"
        target = attempt.dest / f"{job.kind.value}-{job.hash[:12]}.{'mp4' if video else 'png'}"
        attempt.dest.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=attempt.dest, prefix=".preview.", suffix=target.suffix)
        os.close(fd)
        tmp = Path(tmp_name)
        card = tmp.with_suffix(".txt")
        card.write_text(card_text(job))
        try:
            args = _command(job, card, tmp)
            proc = await asyncio.create_subprocess_exec(
                *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            self._procs[attempt.prompt_id] = proc
            total = _expect(job).frames or 1
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").strip()
                if line.startswith("frame="):
                    with contextlib.suppress(ValueError):
                        progress(Progress(job.id, int(line[6:]), total))
            err = await proc.stderr.read() if proc.stderr else b""
            if await proc.wait() != 0:
                tail = " ".join(err.decode(errors="replace").strip().splitlines()[-2:])
                raise PermanentBackendError(f"the preview renderer failed: {tail}")
            os.replace(tmp, target)
        finally:
            self._procs.pop(attempt.prompt_id, None)
            tmp.unlink(missing_ok=True)
            card.unlink(missing_ok=True)
        return Outcome(files=(target,), server=self.name, prompt_id=attempt.prompt_id)


def card_text(job: Job) -> str:
    meta = job.meta
    lines = [
        f"PREVIEW  {meta.get('project_title') or meta.get('project', '')}",
        f"scene {job.scene}: {meta.get('scene_title') or ''}".rstrip(": "),
        f"shot {job.shot}  ({job.kind.value}, {meta.get('preset', '')}, seed {meta.get('seed')})",
    ]
    if meta.get("action"):
        lines.append(f"action: {meta['action']}")
    if meta.get("camera"):
        lines.append(f"camera: {meta['camera']}")
    if meta.get("characters"):
        lines.append("characters: " + ", ".join(meta["characters"]))
    width = max(24, _expect(job).width // 11)
    return "\n".join(_wrap(line, width) for line in lines)


def _expect(job: Job) -> Media:
    """The compiler gives every job what it must produce; a hand-made one may not say."""
    if job.expect is None:
        raise PermanentBackendError(f"{job.id}: the job does not say what to render")
    return job.expect


def _wrap(line: str, width: int) -> str:
    words, out, current = line.split(), [], ""
    for word in words:
        if current and len(current) + 1 + len(word) > width:
            out.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    out.append(current)
    return "\n".join(out)


@functools.cache
def _font() -> str | None:
    try:
        found = subprocess.run(
            ["fc-match", "-f", "%{file}", "sans"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return found if found and Path(found).exists() else None


def _escape(path: Path) -> str:
    return str(path).replace("\\", "\\\\").replace(":", "\\:").replace("'", "\\'")


def _command(job: Job, card: Path, out: Path) -> list[str]:
    e = _expect(job)
    w, h = e.width, e.height
    size = max(10, min(w, h) // 22)
    font = f":fontfile='{_escape(Path(f))}'" if (f := _font()) else ""
    text = (
        f"drawtext=textfile='{_escape(card)}'{font}:fontcolor=white:fontsize={size}"
        f":line_spacing={size // 3}:x={size}:y={size}"
    )
    marker = max(4, min(w, h) // 12)
    if e.kind == "video":
        fps = e.fps or 24
        counter = (
            f"drawtext=text='%{{frame_num}} / {e.frames}'{font}:fontcolor=0xffd166"
            f":fontsize={size}:x=w-tw-{size}:y=h-th-{size}:start_number=1"
        )
        graph = (
            f"color=c={BACKGROUND}:s={w}x{h}:r={fps:g}[bg];"
            f"color=c=0xe94560:s={marker}x{marker}:r={fps:g}[m];"
            f"[bg][m]overlay=x='mod(t*{w}/4,{w - marker})':y='{h - 2 * marker}':shortest=1,"
            f"{text},{counter}[v]"
        )
        return [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostats",
            "-y",
            "-filter_complex",
            graph,
            "-map",
            "[v]",
            "-frames:v",
            str(e.frames),
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-pix_fmt",
            "yuv420p",
            "-r",
            f"{fps:g}",
            "-movflags",
            "+faststart",
            "-progress",
            "pipe:1",
            "-f",
            "mp4",
            str(out),
        ]
    graph = f"color=c={BACKGROUND}:s={w}x{h}:r=1,{text}[v]"
    return [
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostats",
        "-y",
        "-filter_complex",
        graph,
        "-map",
        "[v]",
        "-frames:v",
        "1",
        "-f",
        "image2",
        "-c:v",
        "png",
        str(out),
    ]
