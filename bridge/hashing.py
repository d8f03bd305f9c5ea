"""Canonical hashing: the cache key of a job is the sha256 of its canonical JSON form."""

from __future__ import annotations

import hashlib
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


def derive_seed(*parts: str) -> int:
    """A stable seed from ids, in 0..2**32-1 so every sampler node accepts it."""
    return int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:4], "big")
