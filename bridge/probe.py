"""What a rendered file really is (ffprobe) and whether it is good enough to keep.

Hard checks (readable, size, fps, frame count, duration) fail a job whatever its score: a
clip of the wrong length breaks the scene's assembly. Soft checks (black frames, frozen
stretches, from ffmpeg's blackdetect and freezedetect in one decoding pass) give a score
from 0 to 1, and a job under QUALITY_THRESHOLD fails with their reasons.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from bridge import background
from bridge.errors import ProbeError
from bridge.plan import Media

IMAGE_CODECS = {"png", "mjpeg", "webp", "bmp", "tiff"}


@dataclass(frozen=True)
class Facts:
    kind: str  # video | image
    width: int
    height: int
    fps: float | None
    frames: int | None
    seconds: float | None
    codec: str
    pix_fmt: str | None
    bytes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Check:
    name: str
    score: float
    ok: bool
    reason: str


@dataclass(frozen=True)
class Quality:
    score: float
    passed: bool
    checks: tuple[Check, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "score": round(self.score, 4),
            "passed": self.passed,
            "checks": [asdict(c) for c in self.checks],
        }


def facts(path: Path) -> Facts:
    """ffprobe's view of the file. Frames are counted from the container (packets read,
    the header's count, duration × rate) and decoded only when those disagree, since a
    decode of every output takes the CPU a co-located ComfyUI encodes with."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ProbeError(f"{path.name}: cannot read: {exc.strerror}") from None
    if size == 0:
        raise ProbeError(f"{path.name}: the file is empty")
    info = _ffprobe(path, "-count_packets")
    streams = info.get("streams") or []
    if not streams:
        raise ProbeError(f"{path.name}: has no video stream")
    s = streams[0]
    codec = s.get("codec_name", "?")
    fmt = info.get("format", {})
    image = codec in IMAGE_CODECS and fmt.get("format_name", "").endswith("pipe")
    if image or codec == "png":
        return Facts(
            "image",
            int(s["width"]),
            int(s["height"]),
            None,
            None,
            None,
            codec,
            s.get("pix_fmt"),
            size,
        )
    fps = _rate(s.get("avg_frame_rate")) or _rate(s.get("r_frame_rate"))
    seconds = float(s.get("duration") or fmt.get("duration") or 0) or None
    count = _container_count(s, fps, seconds)
    if count is None:
        decoded = _ffprobe(path, "-count_frames").get("streams") or [{}]
        count = _int(decoded[0].get("nb_read_frames"))
    if not count:
        raise ProbeError(f"{path.name}: no frames could be decoded (truncated?)")
    return Facts(
        "video",
        int(s["width"]),
        int(s["height"]),
        round(fps, 4) if fps else None,
        count,
        round(seconds, 4) if seconds else None,
        codec,
        s.get("pix_fmt"),
        size,
    )


def _container_count(
    stream: dict[str, Any], fps: float | None, seconds: float | None
) -> int | None:
    """The frame count when the packets read agree with every count the container states
    (at least one), else None: a truncated or odd file is decoded instead."""
    packets = _int(stream.get("nb_read_packets"))
    stated = [n for n in (_int(stream.get("nb_frames")),) if n is not None]
    if fps and seconds:
        stated.append(round(seconds * fps))
    if not packets or not stated or any(n != packets for n in stated):
        return None
    return packets


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, str | int) and str(value).isdigit() else None


def _ffprobe(path: Path, *extra: str) -> dict[str, Any]:
    """ffprobe's JSON for the first video stream and the container, at low CPU priority."""
    command = [
        "ffprobe",
        "-v",
        "error",
        "-select_streams",
        "v:0",
        *extra,
        "-show_streams",
        "-show_format",
        "-of",
        "json",
        str(path),
    ]
    done = background.run(command)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise ProbeError(f"{path.name}: not a readable video or image: {' '.join(tail)}")
    try:
        info: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        raise ProbeError(f"{path.name}: ffprobe gave no readable answer") from None
    return info


async def afacts(path: Path) -> Facts:
    return await asyncio.to_thread(facts, path)


def _rate(text: str | None) -> float | None:
    if not text or text in ("0/0", "N/A"):
        return None
    value = float(Fraction(text))
    return value or None


def hard_checks(f: Facts, expect: Media) -> list[Check]:
    checks = [Check("readable", 1.0, True, f"{f.codec} {f.kind}, {f.bytes:,} bytes")]
    if (f.width, f.height) == (expect.width, expect.height):
        checks.append(Check("size", 1.0, True, f"{f.width}x{f.height} as expected"))
    else:
        checks.append(
            Check(
                "size",
                0.0,
                False,
                f"expected {expect.width}x{expect.height}, got {f.width}x{f.height}",
            )
        )
    if expect.kind == "image" or f.kind == "image":
        if expect.kind != f.kind:
            checks.append(Check("kind", 0.0, False, f"expected a {expect.kind}, got a {f.kind}"))
        return checks
    if expect.fps:
        ok = f.fps is not None and abs(f.fps - expect.fps) <= 0.01
        checks.append(
            Check(
                "fps",
                float(ok),
                ok,
                f"{f.fps:g} fps" + ("" if ok else f", expected {expect.fps:g}")
                if f.fps
                else "no frame rate",
            )
        )
    if expect.frames:
        off = abs((f.frames or 0) - expect.frames)
        ok = off <= expect.frame_tolerance
        reason = f"{f.frames} frames" + (
            ""
            if ok
            else f", expected {expect.frames}"
            + (f" ± {expect.frame_tolerance}" if expect.frame_tolerance else "")
        )
        checks.append(Check("frames", float(ok), ok, reason))
    if expect.seconds and f.fps and f.frames:
        seconds = f.frames / f.fps
        allowed = (expect.frame_tolerance + 1) / expect.fps if expect.fps else 0.05
        ok = abs(seconds - expect.seconds) <= allowed + 1e-6
        reason = f"{seconds:.3f} s" + ("" if ok else f", expected {expect.seconds:.3f} s")
        checks.append(Check("duration", float(ok), ok, reason))
    return checks


_BLACK = re.compile(r"black_duration:\s*([0-9.]+)")
_FREEZE = re.compile(r"freeze_duration:\s*([0-9.]+)")
_FREEZE_START = re.compile(r"freeze_start:\s*([0-9.]+)")


async def soft_checks(
    path: Path, seconds: float, *, black: bool = True, frozen: bool = True
) -> list[Check]:
    """Black and frozen fractions of the clip, in one decoding pass."""
    filters = []
    if black:
        filters.append("blackdetect=d=0.1:pix_th=0.10")
    if frozen:
        filters.append("freezedetect=n=0.001:d=0.5")
    if not filters or seconds <= 0:
        return []
    status, text = await background.stderr_of(
        [
            "ffmpeg",
            "-hide_banner",
            "-nostats",
            "-i",
            str(path),
            "-vf",
            ",".join(filters),
            "-an",
            "-f",
            "null",
            "-",
        ]
    )
    if status != 0:
        tail = " ".join(text.strip().splitlines()[-1:])
        raise ProbeError(f"{path.name}: decoding failed: {tail}")
    checks = []
    if black:
        dark = min(seconds, sum(float(x) for x in _BLACK.findall(text)))
        score = 1.0 - dark / seconds
        checks.append(
            Check(
                "black",
                score,
                True,
                f"{dark:.2f} s of {seconds:.2f} s black" if dark else "no black frames",
            )
        )
    if frozen:
        still = sum(float(x) for x in _FREEZE.findall(text))
        starts = _FREEZE_START.findall(text)
        if len(starts) > len(_FREEZE.findall(text)):  # frozen until the end: no end line
            still += seconds - float(starts[-1])
        still = min(seconds, still)
        score = 1.0 - still / seconds
        checks.append(
            Check(
                "frozen",
                score,
                True,
                f"{still:.2f} s of {seconds:.2f} s frozen" if still else "no frozen stretch",
            )
        )
    return checks


async def check(
    path: Path,
    expect: Media,
    *,
    threshold: float = 0.7,
    detect_black: bool = True,
    detect_frozen: bool = True,
) -> tuple[Facts, Quality]:
    """Facts and a quality verdict for `path`; an unreadable file raises ProbeError."""
    f = await afacts(path)
    checks = hard_checks(f, expect)
    hard_ok = all(c.ok for c in checks)
    if hard_ok and f.kind == "video" and f.frames and f.fps:
        checks += await soft_checks(
            path, f.frames / f.fps, black=detect_black, frozen=detect_frozen
        )
    score = min((c.score for c in checks), default=1.0)
    for c in checks:
        if c.name in ("black", "frozen") and c.score < threshold:
            checks[checks.index(c)] = Check(c.name, c.score, False, c.reason)
    passed = hard_ok and score >= threshold
    return f, Quality(score, passed, tuple(checks))
