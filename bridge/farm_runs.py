"""A submitted run as every worker sees it: its spec and plan, recompiled from the spec file
the run row names, its finished jobs' outputs read from the asset rows, and its end.

The plan is not stored: a spec always compiles to the same jobs and hashes, and the run row
keeps the spec's revision (and its settings the direction file's digest), so a worker
that reads a changed spec or direction refuses it instead of rendering something other
than what was submitted. Workers compile a spec as `bridge submit` says it is coming,
before the run's rows are written; the run takes that compile only if it is of the
revision submitted.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge import gcpause, manifest
from bridge.compile import compile_plan
from bridge.db import farm
from bridge.db.store import Store
from bridge.direct.lock import lock_path
from bridge.errors import BridgeError, SpecUnreadable
from bridge.hashing import file_digest
from bridge.manifest import JobResult
from bridge.plan import Plan
from bridge.record import Recorder, RunReport, recorded_file
from bridge.spec.model import Spec
from bridge.states import JobState, RunState
from bridge.webhooks import Hook, Notifier, hooks_from_spec

SPEC_PATH = "spec_path"  # keys of a submitted run's settings column
SPEC_FOLDER = "spec_folder"  # where its relative paths resolve (a watch folder, say)
SELECTION = "selection"
PREPARED = "prepared"  # the key of the compile the submitter asked for (Runs.expect)
PREPARED_FOR = 60.0  # seconds a compile waits for the run it was prepared for
DIRECTION = "direction"  # sha256 of the spec's direction file as submitted (None: none)


# a spec that is not there (moved, or a path other hosts lack) rather than unreadable now
_GONE = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


_WARM = b"""version: 1
project: {id: warm-up}
defaults: {preset: draft, fps: 12, motion: core-smoke, duration: 2f}
scenes: [{id: a, shots: [{id: s1, action: warm-up}]}]
"""


@dataclass(frozen=True)
class RunContext:
    run_id: int
    spec: Spec
    plan: Plan
    priority: int


def direction_digest(spec_path: Path) -> str | None:
    """The direction file beside a spec, as a digest: it is part of what a run renders,
    and the spec's revision does not cover it."""
    path = lock_path(spec_path)
    try:
        return file_digest(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SpecUnreadable(f"cannot read {path} now ({exc.strerror or exc})") from None


def narrowed(plan: Plan, selection: dict[str, Any] | None) -> Plan:
    from bridge.runner import Selection

    sel = selection or {}
    chosen = Selection(
        scene_ids=tuple(sel.get("scene_ids", ())),
        only=tuple(sel.get("only", ())),
        force=bool(sel.get("force", False)),
    )
    return chosen.narrow(plan)


@dataclass
class _Prepared:
    """A spec compiled on a submitter's word, for the run it is about to write."""

    path: Path
    base: Path
    at: float
    done: threading.Event = field(default_factory=threading.Event)
    compiled: tuple[Spec, Plan] | None = None


class Runs:
    """The runs this worker has seen, compiled once each."""

    def __init__(
        self, store: Store, root: Path, environ: Mapping[str, str], webhooks: Notifier
    ) -> None:
        self.store = store
        self.root = root
        self.environ = environ
        self.webhooks = webhooks
        self._known: dict[int, RunContext] = {}
        self._lock = threading.Lock()
        self._compiling: dict[int, threading.Lock] = {}
        self._prepared: dict[str, _Prepared] = {}

    def get(self, run_id: int) -> RunContext:
        """The run, compiled once: the jobs a worker takes at once wait for one compile
        instead of each compiling the spec (at a run's start, all of them)."""
        with self._lock:
            if run_id in self._known:
                return self._known[run_id]
            compiling = self._compiling.setdefault(run_id, threading.Lock())
        with compiling:
            with self._lock:
                if run_id in self._known:
                    return self._known[run_id]
            ctx = self._compile(run_id)
            with self._lock:
                self._known[run_id] = ctx
                del self._compiling[run_id]
            return ctx

    def expect(self, key: str, path: Path, base: Path) -> Callable[[], None]:
        """A submitter's word that it is about to write a run of this spec under `key`;
        returns the spec's compile, to run on a thread while the submitter writes the
        run's rows (they and its own checks take longer). The run's compile waits for it
        instead of compiling again; one its run never claims is dropped after a while."""
        entry = _Prepared(path, base, time.monotonic())
        with self._lock:
            for old in [k for k, e in self._prepared.items() if entry.at - e.at > PREPARED_FOR]:
                del self._prepared[old]
            self._prepared[key] = entry
        return functools.partial(self._prepare, entry)

    def _prepare(self, entry: _Prepared) -> None:
        """A spec that fails here is left to the run's own compile, which says why."""
        try:
            with contextlib.suppress(BridgeError):
                spec = self._load(entry.path, entry.base, "a submitted spec")
                entry.compiled = spec, compile_plan(spec)
        finally:
            entry.done.set()

    def warm(self) -> None:
        """Build what every compile shares (the schema's validator, the templates) before
        the first run: else each worker builds it as the run starts, when every worker
        compiles the same spec at once."""
        from bridge.spec.load import load_bytes
        from bridge.spec.validate import validate

        compile_plan(validate(load_bytes(_WARM, "<warm-up>", base=self.root)))

    def _compile(self, run_id: int) -> RunContext:
        run = self.store.run(run_id)
        if run is None or not run.settings or SPEC_PATH not in run.settings:
            raise BridgeError("no such run was submitted to the workers")
        path = Path(run.settings[SPEC_PATH])
        base = Path(run.settings.get(SPEC_FOLDER) or path.parent)
        compiled = self._claim_prepared(run.settings.get(PREPARED), path, base)
        if compiled is None or compiled[0].revision != run.revision:
            spec = self._load(path, base, f"run {run_id}")
            compiled = spec, compile_plan(spec)
        spec, plan = compiled
        if spec.revision != run.revision:
            raise BridgeError(
                f"{run.settings[SPEC_PATH]} changed since run {run_id} was submitted; "
                "submit it again"
            )
        if DIRECTION in run.settings and direction_digest(path) != run.settings[DIRECTION]:
            raise BridgeError(
                f"{lock_path(path)} changed since run {run_id} was submitted; submit it again"
            )
        return RunContext(run_id, spec, narrowed(plan, run.settings.get(SELECTION)), run.priority)

    def _claim_prepared(self, key: Any, path: Path, base: Path) -> tuple[Spec, Plan] | None:
        """The compile prepared for this run (waited for if under way), taken once."""
        with self._lock:
            entry = self._prepared.pop(key, None) if isinstance(key, str) else None
        if entry is None or (entry.path, entry.base) != (path, base):
            return None
        entry.done.wait()
        return entry.compiled

    def _load(self, path: Path, base: Path, what: str) -> Spec:
        from bridge.direct.merge import merge_direction
        from bridge.spec.load import load_bytes
        from bridge.spec.validate import validate

        try:
            raw = path.read_bytes()
        except _GONE as exc:
            raise BridgeError(
                f"{what}: cannot read its spec {path} ({exc.strerror}); workers need "
                "the spec on the shared OUTPUT_PATH or the same path on every host"
            ) from None
        except OSError as exc:  # EIO, ESTALE, a timeout: the file system comes back
            raise SpecUnreadable(
                f"{what}: cannot read its spec {path} now ({exc.strerror or exc})"
            ) from None
        with gcpause.paused():
            return validate(merge_direction(load_bytes(raw, str(path), base=base), path))

    def results(self, ctx: RunContext, job_ids: Iterable[str]) -> dict[str, JobResult]:
        """The outputs of finished jobs, from their rows and assets."""
        wanted = list(job_ids)
        if not wanted:
            return {}
        plan = ctx.plan
        assets = self.store.find_assets(plan.project, (plan.job(j).hash for j in wanted))
        rows = self.store.job_rows(ctx.run_id, wanted)
        out = {}
        for job_id in wanted:
            asset = assets.get(plan.job(job_id).hash)
            if asset is None:
                continue
            row = rows.get(job_id)
            out[job_id] = JobResult(
                files=(recorded_file(self.root, asset),),
                server=row.server if row and row.server else "cache",
                prompt_id=row.prompt_id if row else None,
                seconds=row.seconds if row else None,
                attempts=row.attempts if row else 0,
            )
        return out

    def finish_if_done(self, ctx: RunContext) -> bool:
        """Write the manifest and end the run once every job ended; exactly one worker
        does it (the run row is locked and must still be running)."""
        if farm.any_unfinished(self.store.engine, ctx.run_id):  # one row, not the run's
            return False
        states = farm.job_states(self.store.engine, ctx.run_id)
        if farm.unfinished(states):
            return False
        with farm.run_lock(self.store.engine, ctx.run_id) as mine:
            run = self.store.run(ctx.run_id)
            if not mine or run is None or run.status != RunState.RUNNING.value:
                return False
            hooks = hooks_from_spec(ctx.spec.webhooks, self.environ)
            finish(
                self.store, self.root, ctx, states, self.results(ctx, states), hooks, self.webhooks
            )
        return True

    def fail(self, run_id: int, error: str) -> bool:
        """End a run whose spec can no longer be read as submitted: its unfinished jobs and
        the run fail with `error` (no manifest: there is no plan to describe)."""
        with farm.run_lock(self.store.engine, run_id) as mine:
            run = self.store.run(run_id)
            if not mine or run is None or run.status != RunState.RUNNING.value:
                return False
            farm.fail_unfinished(self.store.engine, run_id, error)
            counts: dict[str, int] = {}
            for state in farm.job_states(self.store.engine, run_id).values():
                counts[state.value] = counts.get(state.value, 0) + 1
            self.store.finish_run(run_id, RunState.FAILED, counts, None)
            self.store.log(run_id, "run_finished", data={"status": "failed", "error": error})
        return True


def finish(
    store: Store,
    root: Path,
    ctx: RunContext,
    states: dict[str, JobState],
    results: dict[str, JobResult],
    hooks: list[Hook],
    webhooks: Notifier,
) -> Path:
    """The manifest, the run's final row and its `run_finished` webhook."""
    errors = {r.job_id: r.error or "" for r in store.jobs(ctx.run_id, JobState.FAILED.value)}
    run = store.run(ctx.run_id)
    report = RunReport(
        run_id=ctx.run_id,
        project=ctx.plan.project,
        states=states,
        errors=errors,
        manifest=None,
        preview=bool(run and run.preview),
        backend=run.backend if run else "",
        results=results,
    )
    recorder = Recorder(
        store,
        ctx.spec,
        ctx.plan,
        root=root,
        hooks=hooks,
        webhooks=webhooks,
        detach=True,
    )
    recorder.run_id = ctx.run_id
    return recorder.finish(
        report,
        {
            "backend": report.backend,
            "preview": report.preview,
            "started_at": run.started_at.isoformat(timespec="seconds") if run else None,
            "finished_at": manifest.now(),
            "workers": True,
        },
    )
