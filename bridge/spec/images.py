"""What an image file is, from its bytes: format and pixel size from the header.

A start or reference image that is not a decodable PNG, JPEG or WebP fails on the server
after the upload; reading the header here turns that into a spec error with a line number,
whatever the file's extension says.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

MAX_SIDE = 8192
MAX_PIXELS = 40_000_000

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_BARE = {0x01, 0xD8, *range(0xD0, 0xD8)}


class NotAnImage(ValueError):
    """Raised when a file is not a PNG, JPEG or WebP whose header gives its size."""


def image_size(path: Path) -> tuple[str, int, int]:
    """(format, width, height) read from the header; NotAnImage otherwise."""
    with path.open("rb") as fh:
        head = fh.read(32)
        if head.startswith(_PNG):
            return _png(head)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp(head)
        if head[:2] == b"\xff\xd8":
            fh.seek(2)
            return _jpeg(fh)
    raise NotAnImage("not a PNG, JPEG or WebP image")


def _png(head: bytes) -> tuple[str, int, int]:
    if len(head) < 24 or head[12:16] != b"IHDR":
        raise NotAnImage("a PNG signature but no image header (truncated or damaged?)")
    width, height = struct.unpack(">II", head[16:24])
    return "png", width, height


def _webp(head: bytes) -> tuple[str, int, int]:
    chunk = head[12:16]
    if chunk == b"VP8 " and len(head) >= 30:
        width, height = struct.unpack("<HH", head[26:30])
        return "webp", width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return "webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(head) >= 30:
        return (
            "webp",
            int.from_bytes(head[24:27], "little") + 1,
            int.from_bytes(head[27:30], "little") + 1,
        )
    raise NotAnImage("a WebP container without a readable image header")


def _jpeg(fh: BinaryIO) -> tuple[str, int, int]:
    while True:
        byte = fh.read(1)
        if not byte:
            break
        if byte != b"\xff":
            continue
        marker = fh.read(1)
        while marker == b"\xff":
            marker = fh.read(1)
        if not marker or marker[0] == 0xD9:
            break
        if marker[0] in _JPEG_BARE:
            continue
        size = fh.read(2)
        if len(size) < 2:
            break
        length = int.from_bytes(size, "big")
        if marker[0] in _JPEG_SOF:
            frame = fh.read(5)
            if len(frame) < 5:
                break
            height, width = struct.unpack(">HH", frame[1:5])
            return "jpeg", width, height
        fh.seek(length - 2, 1)
    raise NotAnImage("a JPEG without a frame header (truncated or damaged?)")


def size_problem(width: int, height: int) -> str | None:
    """Why a picture of this size cannot be a start or reference image, if it cannot."""
    if width < 1 or height < 1:
        return f"is {width}x{height} pixels, an empty picture"
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        return (
            f"is {width}x{height} pixels; the limit is {MAX_SIDE} a side and "
            f"{MAX_PIXELS // 1_000_000} megapixels: scale it down to the shot's size"
        )
    return None
