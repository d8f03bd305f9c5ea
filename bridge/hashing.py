"""Canonical hashing: the cache key of a job is the sha256 of its canonical JSON form."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import orjson

HASH_VERSION = 1  # bump when what goes into a job hash changes meaning


def canonical(obj: Any) -> bytes:
    """Sorted-key compact UTF-8 JSON; orjson because hashing dominates compiling big specs."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical(obj)).hexdigest()


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


async def background_file_digest(path: Path) -> str:
    """file_digest on a thread below normal CPU priority, so hashing a finished output
    never competes with a co-located ComfyUI's encoding."""
    return await asyncio.get_running_loop().run_in_executor(_background(), file_digest, path)


@cache
def _background() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, "bridge-hash", initializer=_lower_priority)


def _lower_priority() -> None:
    """Linux nices threads one by one, so this lowers only the hashing thread."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def derive_seed(*parts: str) -> int:
    """A stable seed from ids, in 0..2**32-1 so every sampler node accepts it."""
    return int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:4], "big")
