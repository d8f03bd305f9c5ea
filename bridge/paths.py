"""One rule for every file name that comes from outside: it must stay inside its folder.

Spec files name start images and workflows; ComfyUI names the outputs we download. Both are
resolved here, so `../../etc/passwd`, absolute paths and symlinks out of the folder are
refused the same way everywhere.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath


class PathEscape(ValueError):
    """Raised when a name would resolve outside the folder it must stay in."""


def resolve_inside(folder: Path, name: str) -> Path:
    """`folder / name`, resolved, or PathEscape when it leaves `folder` (or holds a NUL)."""
    if "\x00" in name:
        raise PathEscape("a file name cannot contain a NUL byte")
    base = folder.resolve()
    candidate = Path(name)
    path = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if not path.is_relative_to(base):
        raise PathEscape(f"'{name}' is outside {base}")
    return path


def safe_relative(*parts: str) -> PurePosixPath:
    """Join server-supplied path parts into a relative path with no '..', root or drive."""
    clean: list[str] = []
    for part in parts:
        for piece in PurePosixPath(part.replace("\\", "/")).parts:
            if piece in ("", ".", "/"):
                continue
            if piece == ".." or ":" in piece or "\x00" in piece:
                raise PathEscape(f"refusing the path {'/'.join(parts)!r}")
            clean.append(piece)
    if not clean:
        raise PathEscape(f"empty path {'/'.join(parts)!r}")
    return PurePosixPath(*clean)
