"""`bridge`: argument parsing and dispatch only; every command is a core call.

Exit codes: 0 success, 1 a user error (bad spec, failed job, bad setting), 2 usage,
3 an internal error (with a log file to report), 130 interrupted.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bridge import console, gcpause
from bridge import priority as priorities
from bridge.errors import BridgeError, SpecErrors, UsageError
from bridge.masking import MaskingFilter, mask_text
from bridge.settings import Settings, resolve

if TYPE_CHECKING:
    from bridge.freshness import Reason
    from bridge.spec.model import Spec

Command = Callable[[argparse.Namespace], int]


def _settings(args: argparse.Namespace) -> Settings:
    flags = {
        "comfyui_urls": getattr(args, "comfyui_url", None),
        "max_concurrent_jobs": getattr(args, "max_concurrent_jobs", None),
        "output_path": getattr(args, "output", None),
        "backend": getattr(args, "backend", None),
        "database_url": getattr(args, "database_url", None),
    }
    settings = resolve(flags, os.environ, getattr(args, "config", None))
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(MaskingFilter())
    return settings


def cmd_validate(args: argparse.Namespace) -> int:
    """Errors go to stderr as text; JSON and GitHub annotations go to stdout for tools."""
    from bridge.direct.lock import is_lock_file, spec_path_of
    from bridge.spec.validate import load_spec

    failed = 0
    reports = []
    given = {str(Path(p)) for p in args.specs}
    for path in args.specs:
        if is_lock_file(path):  # `specs/*.yaml` matches direction files too
            spec_file = spec_path_of(path)
            if str(spec_file) in given:
                continue  # checked with its spec, which merges it
            path = str(spec_file)
        try:
            spec = load_spec(path)
        except SpecErrors as exc:
            failed += 1
            reports.append(
                {"file": path, "ok": False, "errors": [console.error_record(e) for e in exc.errors]}
            )
            if args.format == "text":
                console.err(console.spec_errors(exc.errors))
            elif args.format == "github":
                console.out(console.spec_errors(exc.errors, "github"))
            continue
        shots = sum(len(s.shots) for s in spec.scenes)
        reports.append({"file": path, "ok": True, "scenes": len(spec.scenes), "shots": shots})
        if args.format == "text":
            scenes = console.plural(len(spec.scenes), "scene")
            console.out(f"ok {path}: {scenes}, {console.plural(shots, 'shot')}")
    if args.format == "json":
        console.out(json.dumps(reports, indent=2))
    elif failed and args.format == "text":
        console.err(f"{failed} of {console.plural(len(args.specs), 'spec')} failed validation")
    return 1 if failed else 0


def cmd_direct(args: argparse.Namespace) -> int:
    """Fill what directed scenes leave open and write SPEC.direction.yaml."""
    settings = _settings(args)
    report = _direct(args.spec, settings, args.scene_id or (), args.force, args.overwrite_edits)
    if not report.directed:
        console.out(f"no scene of {args.spec} has `direct: true`: nothing to direct")
    elif report.fresh:
        console.out(f"direction fresh: {report.lock_file} (no agent called)")
    return 0


def _direct(
    spec: str, settings: Settings, scene_ids: Any, force: bool, overwrite_edits: bool = False
) -> Any:
    import asyncio

    from bridge.direct.direct import direct_spec

    report = asyncio.run(
        direct_spec(
            spec,
            settings,
            scene_ids=tuple(scene_ids),
            force=force,
            overwrite_edits=overwrite_edits,
            say=console.err,
        )
    )
    for a in report.made:
        console.out(f"directed {a.scene}: {a.role} ({', '.join(a.reasons)})")
    for a in report.kept:
        console.out(f"kept {a.scene}: {a.role} was edited by hand")
    if report.made:
        by = ", ".join(sorted(report.directors))
        console.out(
            f"wrote {report.lock_file}: {console.plural(len(report.made), 'role')} by {by}, "
            f"{console.plural(report.calls, 'model call')}"
        )
    return report


def cmd_plan(args: argparse.Namespace) -> int:
    """The plan by stage, and why each job would run, from the run history when there is one."""
    from bridge.compile import compile_plan
    from bridge.spec.validate import load_spec

    spec = load_spec(args.spec)
    direction = _direction_lines(args.spec, spec)
    plan = compile_plan(spec)
    gc.freeze()  # spec and plan live until exit: the collector need not re-scan them (~0.5 s)
    if args.format == "dot":
        console.out(console.plan_dot(plan))
        return 0
    settings = _settings(args)
    reasons = _reasons(settings, plan, spec.templates, args.force)
    summary = console.plan_summary(plan, reasons)
    if direction:
        summary["direction"] = direction
    problems: list[str] = []
    if args.object_info:
        problems = _offline_preflight(plan, Path(args.object_info))
        summary["preflight"] = problems
    if args.format == "json":
        console.out(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:
        console.out(console.plan_text(summary))
        for line in direction:
            console.err(f"!! {line}")
        if args.object_info:
            if problems:
                console.err("preflight against " + args.object_info + " failed:")
                console.err(console.bullet(problems))
            else:
                console.out(f"preflight against {args.object_info}: ok")
    return 1 if problems else 0


def _direction_lines(path: str, spec: Spec) -> list[str]:
    """Stale, missing or hand-edited direction; a spec that directs nothing is not read again
    (nor is the direction machinery, with its LLM clients, imported)."""
    from bridge.direct.merge import directed

    if not directed(spec.data):
        return []
    from bridge.direct.direct import status, status_lines

    return status_lines(status(path))


def _reasons(settings: Settings, plan: Any, templates: Any, force: bool) -> dict[str, Reason]:
    """Reasons from the job store; no history (or no database yet) means everything is new."""
    from bridge import freshness

    url = settings.database
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return dict.fromkeys(plan.order, freshness.FORCED if force else freshness.NEW)
    from bridge.db.store import Store

    store = Store(url)
    try:
        return freshness.reasons(store, plan, settings.output_path, templates, force=force)
    finally:
        store.close()


def _offline_preflight(plan: Any, path: Path) -> list[str]:
    from bridge import preflight

    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--object-info {path}: cannot read it as JSON: {exc}") from None
    if not isinstance(info, dict):
        raise UsageError(f"--object-info {path}: expected the JSON object /object_info returns")
    info = info.get("nodes", info) if "nodes" in info and "source" in info else info
    return preflight.problems([j for j in plan.jobs() if j.kind.remote], info)


def cmd_capabilities(args: argparse.Namespace) -> int:
    """What the configured servers offer; --save stores /object_info for offline preflight."""
    import asyncio

    from bridge import preflight
    from bridge.backends.comfyui import ComfyUIBackend
    from bridge.templates import bundled

    settings = _settings(args)
    urls = settings.comfyui_urls or ("http://127.0.0.1:8188",)

    async def fetch(url: str) -> tuple[dict[str, Any], dict[str, Any]]:
        backend = ComfyUIBackend(url)
        try:
            await backend.start()
            return await backend.system_stats(), dict(await backend.object_info())
        finally:
            await backend.close()

    failed = 0
    for url in urls:
        try:
            stats, info = asyncio.run(fetch(url))
        except BridgeError as exc:
            console.err(f"{url}: {exc}")
            failed += 1
            continue
        version = stats.get("system", {}).get("comfyui_version", "?")
        loras = preflight.combo_options(
            info.get("LoraLoader", {}).get("input", {}).get("required", {}).get("lora_name")
        )
        usable = [
            name for name, t in bundled().items() if not preflight.problems_for(t.workflow, info)
        ]
        console.out(f"{url}: ComfyUI {version}, {len(info)} node classes")
        console.out(f"  LoRAs: {', '.join(loras) if loras else 'none installed'}")
        console.out(f"  bundled templates that validate here: {', '.join(usable) or 'none'}")
        if args.save:
            from bridge.outputs import atomic_write_json

            atomic_write_json(Path(args.save), info)
            console.out(f"  saved /object_info to {args.save}")
            args.save = None  # the first server's
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    """The HTML report of a run, from its own manifest, beside the outputs."""
    import asyncio

    from bridge import manifest as manifests
    from bridge import report as html_report
    from bridge.db.store import Store

    settings = _settings(args)
    store = Store(settings.database)
    try:
        run = store.run(args.run)
    finally:
        store.close()
    if run is None or not run.manifest:
        raise UsageError(f"there is no run {args.run} with a manifest")
    folder = Path(run.manifest).parent
    path = manifests.run_path(folder, args.run)
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"run {args.run}'s manifest {path} cannot be read: {exc}") from None
    page = asyncio.run(html_report.write(document, folder))
    console.out(f"report: {page}")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """Run every spec dropped into DIR; SIGTERM stops cleanly and loses nothing."""
    import asyncio

    from bridge.db.store import Store
    from bridge.runner import Runner, run_cancellable
    from bridge.watch import WatchFolder

    settings = _settings(args)
    folder = Path(args.folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")

    async def go() -> None:
        runner = Runner(
            settings,
            store=Store(settings.database, connect=False),  # starts while the database is down
            notify=lambda text: console.err(f"!! {text}"),
            detach=True,
            outlive_outages=True,
            environ=os.environ,
        )
        try:
            await WatchFolder(folder, runner, settle=args.settle).serve()
        finally:
            await runner.close()

    try:
        asyncio.run(run_cancellable(go()))
    except asyncio.CancelledError:
        console.out("stopped; unfinished specs resume at the next start")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The REST API on the same runner; beyond loopback it requires BRIDGE_API_TOKEN."""
    import asyncio

    from bridge.api import serve
    from bridge.db.store import Store
    from bridge.runner import Runner, run_cancellable

    settings = _settings(args)

    async def go() -> None:
        runner = Runner(
            settings,
            store=Store(settings.database, connect=False),  # starts while the database is down
            notify=lambda text: console.err(f"!! {text}"),
            outlive_outages=True,
            environ=os.environ,
        )
        try:
            await serve(runner, args.host, args.port, settings.api_token)
        finally:
            await runner.close()

    try:
        asyncio.run(run_cancellable(go()))
    except asyncio.CancelledError:
        console.out("stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Runs from the job store: the recent ones, or one run's jobs."""
    from bridge.db.store import Store

    settings = _settings(args)
    store = Store(settings.database)
    try:
        if args.workers:
            return _status_workers(store)
        if args.wait:
            if args.run is None:
                raise UsageError("--wait follows one run: bridge status RUN --wait")
            return _follow(store, args.run)
        if args.run is None:
            runs = store.runs(limit=args.limit)
            if not runs:
                console.out("no runs yet")
            for r in runs:
                counts = console.counts(r.counts or store.count_jobs(r.id or 0))
                preview = " PREVIEW" if r.preview else ""
                console.out(f"run {r.id}  {r.project_id:<20} {r.status:<11}{preview}  {counts}")
            return 0
        run = store.run(args.run)
        if run is None:
            raise UsageError(f"there is no run {args.run}")
        console.out(f"run {run.id}: {run.project_id} {run.status} on {run.backend}")
        console.out(f"spec {run.spec_file} (revision {run.revision[:12]})")
        if run.manifest:
            console.out(f"manifest {run.manifest}")
        for j in store.jobs(args.run):
            extra = f"  {j.error}" if j.error else ""
            took = f"{j.seconds:.1f}s" if j.seconds else ""
            console.out(f"  {j.job_id:<34} {j.state:<10} {took:>7} {j.server or ''}{extra}")
        return 0
    finally:
        store.close()


def _status_workers(store: Any) -> int:
    from bridge.db import farm

    if store.engine.dialect.name != "postgresql":
        raise UsageError("workers share a PostgreSQL database: set DATABASE_URL=postgresql://...")
    rows = farm.workers(store.engine) if farm.queue_exists(store.engine) else []
    if not rows:
        console.out("no workers")
    for w in rows:
        beat = f"{w.heartbeat_age:.1f}s ago" if w.heartbeat_age is not None else "gone"
        held = ", ".join(w.jobs) or "idle"
        console.out(f"worker {w.id:<5} {w.name:<28} host {w.host:<16} heartbeat {beat:<10} {held}")
    for server, (jobs, switches) in sorted(farm.server_counts(store.engine).items()):
        console.out(f"server {server}: {jobs} jobs given, {switches} model switches")
    return 0


def _follow(store: Any, run_id: int) -> int:
    """`bridge run`'s display for a run the workers render; exit 0 only if all succeeded."""
    import asyncio

    from bridge.submit import follow

    total = len(store.jobs(run_id))
    if store.run(run_id) is None:
        raise UsageError(f"there is no run {run_id}")
    display = console.Progress(total)
    try:
        run = asyncio.run(follow(store, run_id, display))
    except KeyboardInterrupt:
        display.close()
        console.err(f"stopped following run {run_id}; the workers go on with it")
        return 130
    display.close()
    console.out(f"run {run_id}: {console.counts(run.counts or store.count_jobs(run_id))}")
    if run.manifest:
        console.out(f"manifest: {run.manifest}")
    for j in store.jobs(run_id, "failed"):
        console.err(f"failed {j.job_id}: {j.error}")
    return 0 if run.status == "succeeded" else 1


def cmd_submit(args: argparse.Namespace) -> int:
    """Hand a spec to the workers; prints the run id and returns."""
    import asyncio

    from bridge.compile import compile_plan
    from bridge.db.store import Store
    from bridge.runner import Selection
    from bridge.spec.validate import load_spec
    from bridge.submit import submit

    settings = _settings(args)
    chosen = None if args.priority is None else priorities.parse(args.priority, where="--priority")
    spec = load_spec(args.spec)
    selection = Selection(only=tuple(args.only or ()), force=args.force)
    plan = selection.narrow(compile_plan(spec))
    priority = spec.priority if chosen is None else chosen
    store = Store(settings.database)
    try:
        run_id = asyncio.run(submit(settings, store, spec, plan, selection, priority=priority))
        console.out(str(run_id))
        return _follow(store, run_id) if args.wait else 0
    finally:
        store.close()


def cmd_worker(args: argparse.Namespace) -> int:
    """One worker process: renders jobs of every submitted run until SIGTERM."""
    import asyncio

    from bridge.runner import run_cancellable
    from bridge.worker import serve

    settings = _settings(args)
    if args.jobs is not None:
        from dataclasses import replace

        settings = replace(settings, worker_jobs=args.jobs)
    try:
        asyncio.run(run_cancellable(serve(settings, os.environ, args.name or ""), _stop_now))
    except asyncio.CancelledError:
        console.err("worker stopped")
    return 0


def _stop_now() -> None:
    """A second SIGTERM or Ctrl-C while the jobs in hand are finished: stop as kill -9
    would, which the farm is built to survive, not by tearing the queue down under them."""
    console.err(
        "worker stopped at once: its jobs in hand go to other workers when their lease "
        "(BRIDGE_LEASE_SECONDS) runs out"
    )
    os._exit(1)


def _spec_from_database(settings: Settings, args: argparse.Namespace) -> Any:
    """No SPEC: the project (--project-id) or the scene's project (--scene-id) as rows."""
    from bridge.db.store import Store
    from bridge.spec import rows

    if not args.project_id and not args.scene_id:
        raise UsageError("give a SPEC file, or --project-id / --scene-id of one in the database")
    store = Store(settings.database)
    try:
        if args.project_id:
            return rows.spec_for_project(store, args.project_id)
        return rows.spec_for_scene(store, args.scene_id[0])
    finally:
        store.close()


def cmd_export(args: argparse.Namespace) -> int:
    """A project held in the database as a spec YAML file that validates."""
    from bridge.db.store import Store
    from bridge.outputs import atomic_write_bytes
    from bridge.spec import rows

    settings = _settings(args)
    store = Store(settings.database)
    try:
        text = rows.to_yaml(rows.spec_from_rows(store, args.project).data)
    finally:
        store.close()
    if args.output_file:
        try:
            atomic_write_bytes(Path(args.output_file), text.encode())
        except OSError as exc:
            raise BridgeError(f"cannot write {args.output_file}: {exc.strerror}") from None
        console.out(f"wrote {args.output_file}")
    else:
        console.out(text.rstrip("\n"))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    # Importing the run path (SQLAlchemy, aiohttp, ...) allocates much and frees no cycles:
    # the collector's passes meanwhile would only slow the way to the first prompt.
    with gcpause.paused():
        from bridge.compile import compile_plan
        from bridge.runner import Runner, Selection, run_cancellable
        from bridge.spec.validate import load_spec
    gc.freeze()  # nor need later passes re-scan what the imports made

    settings = _settings(args)
    priority = (
        None if args.priority is None else priorities.parse(args.priority, where="--priority")
    )
    if args.spec and args.direct:
        _direct(args.spec, settings, args.scene_id or (), force=False)
    spec = load_spec(args.spec) if args.spec else _spec_from_database(settings, args)
    if args.spec and not args.direct:
        for line in _direction_lines(args.spec, spec):
            console.err(f"!! {line} (render it anyway; `bridge run --direct` redoes it)")
    if args.project_id and args.project_id != spec.project.id:
        raise UsageError(
            f"--project-id {args.project_id!r} is not this spec's project ({spec.project.id!r})"
        )
    scene_ids = tuple(args.scene_id or ())
    unknown = [s for s in scene_ids if s not in {sc.id for sc in spec.scenes}]
    if unknown:
        raise UsageError(f"--scene-id {unknown[0]!r} is not a scene of {spec.project.id!r}")
    selection = Selection(scene_ids=scene_ids, only=tuple(args.only or ()), force=args.force)
    plan = selection.narrow(compile_plan(spec))

    async def go() -> int:
        runner = Runner(settings, notify=lambda text: console.err(f"!! {text}"), environ=os.environ)
        display = console.Progress(len(plan))
        runner.bus.subscribe(display)
        try:
            report = await runner.run(spec, plan, selection, bus=runner.bus, priority=priority)
        finally:
            display.close()
            await runner.close()
        console.out(f"run {report.run_id}: {console.counts(report.counts())}")
        console.out(f"manifest: {report.manifest}")
        if spec.report and report.manifest is not None:
            from bridge import report as html_report

            page = await html_report.write(
                json.loads(report.manifest.read_text()), report.manifest.parent
            )
            console.out(f"report: {page}")
        for job_id, error in report.errors.items():
            console.err(f"failed {job_id}: {error}")
        if report.preview:
            console.err("!! this was a PREVIEW animatic, not a ComfyUI render")
        return 0 if report.ok else 1

    try:
        return asyncio.run(run_cancellable(go()))
    except asyncio.CancelledError:
        console.err("cancelled: queued prompts were deleted and running ones interrupted")
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridge", description="Render YAML production specs on ComfyUI."
    )
    parser.add_argument("--config", help="YAML or JSON settings file (also BRIDGE_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check specs and report every error with its position")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("--format", choices=console.ERROR_FORMATS, default="text")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plan", help="show the jobs a spec compiles to")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--format", choices=("text", "json", "dot"), default="text")
    p.add_argument(
        "--object-info", metavar="FILE", help="preflight offline against a saved /object_info"
    )
    p.add_argument("--force", action="store_true", help="show every job as forced")
    p.add_argument("--output", help="output folder (OUTPUT_PATH)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("direct", help="fill directed scenes' open fields into SPEC.direction.yaml")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--scene-id", action="append", help="only this scene (repeatable)")
    p.add_argument(
        "--force", action="store_true", help="redo fresh scenes too (hand edits are kept)"
    )
    p.add_argument(
        "--overwrite-edits", action="store_true", help="with --force: redo hand-edited fields too"
    )
    p.set_defaults(func=cmd_direct)

    p = sub.add_parser("capabilities", help="what the ComfyUI servers offer")
    p.add_argument("--comfyui-url", help="server URL(s), comma-separated (COMFYUI_URL)")
    p.add_argument("--save", metavar="FILE", help="store the first server's /object_info")
    p.set_defaults(func=cmd_capabilities)

    p = sub.add_parser("watch", help="validate and run every spec dropped into a folder")
    p.add_argument("folder", metavar="DIR")
    p.add_argument("--settle", type=float, default=0.5, help="seconds a file must be still")
    p.add_argument("--comfyui-url", help="server URL(s), comma-separated (COMFYUI_URL)")
    p.add_argument("--backend", choices=("auto", "comfyui", "preview"))
    p.add_argument("--output", help="output folder (OUTPUT_PATH)")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("serve", help="the REST API (job status, webhooks, metrics)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8313)
    p.add_argument("--comfyui-url", help="server URL(s), comma-separated (COMFYUI_URL)")
    p.add_argument("--backend", choices=("auto", "comfyui", "preview"))
    p.add_argument("--output", help="output folder (OUTPUT_PATH)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("report", help="write a run's HTML report beside its outputs")
    p.add_argument("run", type=int, metavar="RUN")
    p.add_argument("--output", help="output folder (OUTPUT_PATH)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("status", help="recent runs, or one run's jobs")
    p.add_argument("run", nargs="?", type=int, metavar="RUN")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--output", help="output folder (OUTPUT_PATH)")
    p.set_defaults(func=cmd_status)

    p.add_argument("--wait", action="store_true", help="follow RUN to its end, like bridge run")
    p.add_argument("--workers", action="store_true", help="the workers, their heartbeats and jobs")

    p = sub.add_parser("submit", help="hand a spec to the workers; prints the run id")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument(
        "--priority", help="low, normal, high, urgent or -1000..1000 (else the spec's priority:)"
    )
    p.add_argument("--only", action="append", metavar="[SCENE/]SHOT", help="only these shots")
    p.add_argument("--force", action="store_true", help="render even what is cached")
    p.add_argument("--wait", action="store_true", help="then follow it like bridge status --wait")
    p.add_argument("--output", help="output folder (OUTPUT_PATH)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("worker", help="render the jobs of submitted runs (needs PostgreSQL)")
    p.add_argument("--name", help="shown by bridge status --workers (default host:pid)")
    p.add_argument("--jobs", type=int, help="jobs held at once (BRIDGE_WORKER_JOBS)")
    p.add_argument("--comfyui-url", help="server URL(s), comma-separated (COMFYUI_URL)")
    p.add_argument("--backend", choices=("auto", "comfyui", "preview"))
    p.add_argument("--max-concurrent-jobs", type=int)
    p.add_argument("--output", help="output folder (OUTPUT_PATH)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("export", help="write a project held in the database as a spec YAML")
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("-o", "--output-file", metavar="FILE", help="write here, not to stdout")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("run", help="render a spec: ComfyUI when one answers, else a preview")
    p.add_argument("spec", nargs="?", metavar="SPEC", help="omit to render rows of the database")
    p.add_argument(
        "--scene-id", action="append", help="only this scene (repeatable); without SPEC, its rows"
    )
    p.add_argument(
        "--project-id", help="without SPEC, this project's rows; with one, refuse any other"
    )
    p.add_argument(
        "--only", action="append", metavar="SHOT", help="only this shot: s01 or scene/s01"
    )
    p.add_argument("--force", action="store_true", help="render even what is cached")
    p.add_argument("--direct", action="store_true", help="direct what is missing or stale first")
    p.add_argument(
        "--priority",
        help="low, normal, high, urgent or a whole number (default: the spec's priority)",
    )
    p.add_argument("--comfyui-url", help="server URL(s), comma-separated (COMFYUI_URL)")
    p.add_argument("--backend", choices=("auto", "comfyui", "preview"))
    p.add_argument("--max-concurrent-jobs", type=int)
    p.add_argument("--output", help="output folder (OUTPUT_PATH)")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        func: Command = args.func
        return func(args)
    except SpecErrors as exc:
        console.err(console.spec_errors(exc.errors))
        return 1
    except UsageError as exc:
        console.err(f"bridge: {exc}")
        return 2
    except BridgeError as exc:
        console.err(f"bridge: {exc}")
        return 1
    except KeyboardInterrupt:
        console.err("bridge: interrupted")
        return 130
    except Exception:
        log = Path(tempfile.gettempdir()) / "bridge-crash.log"
        log.write_text(mask_text(traceback.format_exc()))
        console.err(f"bridge: internal error; please report it with {log}")
        return 3


def run() -> None:
    sys.exit(main())
