"""ffmpeg operations on finished files: continuity frames, assembly and thumbnails.

Commands are built with ffmpeg-python and run as asyncio subprocesses, so a long encode
never blocks the event loop, and every output is written to a temporary name and renamed,
so a crash never leaves a half file where a finished one is expected.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import ffmpeg

from bridge import background
from bridge.errors import ProbeError
from bridge.probe import afacts


async def run(stream: ffmpeg.nodes.OutputStream | list[str], what: str) -> None:
    """Run ffmpeg at a lower CPU priority than the user's ComfyUI, errors only."""
    args = stream if isinstance(stream, list) else ffmpeg.compile(stream, overwrite_output=True)
    status, err = await background.stderr_of(
        [args[0], "-hide_banner", "-loglevel", "error", *args[1:]]
    )
    if status != 0:
        tail = " ".join(err.strip().splitlines()[-2:])
        raise ProbeError(f"ffmpeg could not {what}: {tail}")


def _tmp(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=target.suffix)
    os.close(fd)
    return Path(name)


async def _atomic(
    target: Path, make: Callable[..., ffmpeg.nodes.OutputStream | list[str]], what: str
) -> Path:
    tmp = _tmp(target)
    try:
        await run(make(tmp), what)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


async def last_frame(video: Path, png: Path) -> Path:
    """The exact last frame: decode the final second and keep overwriting one image."""
    return await _atomic(
        png,
        lambda tmp: ffmpeg.input(str(video), sseof=-1).output(
            str(tmp), update=1, **{"frames:v": 1000000, "f": "image2", "vcodec": "png"}
        ),
        f"take the last frame of {video.name}",
    )


async def concat(
    inputs: Sequence[Path],
    output: Path,
    *,
    width: int,
    height: int,
    fps: float,
    frames: int | None = None,
) -> Path:
    """Join clips in order; stream copy when they already match, else re-encode to match.
    `frames` cuts the joined video to that many frames (a scene's frame_count)."""
    if not inputs:
        raise ProbeError("nothing to assemble")
    infos = [await afacts(p) for p in inputs]
    same = all(
        (i.codec, i.width, i.height, i.pix_fmt) == ("h264", width, height, "yuv420p")
        and i.fps is not None
        and abs(i.fps - fps) < 0.01
        for i in infos
    )
    if (
        frames is None
        and same
        and await _copy_join(inputs, output, fps, sum(i.frames or 0 for i in infos))
    ):
        return output
    streams = [
        ffmpeg.input(str(path))
        .video.filter("scale", width, height, force_original_aspect_ratio="decrease")
        .filter("pad", width, height, "(ow-iw)/2", "(oh-ih)/2")
        .filter("setsar", 1)
        for path in inputs
    ]
    # One frame-rate conversion after joining, so rounding happens once, not per clip.
    joined = ffmpeg.concat(*streams, v=1, a=0).filter("fps", fps=fps)
    return await _atomic(
        output,
        lambda tmp: joined.output(
            str(tmp),
            vcodec="libx264",
            pix_fmt="yuv420p",
            r=fps,
            movflags="+faststart",
            preset="veryfast",
            crf=18,
            **({"frames:v": frames} if frames is not None else {}),
        ),
        f"re-encode and join {len(inputs)} clips",
    )


async def _copy_join(inputs: Sequence[Path], output: Path, fps: float, frames: int) -> bool:
    """Join without re-encoding; False (and nothing written) when the result's timing is off,
    which stream copy can do with some encoders' edit lists."""
    listing = _tmp(output.with_suffix(".txt"))
    listing.write_text("".join(f"file '{_quote(p.resolve())}'\n" for p in inputs))
    joined = _tmp(output)
    try:
        await run(
            ffmpeg.input(str(listing), f="concat", safe=0).output(
                str(joined), c="copy", movflags="+faststart"
            ),
            f"join {len(inputs)} clips",
        )
        got = await afacts(joined)
        if got.frames != frames or got.fps is None or abs(got.fps - fps) > 0.01:
            return False
        os.replace(joined, output)
        return True
    finally:
        listing.unlink(missing_ok=True)
        joined.unlink(missing_ok=True)


def _quote(path: Path) -> str:
    return str(path).replace("'", "'\\''")


async def thumbnails(
    video: Path, folder: Path, count: int = 4, width: int = 160, frames: int | None = None
) -> list[Path]:
    """Evenly spaced JPEG thumbnails, for a report's contact sheet, from one decoding pass;
    ones already newer than the video are kept. `frames` spares a probe when known."""
    targets = [folder / f"{video.stem}-{i + 1}.jpg" for i in range(count)]
    made = video.stat().st_mtime
    if all(t.exists() and t.stat().st_mtime >= made for t in targets):
        return targets
    frames = frames or (await afacts(video)).frames or 1
    wanted = [min(frames - 1, round((i + 0.5) * frames / count)) for i in range(count)]
    picks = sorted(set(wanted))  # a short clip can want one frame twice
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{video.stem}.") as tmp:
        await run(
            ffmpeg.input(str(video))
            .filter("select", "+".join(f"eq(n,{n})" for n in picks))
            .filter("scale", width, -2)
            .output(
                str(Path(tmp) / "%d.jpg"),
                fps_mode="passthrough",
                **{"frames:v": len(picks), "q:v": 4},
            ),
            f"take thumbnails of {video.name}",
        )
        for target, n in zip(targets, wanted, strict=True):
            staged = Path(tmp) / f"{target.name}.tmp"
            shutil.copyfile(Path(tmp) / f"{picks.index(n) + 1}.jpg", staged)
            os.replace(staged, target)
    return targets
