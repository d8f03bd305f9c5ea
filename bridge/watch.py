"""The watch folder: drop a spec in, get it validated, rendered and filed.

What is taken: regular files named *.yaml / *.yml directly in DIR (not hidden, not editor
temporaries), and symlinks whose target is a regular file inside DIR. Named pipes, sockets,
devices, directories and other symlinks are left where they are, with one log line each.

When: a file is claimed once it is complete — closed by its writer and unchanged for the
settle time, or renamed into DIR (the atomic way: write elsewhere on the same filesystem,
then rename). Claiming renames it into `DIR/.processing/`, so a spec is never picked
twice, and a daemon that stops finds its unfinished specs there at the next start and runs
them again (every prompt it had posted is re-attached through the job store). A spec that
was being handled when the daemon died is given one more try at the next start; if the
daemon dies with it again, it goes to `failed/`. Each spec ends in exactly one of `done/`
(with a pointer to its manifest), `rejected/` (with the same positioned errors as `bridge
validate`) or `failed/` (with the reason). While no ComfyUI server answers, a claimed spec
waits (a note in `DIR/.waiting/`) for up to BRIDGE_WAIT_FOR_SERVER seconds; while the
database is down it waits (noted the same way) for as long as that lasts, and a run the
database dropped out of runs again, claimed all along, once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from bridge import console, outputs
from bridge.compile import compile_plan
from bridge.direct.direct import direct_if_wanted
from bridge.direct.lock import is_lock_file, lock_path
from bridge.direct.merge import merge_direction
from bridge.errors import BridgeError, ConfigError, DirectionError, SpecErrors
from bridge.plan import Plan
from bridge.runner import Runner, Selection
from bridge.spec.load import MAX_BYTES, load_bytes
from bridge.spec.model import Spec
from bridge.spec.validate import validate
from bridge.submit import submit

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml")
FOLDERS = ("done", "rejected", "failed", ".processing", ".waiting")
NOTES = {"done": "manifest", "rejected": "errors", "failed": "reason"}
TRIES = 2  # starts that may die while handling one spec before it is filed as failed


def wanted(path: Path) -> bool:
    """A spec someone dropped, not an editor's swap file or a partial copy."""
    name = path.name
    return (
        path.suffix.lower() in SUFFIXES
        and not name.startswith((".", "~", "#"))
        and not name.endswith(("~", ".tmp", ".part", ".swp"))
        and not is_lock_file(name)  # a direction file travels with its spec
    )


class NotRegular(Exception):
    """The path is not (or no longer) a regular file: never opened for reading."""


def read_regular(path: Path) -> bytes:
    """At most MAX_BYTES + 1 bytes of a regular file, whatever stat() said beforehand.

    O_NONBLOCK keeps a FIFO swapped in since the check from blocking the open, O_NOFOLLOW
    refuses a symlink swapped in, and the type is checked on the open descriptor.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise NotRegular(exc.strerror or str(exc)) from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegular("not a regular file")
        return fh.read(MAX_BYTES + 1)


_KINDS = {
    stat.S_ISDIR: "a directory",
    stat.S_ISFIFO: "a named pipe (FIFO)",
    stat.S_ISSOCK: "a socket",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
}


@dataclass
class _Pending:
    signature: tuple[int, int, int]  # size, mtime_ns, inode
    closed: bool  # its writer closed it (or it was renamed in, or was there at start)
    since: float  # when the signature last changed, or when it was closed


class _Events(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, seen: Callable[[Path, str], None]) -> None:
        self.loop = loop
        self.seen = seen

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write", "deleted"):
            return  # reads (ours included) and removals change nothing to claim
        target = getattr(event, "dest_path", "") or event.src_path
        self.loop.call_soon_threadsafe(self.seen, Path(os.fsdecode(target)), event.event_type)


class WatchFolder:
    def __init__(
        self,
        folder: Path,
        runner: Runner,
        *,
        settle: float = 0.5,
        wait_for_server: float | None = None,
        retry: float = 2.0,
        db_retry: float = 10.0,
        echo: Callable[[str], None] = console.out,
    ) -> None:
        self.folder = folder.absolute()
        self.runner = runner
        self.settle = settle
        self.wait_for_server = (
            runner.settings.wait_for_server if wait_for_server is None else wait_for_server
        )
        self.retry = retry
        self.db_retry = db_retry  # the longest pause between checks of a database that is down
        self.echo = echo
        self.processing = self.folder / ".processing"
        self._pending: dict[Path, _Pending] = {}
        self._ignored: set[Path] = set()
        self._running: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._close_events = True  # inotify reports a writer closing; other observers do not

    # -- what is taken, and when -----------------------------------------------------

    def refusal(self, path: Path) -> str | None:
        """Why `path` is not taken (None: it is a regular file, or a symlink to one inside
        the folder). Raises FileNotFoundError when it is gone."""
        mode = os.lstat(path).st_mode
        if stat.S_ISREG(mode):
            return None
        if stat.S_ISLNK(mode):
            try:
                target = path.resolve(strict=True)
                regular = stat.S_ISREG(os.stat(target).st_mode)
            except (OSError, RuntimeError):
                return "a symlink to nothing readable"
            if not target.is_relative_to(self.folder.resolve()) or not regular:
                return "a symlink whose target is not a regular file inside the folder"
            return None
        return next((k for test, k in _KINDS.items() if test(mode)), "not a regular file")

    def _seen(self, path: Path, how: str = "closed") -> None:
        if path.parent != self.folder or not wanted(path):
            return
        try:
            problem = self.refusal(path)
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            self._pending.pop(path, None)
            self._ignored.discard(path)
            return
        if problem is not None:
            self._pending.pop(path, None)
            if path not in self._ignored:
                self._ignored.add(path)
                self.echo(f"ignoring {path.name}: {problem}; left where it is")
            return
        self._ignored.discard(path)
        signature = (st.st_size, st.st_mtime_ns, st.st_ino)
        now = time.monotonic()
        if how == "moved":  # renamed in: complete by the documented contract
            self._pending[path] = _Pending(signature, True, now - self.settle)
        elif how == "closed" or not self._close_events:  # without them: settle time only
            self._pending[path] = _Pending(signature, True, now)
        else:
            entry = self._pending.get(path)
            if entry is None or entry.signature != signature:
                self._pending[path] = _Pending(signature, False, now)
        self._wake.set()

    async def serve(self) -> None:
        """Run until cancelled; on cancel, running specs stay claimed for the next start."""
        for name in FOLDERS:
            (self.folder / name).mkdir(parents=True, exist_ok=True)
        for note in (self.folder / ".waiting").iterdir():
            note.unlink(missing_ok=True)  # rewritten by the specs that still wait
        # Watch first, then scan: a file landing in between is seen twice, never missed.
        observer = Observer()
        self._close_events = type(observer).__name__ == "InotifyObserver"
        observer.schedule(_Events(asyncio.get_running_loop(), self._seen), str(self.folder))
        observer.start()
        for left in sorted(self.processing.iterdir()):
            if wanted(left) and left.is_file() and not left.is_symlink():
                self.echo(f"resuming {left.name} (claimed by an earlier start)")
                self._start(left)
        for path in sorted(self.folder.iterdir()):
            self._seen(path)
        self.echo(f"watching {self.folder} for .yaml specs (SIGTERM stops)")
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
        for path, entry in list(self._pending.items()):
            try:
                st = path.stat()
            except FileNotFoundError:
                del self._pending[path]  # moved away or deleted before it settled
                continue
            signature = (st.st_size, st.st_mtime_ns, st.st_ino)
            if signature != entry.signature:
                entry.signature, entry.since = signature, now
            elif entry.closed and now - entry.since >= self.settle:
                del self._pending[path]
                self._claim(path)

    def _claim(self, path: Path) -> None:
        claimed = self.processing / path.name
        try:
            if self.refusal(path) is not None:
                self._seen(path)  # changed type since it was seen: say so once
                return
            if path.is_symlink():  # keep the bytes, not a link that breaks once moved
                outputs.atomic_write_bytes(claimed, read_regular(path.resolve()))
                path.unlink()
            else:
                os.rename(path, claimed)
        except (FileNotFoundError, NotRegular):
            return
        self._start(claimed)

    def _start(self, claimed: Path) -> None:
        task = asyncio.create_task(self._handle(claimed), name=f"spec {claimed.name}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    # -- handling a claimed spec ------------------------------------------------------

    async def _handle(self, claimed: Path) -> None:
        name = claimed.name
        tries = self.processing / f".{name}.tries"
        try:
            died = int(tries.read_text() or 0)
        except (FileNotFoundError, ValueError):
            died = 0
        if died >= TRIES:
            self._file(
                claimed,
                "failed",
                "reason",
                f"the daemon stopped unexpectedly {died} times while handling this spec; "
                "it is not tried again\n",
            )
            self.echo(f"failed {name}: the daemon died with it {died} times")
            tries.unlink()
            return
        tries.write_text(str(died + 1))  # left behind only if the process dies
        try:
            await self._handle_once(claimed)
        except asyncio.CancelledError:
            if died:
                tries.write_text(str(died))
            else:
                tries.unlink(missing_ok=True)
            raise
        except Exception as exc:  # a bug must not leave the spec claimed for ever
            log.exception("handling %s", name)
            self._file(claimed, "failed", "reason", f"internal error: {type(exc).__name__}\n")
            self.echo(f"failed {name}: internal error (see the log)")
        tries.unlink(missing_ok=True)

    async def _handle_once(self, claimed: Path) -> None:
        name = claimed.name
        try:
            self._bring_direction(claimed)
            await direct_if_wanted(claimed, self.runner.settings, say=self.echo)  # direct: true
            spec, plan = await asyncio.to_thread(self._load, claimed)
        except DirectionError as exc:
            self._file(claimed, "failed", "reason", f"{exc}\n")
            self.echo(f"failed {name}: {exc}")
            return
        except SpecErrors as exc:
            self._file(claimed, "rejected", "errors", console.spec_errors(exc.errors) + "\n")
            self.echo(f"rejected {name}: {len(exc.errors)} error(s)")
            return
        except NotRegular as exc:
            self._file(claimed, "rejected", "errors", f"{name}: {exc}\n")
            self.echo(f"rejected {name}: {exc}")
            return
        if self.runner.settings.workers:  # the workers wait for the servers themselves
            await self._database_ready(claimed)
            await self._submit(claimed, spec, plan)
            return
        while True:
            try:
                if not await self._server_ready(claimed):
                    return
                await self._database_ready(claimed)
                self.echo(f"running {name}")
                report = await self.runner.run(spec, plan)
            except asyncio.CancelledError:
                self.echo(f"stopping; {name} stays claimed and resumes at the next start")
                raise
            except BridgeError as exc:
                self._file(claimed, "failed", "reason", f"{exc}\n")
                self.echo(f"failed {name}: {exc}")
                return
            except Exception:
                if await asyncio.to_thread(self.runner.store.check):
                    raise  # not an outage: filed as an internal error
                self.echo(
                    f"the database went away while running {name}; it runs again once it is back"
                )
                continue
            break
        if report.ok:
            self._file(claimed, "done", "manifest", f"{report.manifest}\n")
            self.echo(f"done {name}: {console.counts(report.counts())}")
        else:
            reasons = "".join(f"{job}: {error}\n" for job, error in report.errors.items())
            self._file(claimed, "failed", "reason", reasons or f"run {report.status}\n")
            self.echo(f"failed {name}: {console.counts(report.counts())}")

    async def _submit(self, claimed: Path, spec: Spec, plan: Plan) -> None:
        """BRIDGE_WORKERS: hand the run to the workers and file the spec as done with it."""
        try:
            run_id = await submit(
                self.runner.settings,
                self.runner.store,
                spec,
                plan,
                Selection(),
                priority=spec.priority,
            )
        except BridgeError as exc:
            self._file(claimed, "failed", "reason", f"{exc}\n")
            self.echo(f"failed {claimed.name}: {exc}")
            return
        self._file(claimed, "done", "manifest", f"submitted as run {run_id}\n")
        self.echo(f"submitted {claimed.name}: run {run_id} (bridge status {run_id} --wait)")

    def _bring_direction(self, claimed: Path) -> None:
        """A direction file dropped beside the spec (reviewed, say) is used, not redone."""
        dropped = lock_path(self.folder / claimed.name)
        try:
            outputs.atomic_write_bytes(lock_path(claimed), read_regular(dropped))
        except (FileNotFoundError, NotRegular):
            return

    def _load(self, claimed: Path) -> tuple[Spec, Plan]:
        """Read, validate and compile (in a worker thread). Relative paths resolve against
        DIR, where the spec was dropped; the database records a content-addressed kept copy
        (the spec text itself stays out of the database: it may hold webhook credentials)."""
        raw = read_regular(claimed)
        if len(raw) > MAX_BYTES:
            raise NotRegular(f"larger than the limit of {MAX_BYTES:,} bytes")
        spec = validate(merge_direction(load_bytes(raw, claimed.name, base=self.folder), claimed))
        try:
            direction = (lock_path, lock_path(claimed).read_bytes())  # ours: brought or directed
        except FileNotFoundError:
            direction = None
        kept = outputs.keep_spec(self.runner.settings.output_path, raw, claimed.name, direction)
        spec = replace(spec, file=str(kept))
        return spec, compile_plan(spec)

    async def _server_ready(self, claimed: Path) -> bool:
        """Wait, visibly, until a render server answers; False once it was filed as failed."""
        note = self.folder / ".waiting" / claimed.name
        deadline = time.monotonic() + self.wait_for_server
        try:
            while True:
                try:
                    pool = await self.runner.backend()
                    if pool.healthy():
                        return True
                    problem = "no ComfyUI server is answering: " + ", ".join(pool.names)
                except ConfigError as exc:
                    problem = exc.message
                left = deadline - time.monotonic()
                if left <= 0:
                    self._file(
                        claimed,
                        "failed",
                        "reason",
                        f"{problem}; gave up after waiting {self.wait_for_server:g} s "
                        "(BRIDGE_WAIT_FOR_SERVER)\n",
                    )
                    self.echo(f"failed {claimed.name}: no server answered in time")
                    return False
                if not note.exists():
                    note.write_text(
                        f"waiting for a render server since {time.ctime()}: {problem}\n"
                    )
                    self.echo(f"waiting {claimed.name}: {problem}")
                await asyncio.sleep(min(self.retry, left))
        finally:
            note.unlink(missing_ok=True)

    async def _database_ready(self, claimed: Path) -> None:
        """Wait, visibly and backing off, until the job store answers: a spec is never run,
        nor filed, without its records. The store logs each change of state once."""
        store = self.runner.store
        if await asyncio.to_thread(store.check):
            return
        note = self.folder / ".waiting" / claimed.name
        note.write_text(f"waiting for the database since {time.ctime()}\n")
        self.echo(f"waiting {claimed.name}: the database is unavailable")
        try:
            await store.wait_available(first_delay=0.5, max_delay=self.db_retry)
        finally:
            note.unlink(missing_ok=True)

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
        with contextlib.suppress(FileNotFoundError):  # the direction it was rendered with
            os.replace(lock_path(claimed), lock_path(self.folder / outcome / name))
        os.replace(claimed, self.folder / outcome / name)
