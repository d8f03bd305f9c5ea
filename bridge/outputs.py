"""Where outputs live on disk, and writing them so a crash never leaves half a file.

Layout: OUTPUT_PATH/<project>/<scene>/<shot>/ for shot jobs, OUTPUT_PATH/<project>/<scene>/
for a scene's assembly, OUTPUT_PATH/<project>/ for the project's. Ids come from the spec
and are restricted by the schema to letters, digits, '-' and '_', so they are safe names.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bridge.hashing import file_digest
from bridge.plan import Job


def project_dir(root: Path, project: str) -> Path:
    return root / project


def job_dir(root: Path, project: str, job: Job) -> Path:
    folder = project_dir(root, project)
    for part in (job.scene, job.shot):
        if part:
            folder = folder / part
    return folder


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write via a temporary file in the same folder and rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: Path, data: Any) -> Path:
    return atomic_write_bytes(path, orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")


def unchanged(path: Path, sha256: str, size: int | None = None) -> bool:
    """Whether `path` still holds exactly the bytes recorded; the size is checked first."""
    try:
        if size is not None and path.stat().st_size != size:
            return False
        return file_digest(path) == sha256
    except OSError:
        return False


def keep_spec(
    root: Path,
    raw: bytes,
    name: str,
    direction: tuple[Callable[[Path], Path], bytes] | None = None,
) -> Path:
    """A content-addressed copy of a spec's bytes under OUTPUT_PATH/.specs/: the path the
    database records can never come to hold another file. A `direction` (where a spec's
    direction file lies beside it, and its bytes) is kept beside it and addressed with it, so a
    worker reading the copy later reads the direction it was submitted with."""
    digest = hashlib.sha256(raw)
    if direction is not None:
        digest.update(b"\0" + direction[1])
    path = (root / ".specs" / f"{digest.hexdigest()[:16]}-{Path(name).name}").absolute()
    if not path.exists():
        if direction is not None:
            atomic_write_bytes(direction[0](path), direction[1])
        atomic_write_bytes(path, raw)
    return path
