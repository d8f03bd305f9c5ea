"""The watch folder: drop a spec in, get it validated, rendered and filed.

A file is claimed by renaming it into `DIR/.processing/` once its size and mtime have
stopped changing; the rename is atomic, so a spec is never picked twice, and a daemon that
stops (SIGTERM, a crash) finds its unfinished specs there at the next start and runs them
again, which submits nothing twice because every prompt it had posted is re-attached
through the job store. Each spec ends in exactly one of `done/` (with a pointer to its
manifest), `rejected/` (with the same positioned errors as `bridge validate`) or `failed/`
(with the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from bridge import console
from bridge.compile import compile_plan
from bridge.direct.direct import direct_if_wanted
from bridge.errors import BridgeError, DirectionError, SpecErrors
from bridge.runner import Runner
from bridge.spec.validate import load_spec

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml")
FOLDERS = ("done", "rejected", "failed", ".processing")


def wanted(path: Path) -> bool:
    """A spec someone dropped, not an editor's swap file or a partial copy."""
    name = path.name
    return (
        path.suffix.lower() in SUFFIXES
        and not name.startswith((".", "~", "#"))
        and not name.endswith(("~", ".tmp", ".part", ".swp"))
    )


class _Events(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, seen: Callable[[Path, bool], None]) -> None:
        self.loop = loop
        self.seen = seen

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        target = getattr(event, "dest_path", "") or event.src_path
        path = Path(os.fsdecode(target))
        # A writer closing the file, or a rename into the folder, means it is complete.
        complete = event.event_type in ("closed", "moved")
        self.loop.call_soon_threadsafe(self.seen, path, complete)


class WatchFolder:
    def __init__(
        self,
        folder: Path,
        runner: Runner,
        *,
        settle: float = 0.5,
        echo: Callable[[str], None] = console.out,
    ) -> None:
        self.folder = folder
        self.runner = runner
        self.settle = settle
        self.echo = echo
        self.processing = folder / ".processing"
        self._pending: dict[Path, tuple[int, float, float]] = {}  # size, mtime, since
        self._running: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    def _seen(self, path: Path, complete: bool = False) -> None:
        if path.parent != self.folder or not wanted(path):
            return
        if complete:
            try:
                st = path.stat()
            except FileNotFoundError:
                return
            self._pending[path] = (st.st_size, st.st_mtime, time.monotonic() - self.settle)
        else:
            self._pending.setdefault(path, (-1, -1.0, time.monotonic()))
        self._wake.set()

    async def serve(self) -> None:
        """Run until cancelled; on cancel, running specs stay claimed for the next start."""
        for name in FOLDERS:
            (self.folder / name).mkdir(parents=True, exist_ok=True)
        # Watch first, then scan: a file landing in between is seen twice, never missed.
        observer = Observer()
        observer.schedule(_Events(asyncio.get_running_loop(), self._seen), str(self.folder))
        observer.start()
        for left in sorted(self.processing.iterdir()):
            if wanted(left):
                self.echo(f"resuming {left.name} (claimed by an earlier start)")
                self._start(left)
        for path in sorted(self.folder.iterdir()):
            self._seen(path)
        self.echo(f"watching {self.folder.resolve()} for .yaml specs (SIGTERM stops)")
        try:
            while True:
                await self._settle_round()
        finally:
            observer.stop()
            await asyncio.to_thread(observer.join, 5)
            for task in list(self._running):
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _settle_round(self) -> None:
        if not self._pending:
            self._wake.clear()
            await self._wake.wait()
        await asyncio.sleep(min(0.05, self.settle))
        now = time.monotonic()
        for path, (size, mtime, since) in list(self._pending.items()):
            try:
                st = path.stat()
            except FileNotFoundError:
                del self._pending[path]  # moved away or deleted before it settled
                continue
            if (st.st_size, st.st_mtime) != (size, mtime):
                self._pending[path] = (st.st_size, st.st_mtime, now)
            elif now - since >= self.settle:
                del self._pending[path]
                claimed = self.processing / path.name
                try:
                    os.rename(path, claimed)
                except FileNotFoundError:
                    continue
                self._start(claimed)

    def _start(self, claimed: Path) -> None:
        task = asyncio.create_task(self._handle(claimed), name=f"spec {claimed.name}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _handle(self, claimed: Path) -> None:
        name = claimed.name
        try:
            await direct_if_wanted(claimed, self.runner.settings, say=self.echo)  # direct: true
            spec = load_spec(claimed, display=name)
        except DirectionError as exc:
            self._file(claimed, "failed", "reason", f"{exc}\n")
            self.echo(f"failed {name}: {exc}")
            return
        except SpecErrors as exc:
            self._file(claimed, "rejected", "errors", console.spec_errors(exc.errors) + "\n")
            self.echo(f"rejected {name}: {len(exc.errors)} error(s)")
            return
        self.echo(f"running {name}")
        try:
            report = await self.runner.run(spec, compile_plan(spec))
        except asyncio.CancelledError:
            self.echo(f"stopping; {name} stays claimed and resumes at the next start")
            raise
        except BridgeError as exc:
            self._file(claimed, "failed", "reason", f"{exc}\n")
            self.echo(f"failed {name}: {exc}")
            return
        if report.ok:
            self._file(claimed, "done", "manifest", f"{report.manifest}\n")
            self.echo(f"done {name}: {console.counts(report.counts())}")
        else:
            reasons = "".join(f"{job}: {error}\n" for job, error in report.errors.items())
            self._file(claimed, "failed", "reason", reasons or f"run {report.status}\n")
            self.echo(f"failed {name}: {console.counts(report.counts())}")

    def _file(self, claimed: Path, outcome: str, note: str, text: str) -> None:
        """Move the spec to its outcome folder with its note; the latest drop of a name wins,
        so a spec is only ever in one of the three."""
        name = claimed.name
        for other, other_note in NOTES.items():
            if other != outcome:
                for stale in (name, f"{name}.{other_note}.txt"):
                    with contextlib.suppress(FileNotFoundError):
                        (self.folder / other / stale).unlink()
        (self.folder / outcome / f"{name}.{note}.txt").write_text(text)
        os.replace(claimed, self.folder / outcome / name)


NOTES = {"done": "manifest", "rejected": "errors", "failed": "reason"}
