"""ffmpeg operations, probes and the preview renderer, on small clips made here."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from bridge import background, media, probe
from bridge.backends.base import Attempt
from bridge.backends.preview import PreviewBackend
from bridge.compile import compile_plan
from bridge.errors import ProbeError
from bridge.plan import Media
from bridge.spec.validate import load_spec

ROOT = Path(__file__).resolve().parent.parent


def clip(path: Path, source: str, *, size: str = "64x48", fps: int = 12, frames: int = 24) -> Path:
    sep = ":" if "=" in source else "="
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"{source}{sep}s={size}:r={fps}",
            "-frames:v",
            str(frames),
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            str(path),
        ],
        check=True,
    )
    return path


def mean_rgb(png: Path) -> tuple[int, ...]:
    raw = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(png),
            "-vf",
            "scale=1:1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ],
        check=True,
        capture_output=True,
    ).stdout
    return tuple(raw[:3])


async def test_last_frame_is_the_final_frame(tmp_path: Path) -> None:
    red = clip(tmp_path / "red.mp4", "color=c=red", frames=12)
    blue = clip(tmp_path / "blue.mp4", "color=c=blue", frames=1)
    joined = tmp_path / "joined.mp4"
    await media.concat([red, blue], joined, width=64, height=48, fps=12)
    png = await media.last_frame(joined, tmp_path / "last.png")
    r, _, b = mean_rgb(png)
    assert b > 200
    assert r < 60
    assert probe.facts(png).kind == "image"


async def test_concat_copies_matching_clips_and_re_encodes_others(tmp_path: Path) -> None:
    a = clip(tmp_path / "a.mp4", "testsrc2")
    b = clip(tmp_path / "b.mp4", "testsrc2", frames=12)
    c = clip(tmp_path / "c.mp4", "testsrc2", size="80x48", fps=24, frames=24)
    same = await media.concat([a, b], tmp_path / "ab.mp4", width=64, height=48, fps=12)
    assert probe.facts(same).frames == 36
    mixed = await media.concat([a, c], tmp_path / "ac.mp4", width=64, height=48, fps=12)
    facts = probe.facts(mixed)
    assert (facts.width, facts.height, facts.fps, facts.frames) == (64, 48, 12.0, 36)


async def test_hard_checks_name_what_is_wrong(tmp_path: Path) -> None:
    path = clip(tmp_path / "a.mp4", "testsrc2")
    _, ok = await probe.check(path, Media("video", 64, 48, 12.0, 24))
    assert ok.passed
    _, bad = await probe.check(path, Media("video", 704, 544, 24.0, 48))
    reasons = {c.name: c.reason for c in bad.checks if not c.ok}
    assert reasons["size"] == "expected 704x544, got 64x48"
    assert reasons["fps"] == "12 fps, expected 24"
    assert reasons["frames"] == "24 frames, expected 48"
    assert not bad.passed


async def test_black_and_frozen_clips_score_low(tmp_path: Path) -> None:
    black = clip(tmp_path / "black.mp4", "color=c=black")
    _, quality = await probe.check(black, Media("video", 64, 48, 12.0, 24))
    checks = {c.name: c for c in quality.checks}
    assert checks["black"].score < 0.1
    assert not quality.passed
    still = clip(tmp_path / "still.mp4", "color=c=gray")
    _, quality = await probe.check(still, Media("video", 64, 48, 12.0, 24))
    assert {c.name: c.ok for c in quality.checks}["frozen"] is False
    _, allowed = await probe.check(still, Media("video", 64, 48, 12.0, 24), detect_frozen=False)
    assert allowed.passed


def test_truncated_and_empty_files_are_probe_errors(tmp_path: Path) -> None:
    whole = clip(tmp_path / "a.mp4", "testsrc2")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:500])
    with pytest.raises(ProbeError, match="not a readable video or image"):
        probe.facts(cut)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ProbeError, match="the file is empty"):
        probe.facts(empty)


async def test_preview_clip_has_the_exact_shape_and_passes_its_checks(tmp_path: Path) -> None:
    plan = compile_plan(load_spec(ROOT / "specs" / "moonlit-garden.yaml"))
    backend = PreviewBackend()
    await backend.start()
    seen = []
    for job_id in ("render:garden/s01", "keyframe:garden/s01"):
        job = plan.job(job_id)
        outcome = await backend.execute(
            Attempt(job, str(uuid.uuid4()), tmp_path), lambda p: seen.append(p.value)
        )
        facts, quality = await probe.check(outcome.files[0], job.expect)
        assert quality.passed, quality
    assert (facts.kind, facts.width, facts.height) == ("image", 704, 544)
    assert seen
    assert list(tmp_path.glob(".preview*")) == []  # no temporary files left behind


def test_frames_are_counted_without_decoding_only_when_the_container_agrees(
    tmp_path: Path,
) -> None:
    whole = clip(tmp_path / "whole.mp4", "testsrc2", frames=30)
    assert probe.facts(whole).frames == 30
    # The header (moved to the front) still claims 30 frames; the data for most is gone.
    faststart = tmp_path / "front.mp4"
    move = ["ffmpeg", "-v", "error", "-i", str(whole), "-c", "copy", "-movflags", "+faststart"]
    subprocess.run([*move, str(faststart)], check=True)
    cut = tmp_path / "cut.mp4"
    data = faststart.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ProbeError, match="no frames could be decoded"):
        probe.facts(cut)


async def test_thumbnails_come_from_one_pass_and_are_kept_while_fresh(tmp_path: Path) -> None:
    short = clip(tmp_path / "short.mp4", "testsrc2", frames=2)
    made = await media.thumbnails(short, tmp_path / "thumbs", count=4)
    assert [p.name for p in made] == [f"short-{i}.jpg" for i in range(1, 5)]
    assert all(p.stat().st_size > 0 for p in made)
    stamps = [p.stat().st_mtime_ns for p in made]
    again = await media.thumbnails(short, tmp_path / "thumbs", count=4)
    assert [p.stat().st_mtime_ns for p in again] == stamps
    assert not [p for p in (tmp_path / "thumbs").iterdir() if p.name.startswith(".")]


def _session_and_nice(out: bytes) -> tuple[int, int]:
    fields = out.decode().split()
    return int(fields[0]), int(fields[1])


def test_checks_run_in_a_session_of_their_own_at_the_lowest_priority() -> None:
    """Linux shares the CPU between sessions first, so a niced check in bridge's session
    would still take an equal share from a ComfyUI in another one."""
    done = background.run(
        ["sh", "-c", "cut -d' ' -f6,19 /proc/self/stat; cat /proc/self/autogroup"]
    )
    assert done.returncode == 0, done.stderr
    first, *rest = done.stdout.splitlines()
    session, nice = _session_and_nice(first)
    assert session != os.getsid(0)
    assert nice == 19
    if Path("/proc/self/autogroup").exists():
        assert [line.split()[-2:] for line in rest] == [[b"nice", b"19"]]


async def test_a_cancelled_check_kills_its_command() -> None:
    """The command no longer hears the terminal's Ctrl-C; the cancelled caller stops it."""
    marker = f"30.{uuid.uuid4().int % 10**9:09d}"  # this test's own sleep
    task = asyncio.create_task(background.stderr_of(["sleep", marker]))
    await asyncio.sleep(0.5)
    assert _running(marker)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _running(marker)


def _running(marker: str) -> bool:
    found = False
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            found = found or cmdline.read_bytes() == b"sleep\0" + marker.encode() + b"\0"
    return found


async def test_a_failed_decoding_pass_says_what_ffmpeg_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing(argv: list[str]) -> tuple[int, str]:
        return 1, "frame=1\n[h264 @ 0x1] Invalid NAL unit size\n"

    monkeypatch.setattr(background, "stderr_of", failing)
    with pytest.raises(ProbeError) as caught:
        await probe.soft_checks(tmp_path / "shot.mp4", 2.0)
    assert caught.value.message == "shot.mp4: decoding failed: [h264 @ 0x1] Invalid NAL unit size"
