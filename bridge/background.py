"""Child processes (ffprobe, ffmpeg) at a lower CPU priority than a co-located ComfyUI.

Linux shares the CPU between sessions before it looks at nice values (autogroups, on where
/proc/sys/kernel/sched_autogroup_enabled is 1, the default of most distributions): a
`nice -n 19` child of bridge gets as much CPU as a ComfyUI started in another terminal or
as a service, one equal share per session. So a check starts a session of its own and
lowers that session's group too. The kernel lets an unprivileged user lower a group once
per 0.1 s, hence the retries; where there are no autogroups, `nice` alone does the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Sequence

_LOWER = (
    "for _ in 1 2 3; do "
    "{ echo 19 >/proc/self/autogroup; } 2>/dev/null && break; "
    "[ -w /proc/self/autogroup ] || break; "
    "sleep 0.1; "
    "done; "
    'command -v nice >/dev/null && exec nice -n 19 "$@"; '
    'exec "$@"'
)


def command(argv: Sequence[str]) -> list[str]:
    """`argv` wrapped to run in its own session, at the lowest CPU priority."""
    return ["sh", "-c", _LOWER, "sh", *argv]


def run(argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
    """`argv` at low priority, its output captured; for callers already on a thread."""
    return subprocess.run(
        command(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        start_new_session=True,
    )


async def stderr_of(argv: Sequence[str]) -> tuple[int, str]:
    """`argv` at low priority, awaited: its exit status and what it wrote to stderr.

    In a session of its own it no longer gets the terminal's Ctrl-C, so a cancelled
    caller kills it here rather than leave it running."""
    proc = await asyncio.create_subprocess_exec(
        *command(argv),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = await proc.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, err.decode(errors="replace")
