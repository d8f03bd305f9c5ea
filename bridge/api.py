"""The REST API (`bridge serve`): the seed's endpoints over the same runner as the CLI.

Thin by design: requests are checked, turned into a spec and a selection, and handed to
the one Runner the process owns (one pool, one global job limit for every request). Run
state is read back from the job store, so what the API says is what the CLI's `status`
says. Documented in schemas/openapi.json.

The event loop only routes: parsing, validating and compiling a spec run in a small thread
pool, store reads in threads, and the dependencies (database, ComfyUI) are probed in the
background, so /api/health answers at once from the last probe whatever else is going on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import re
import time
import zlib
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy.exc import DBAPIError

from bridge import console, outputs
from bridge import priority as priorities
from bridge.backends.comfyui import ComfyUIBackend
from bridge.compile import compile_plan
from bridge.db import farm
from bridge.db.models import JobRecord, Run
from bridge.direct.direct import analyze_scene, direct_spec, llm_status, wants_direction
from bridge.direct.merge import merge_direction
from bridge.errors import (
    BridgeError,
    ConfigError,
    ConflictError,
    DirectionError,
    NotFoundError,
    SpecErrors,
)
from bridge.events import SUBSCRIBER_ERRORS
from bridge.masking import mask_url
from bridge.plan import Plan
from bridge.presets import PRESETS
from bridge.runner import Runner, Selection
from bridge.spec import rows
from bridge.spec.load import load_bytes
from bridge.spec.model import Spec
from bridge.spec.validate import validate
from bridge.states import JobState, RunState
from bridge.submit import submit
from bridge.templates import bundled
from bridge.webhooks import Hook

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
RUN_ID = re.compile(r"[0-9]{1,18}")  # ASCII digits only: no '+1', '1_0' or other scripts
PROBE_INTERVAL = 2.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


class TooLarge(BridgeError):
    """The spec compiles to more jobs than MAX_JOBS_PER_SPEC allows."""


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _problem(status: int, message: str, **extra: Any) -> web.Response:
    return _json({"error": message, **extra}, status)


def check_exposure(host: str, token: str | None) -> None:
    """Listening beyond loopback without a token would hand the GPUs to anyone."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        raise ConfigError(
            f"refusing to listen on {host} without BRIDGE_API_TOKEN; "
            "set a token or listen on 127.0.0.1"
        )


class Api:
    def __init__(self, runner: Runner, token: str | None = None, *, workers: int = 2) -> None:
        self.runner = runner
        self.store = runner.store
        self.token = token
        self.tasks: dict[int, asyncio.Task[Any]] = {}
        self.rendering: dict[str, int | None] = {}  # project → its run (None while starting)
        # Bounded: a burst of big specs queues here instead of starving the process.
        self.cpu = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bridge-api")
        self.deps: dict[str, dict[str, Any]] = {}
        self.farm: farm.FarmStats | None = None  # BRIDGE_WORKERS: the last probe's view
        self.node_info: dict[str, tuple[int, list[str], float]] = {}  # name → classes, loras, at
        self._probe: asyncio.Task[None] | None = None
        self.direction: dict[str, Any] = {}  # the LLM endpoints, probed with the rest

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """CPU-bound work (parse, validate, compile) in the bounded pool."""
        return await asyncio.get_running_loop().run_in_executor(self.cpu, fn, *args)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors, self._auth])
        r = app.router
        r.add_get("/api/health", self.health)
        r.add_get("/api/capabilities", self.capabilities)
        r.add_post("/api/specs", self.post_spec)
        r.add_post("/api/generate/scene/{scene_id}", self.generate_scene)
        r.add_post("/api/generate/project/{project_id}", self.generate_project)
        r.add_get("/api/status/{job_id}", self.status)
        r.add_get("/api/jobs", self.jobs)
        r.add_get("/api/runs/{run_id}", self.run_detail)
        r.add_get("/metrics", self.metrics)
        app.on_startup.append(self._start_probe)
        app.on_cleanup.append(self._cleanup)
        return app

    # -- middleware ----------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token and request.path != "/api/health":
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            matches = hmac.compare_digest(given.strip().encode(), self.token.encode())
            if scheme.lower() != "bearer" or not matches:  # the scheme is case-insensitive
                return _problem(401, "missing or wrong bearer token")
        return await handler(request)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status == 413:
                return _problem(413, f"request body is larger than {MAX_BODY} bytes")
            if exc.status >= 400:
                response = _problem(exc.status, exc.reason)
                if "Allow" in exc.headers:
                    response.headers["Allow"] = exc.headers["Allow"]
                return response
            raise
        except SpecErrors as exc:
            return _problem(
                422, "the spec has errors", errors=[console.error_record(e) for e in exc.errors]
            )
        except DirectionError as exc:  # the model service failed, not the request
            return _problem(502, exc.message)
        except TooLarge as exc:
            return _problem(422, exc.message)
        except ConflictError as exc:
            return _problem(409, exc.message, **exc.details)
        except NotFoundError as exc:
            return _problem(404, exc.message)
        except BridgeError as exc:
            return _problem(400, exc.message)
        except DBAPIError:  # the store logs the outage once; health says degraded
            return _database_down()
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.path)
            return _problem(500, "internal error; see the server log")

    async def _cleanup(self, app: web.Application) -> None:
        if self._probe is not None:
            self._probe.cancel()
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.cpu.shutdown(wait=False, cancel_futures=True)

    # -- dependencies, probed in the background ------------------------------------------

    async def _start_probe(self, app: web.Application) -> None:
        await self.probe()
        self._probe = asyncio.create_task(self._probe_forever(), name="api health")

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            await self.probe()

    async def probe(self) -> None:
        """Check the database and the render servers once; health reports the result."""
        self.deps["database"] = await self._probe_database()
        self.deps["comfyui"] = await self._probe_servers()
        self.direction = await llm_status(self.runner.settings)
        if self.runner.settings.workers:
            self.farm = await self.off_loop(farm.stats, self.store.engine)

    async def _probe_database(self) -> dict[str, Any]:
        try:
            async with asyncio.timeout(10):  # not wait_for: see ComfyUIBackend._wait
                up = await asyncio.to_thread(self.store.check)
        except (TimeoutError, BridgeError) as exc:
            return {"up": False, "error": str(exc) or "no answer within 10 s"}
        return {"up": True} if up else {"up": False, "error": "the database does not answer"}

    async def _probe_servers(self) -> dict[str, Any]:
        """Starts the pool when it is not up yet, so serve starts without ComfyUI."""
        if self.runner.pool is None:
            try:
                await self.runner.backend()
            except ConfigError as exc:
                return {"up": False, "needed": True, "error": exc.message}
        pool = self.runner.pool
        assert pool is not None
        if self.runner.preview:
            return {"up": True, "needed": False, "backend": "preview"}
        # A server that went away is noticed here, not by a job failing on it; the pool's
        # own probe brings it back (restarting its socket) once it answers again.
        for backend in pool.healthy():
            if not isinstance(backend, ComfyUIBackend):
                continue
            with contextlib.suppress(BridgeError, TimeoutError):
                async with asyncio.timeout(PROBE_INTERVAL * 2):
                    await backend.system_stats()
        healthy = pool.healthy()
        for backend in healthy:
            await self._remember_nodes(backend)
        return {"up": bool(healthy), "needed": True}

    async def _remember_nodes(self, backend: Any) -> None:
        from bridge import preflight

        try:
            info = await backend.object_info()
        except BridgeError:
            return
        loras = preflight.combo_options(
            info.get("LoraLoader", {}).get("input", {}).get("required", {}).get("lora_name")
        )
        self.node_info[backend.name] = (len(info), list(loras or []), time.time())

    def _servers(self) -> list[dict[str, Any]]:
        pool = self.runner.pool
        if pool is None:
            urls = self.runner.settings.comfyui_urls
            return [{"name": mask_url(u), "healthy": False} for u in urls]
        return [
            {"name": b.name, "healthy": bool(getattr(b, "healthy", True))} for b in pool.backends
        ]

    # -- reading -------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        """`ok` (200) when every needed dependency answered the last probe, else `degraded`
        (503) with each one's state; answered from memory, never waiting on a dependency."""
        deps = {name: dict(state) for name, state in self.deps.items()}
        ok = all(d["up"] or not d.get("needed", True) for d in deps.values()) and bool(deps)
        return _json(
            {
                "status": "ok" if ok else "degraded",
                "backend": "preview" if self.runner.preview else "comfyui",
                "dependencies": deps,
                "servers": self._servers(),
                "running": len(self.tasks),
                "direction": self.direction,
                "workers": _workers_view(self.farm),
            },
            200 if ok else 503,
        )

    async def capabilities(self, request: web.Request) -> web.Response:
        """Node data comes from the last successful probe; from a server that is down now it
        is marked stale, with its age."""
        servers = []
        for entry in self._servers():
            known = self.node_info.get(entry["name"])
            if known is not None and not self.runner.preview:
                classes, loras, at = known
                entry.update(node_classes=classes, loras=loras)
                entry.update(stale=not entry["healthy"], age_seconds=round(time.time() - at, 1))
            servers.append(entry)
        return _json(
            {
                "servers": servers,
                "templates": {
                    n: {"kind": t.kind, "description": t.description} for n, t in bundled().items()
                },
                "presets": {n: asdict(p) for n, p in PRESETS.items()},
                "direction": self.direction,
            }
        )

    async def _run_or_404(self, raw: str) -> Run:
        if not RUN_ID.fullmatch(raw) or int(raw) == 0:
            raise web.HTTPNotFound(reason=f"no run {raw!r}: run ids are whole numbers from 1")
        run = await asyncio.to_thread(self.store.run, int(raw))
        if run is None:
            raise web.HTTPNotFound(reason=f"no run {int(raw)}")
        return run

    def _run_view(self, run: Run) -> dict[str, Any]:
        counts = self.store.count_jobs(run.id or 0)
        total = sum(counts.values())
        finished = sum(n for s, n in counts.items() if JobState(s).finished)
        return {
            "job_id": run.id,
            "run_id": run.id,
            "project_id": run.project_id,
            "status": run.status,
            "preview": run.preview,
            "progress": {"finished": finished, "total": total},
            "counts": counts,
            "started_at": run.started_at.isoformat() if run.started_at else None,
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "manifest": run.manifest,
        }

    async def status(self, request: web.Request) -> web.Response:
        """A run's state; for a run a database outage cut short, the state of the run that
        continued it, under the id the client was given."""
        asked = await self._run_or_404(request.match_info["job_id"])

        def view() -> dict[str, Any]:
            run = asked
            while run.status == RunState.INTERRUPTED:
                following = [e for e in self.store.events(run.id or 0) if e.kind == "continued_as"]
                nxt = (
                    self.store.run(int((following[-1].data or {})["run_id"])) if following else None
                )
                if nxt is None:
                    break
                run = nxt
            out = self._run_view(run)
            if run.id != asked.id:
                out.update(job_id=asked.id, continued_as=run.id)
            return out

        return _json(await asyncio.to_thread(view))

    async def run_detail(self, request: web.Request) -> web.Response:
        run = await self._run_or_404(request.match_info["run_id"])

        def view() -> dict[str, Any]:
            out = self._run_view(run)
            out["jobs"] = [_job_view(j) for j in self.store.jobs(run.id or 0)]
            return out

        return _json(await asyncio.to_thread(view))

    async def jobs(self, request: web.Request) -> web.Response:
        raw_status = request.query.get("status")
        if raw_status is not None and raw_status not in set(RunState):
            return _problem(400, f"status must be one of {', '.join(RunState)}")
        status = RunState(raw_status) if raw_status is not None else None
        raw = request.query.get("limit", "50")
        if not re.fullmatch(r"[0-9]{1,3}", raw) or not 1 <= int(raw) <= 500:
            return _problem(400, "limit must be a whole number from 1 to 500")
        limit = int(raw)

        def view() -> list[dict[str, Any]]:
            return [self._run_view(r) for r in self.store.runs(limit=limit, status=status)]

        return _json({"jobs": await asyncio.to_thread(view)})

    async def metrics(self, request: web.Request) -> web.Response:
        registry = CollectorRegistry()
        registry.register(_Collector(self))
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, content_type="text/plain")

    # -- starting runs -------------------------------------------------------------------

    async def _body(self, request: web.Request) -> bytes:
        """The body, decoded here rather than by the HTTP parser (which logs a traceback for
        bad input): one that claims an encoding it does not have is a 400, one that inflates
        past the cap a 413."""
        raw = await request.read()
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding == "identity":
            return raw
        wbits = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS}.get(
            encoding, zlib.MAX_WBITS if encoding == "deflate" else 0
        )
        if not wbits:
            raise web.HTTPUnsupportedMediaType(
                reason=f"Content-Encoding {encoding!r} is not supported (gzip, deflate)"
            )
        inflate = zlib.decompressobj(wbits)
        try:
            body = inflate.decompress(raw, MAX_BODY + 1)
        except zlib.error:
            raise BridgeError(f"the body is not valid {encoding} data") from None
        if len(body) > MAX_BODY or inflate.unconsumed_tail:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=len(body))
        if not inflate.eof:
            raise BridgeError(f"the body is truncated {encoding} data")
        return body

    async def post_spec(self, request: web.Request) -> web.Response:
        raw = await self._body(request)
        if not raw.strip():
            return _problem(400, "send the spec's YAML as the request body")
        if not self.store.available:  # before any direction or compiling is spent on it
            return _database_down()
        hooks = _hooks(request.query.get("notify_webhook"))
        kept = await self.off_loop(
            outputs.keep_spec, self.runner.settings.output_path, raw, "posted.yaml"
        )
        if await self.off_loop(lambda: wants_direction(load_bytes(raw, "posted.yaml").data)):
            # direct: true scenes are directed first; the direction file sits beside the copy
            await direct_spec(kept, self.runner.settings, say=log.warning)
        spec, plan = await self.off_loop(self._load_posted, raw, kept)
        return await self._start(spec, plan, Selection(), hooks)

    def _load_posted(self, raw: bytes, kept: Path) -> tuple[Spec, Plan]:
        """A posted spec is kept (content-addressed) and its relative paths resolve beside
        the kept copy; error positions name the body, never a server path."""
        doc = merge_direction(load_bytes(raw, "posted.yaml", base=kept.parent), kept)
        return self._compiled(replace(validate(doc), file=str(kept)), Selection())

    def _compiled(self, spec: Spec, selection: Selection) -> tuple[Spec, Plan]:
        plan = selection.narrow(compile_plan(spec))
        cap = self.runner.settings.max_jobs_per_spec
        if len(plan) > cap:
            raise TooLarge(
                f"the spec compiles to {len(plan):,} jobs; this server accepts at most {cap:,} "
                "per spec (MAX_JOBS_PER_SPEC): split it or raise the limit"
            )
        return spec, plan

    async def _options(self, request: web.Request) -> tuple[str | None, list[Hook], int | None]:
        """The old system's body: quality_preset, notify_webhook, priority (and analyze)."""
        if not request.can_read_body:
            return None, [], None
        try:
            body = orjson.loads(await self._body(request))
        except orjson.JSONDecodeError:
            raise BridgeError("the body must be JSON") from None
        if not isinstance(body, dict):
            raise BridgeError("the body must be a JSON object")
        unknown = set(body) - {"priority", "quality_preset", "notify_webhook", "analyze"}
        if unknown:
            raise BridgeError(f"unknown field(s): {', '.join(sorted(unknown))}")
        preset = body.get("quality_preset")
        if preset is not None and (not isinstance(preset, str) or preset not in PRESETS):
            raise BridgeError(f"quality_preset must be one of {', '.join(PRESETS)}")
        if not isinstance(body.get("analyze", False), bool):
            raise BridgeError("analyze must be true or false")
        raw = body.get("priority")
        priority = None if raw is None else priorities.parse(raw)
        return preset, _hooks(body.get("notify_webhook")), priority

    async def generate_project(self, request: web.Request) -> web.Response:
        preset, hooks, priority = await self._options(request)
        project_id = request.match_info["project_id"]

        def load() -> tuple[Spec, Plan]:
            return self._compiled(
                _with_preset(rows.spec_for_project(self.store, project_id), preset), Selection()
            )

        spec, plan = await self.off_loop(load)
        return await self._start(spec, plan, Selection(), hooks, priority)

    async def generate_scene(self, request: web.Request) -> web.Response:
        preset, hooks, priority = await self._options(request)
        scene_id = request.match_info["scene_id"]
        named = request.query.get("project")
        selection = Selection(scene_ids=(scene_id,))
        project_id = await asyncio.to_thread(rows.project_of_scene, self.store, scene_id, named)
        if request.can_read_body and orjson.loads(await self._body(request)).get("analyze"):
            # The old system's "scene with analysis": direct the scene, then render it.
            project = await asyncio.to_thread(self.store.project, project_id)
            if project is None or not project.spec_file:
                raise BridgeError(
                    f"scene {scene_id!r} is held only in the database; analysis writes a "
                    "direction file beside a spec: `bridge export` it first"
                )
            await analyze_scene(project.spec_file, scene_id, self.runner.settings, say=log.warning)

        def load() -> tuple[Spec, Plan]:
            spec = rows.spec_for_project(self.store, project_id)
            return self._compiled(_with_preset(spec, preset), selection)

        spec, plan = await self.off_loop(load)
        return await self._start(spec, plan, selection, hooks, priority)

    async def _start(
        self,
        spec: Spec,
        plan: Plan,
        selection: Selection,
        hooks: list[Hook],
        priority: int | None = None,
    ) -> web.Response:
        """Start the run and answer with its id; a project already rendering gets a 409
        naming the run under way (runs of one project never queue behind each other here).
        With BRIDGE_WORKERS the run is submitted to the workers instead (the same answer)."""
        if not self.store.available:  # refused rather than accepted and not recorded
            return _database_down()
        if self.runner.settings.workers:
            level = spec.priority if priority is None else priority
            run_id = await submit(
                self.runner.settings, self.store, spec, plan, selection, priority=level
            )
            return _accepted(run_id, len(plan))
        if plan.project in self.rendering:
            running = self.rendering[plan.project]
            raise ConflictError(
                f"project {plan.project!r} is already rendering"
                + (f" (run {running})" if running else "")
                + "; wait for it to finish, then ask again",
                run_id=running,
                links={"status": f"/api/status/{running}"} if running else {},
            )
        if self.runner.pool is None and not self.deps.get("comfyui", {}).get("up"):
            problem = self.deps.get("comfyui", {}).get("error", "no render server is up yet")
            return _problem(503, f"cannot render now: {problem}")
        self.rendering[plan.project] = None
        created: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_run(run_id: int) -> None:
            self.rendering[plan.project] = run_id
            if not created.done():
                created.set_result(run_id)

        async def go() -> None:
            try:
                await self.runner.run(
                    spec, plan, selection, hooks=hooks, on_run=on_run, priority=priority
                )
            except BaseException as exc:
                if not created.done():
                    created.set_exception(exc)
                raise
            finally:
                self.rendering.pop(plan.project, None)

        task = asyncio.create_task(go())
        run_id = await created
        self.tasks[run_id] = task
        task.add_done_callback(lambda _: self.tasks.pop(run_id, None))
        return _accepted(run_id, len(plan))


def _workers_view(stats: farm.FarmStats | None) -> list[dict[str, Any]] | None:
    if stats is None:
        return None
    return [
        {
            "id": w.id,
            "name": w.name,
            "host": w.host,
            "pid": w.pid,
            "heartbeat_age_seconds": None if w.heartbeat_age is None else round(w.heartbeat_age, 1),
            "jobs": list(w.jobs),
        }
        for w in stats.workers
    ]


def _accepted(run_id: int, jobs: int) -> web.Response:
    return _json(
        {
            "job_id": run_id,
            "run_id": run_id,
            "status": RunState.RUNNING.value,
            "jobs": jobs,
            "links": {"status": f"/api/status/{run_id}", "run": f"/api/runs/{run_id}"},
        },
        202,
    )


def _database_down() -> web.Response:
    response = _problem(
        503, "the database is unavailable; nothing was accepted: try again when it is back"
    )
    response.headers["Retry-After"] = str(int(PROBE_INTERVAL * 5))
    return response


def _hooks(url: Any) -> list[Hook]:
    if url is None:
        return []
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise BridgeError("notify_webhook must be an http(s) URL")
    # Only the run-level notice: the old system's handlers read every POST as a run's end.
    return [Hook(url)]


def _with_preset(spec: Spec, preset: str | None) -> Spec:
    if preset is None:
        return spec
    scenes = tuple(
        replace(sc, shots=tuple(replace(sh, preset=preset) for sh in sc.shots))
        for sc in spec.scenes
    )
    return replace(spec, scenes=scenes)


def _job_view(j: JobRecord) -> dict[str, Any]:
    return {
        "id": j.job_id,
        "kind": j.kind,
        "state": j.state,
        "reason": j.reason,
        "server": j.server,
        "prompt_id": j.prompt_id,
        "attempts": j.attempts,
        "seconds": j.seconds,
        "error": j.error,
    }


class _Collector:
    def __init__(self, api: Api) -> None:
        self.api = api

    def collect(self) -> Any:
        by_state, seconds = self.api.store.job_totals()
        jobs = GaugeMetricFamily("bridge_jobs", "Jobs recorded, by state", labels=["state"])
        for state, n in by_state.items():
            jobs.add_metric([state], n)
        yield jobs
        yield GaugeMetricFamily(
            "bridge_render_seconds", "Wall seconds of finished jobs", value=seconds
        )
        yield CounterMetricFamily(
            "bridge_subscriber_errors",
            "Event subscribers (displays) that raised; each is logged with its traceback",
            value=SUBSCRIBER_ERRORS.value,
        )
        pool = self.api.runner.pool
        depth = sum(pool.in_flight.values()) if pool else 0
        yield GaugeMetricFamily("bridge_queue_depth", "Prompts on the servers now", value=depth)
        yield GaugeMetricFamily("bridge_runs_active", "Runs under way", value=len(self.api.tasks))
        up = GaugeMetricFamily("bridge_server_up", "1 when the server answers", labels=["server"])
        for server in self.api._servers():
            up.add_metric([server["name"]], 1.0 if server["healthy"] else 0.0)
        yield up
        stats = self.api.farm
        if stats is not None:  # BRIDGE_WORKERS, as of the last health probe
            yield GaugeMetricFamily("bridge_workers", "Workers known", value=len(stats.workers))
            yield CounterMetricFamily(
                "bridge_job_claims", "Jobs claimed by workers", value=stats.claims
            )
            yield CounterMetricFamily(
                "bridge_lease_takeovers",
                "Jobs handed on after their worker's heartbeat stopped",
                value=stats.takeovers,
            )
            switches = CounterMetricFamily(
                "bridge_model_switches",
                "Jobs given to a server that had other expensive nodes loaded",
                labels=["server"],
            )
            for name, (_, n) in sorted(stats.servers.items()):
                switches.add_metric([mask_url(name)], n)
            yield switches


async def serve(runner: Runner, host: str, port: int, token: str | None) -> None:
    check_exposure(host, token)
    api = Api(runner, token)  # starts without ComfyUI; the background probe connects
    app_runner = web.AppRunner(
        api.app(), handle_signals=False, access_log=None, auto_decompress=False
    )
    await app_runner.setup()
    site = web.TCPSite(app_runner, host, port)
    await site.start()
    bound = app_runner.addresses[0][1]
    console.out(f"listening on http://{host}:{bound}")
    try:
        await asyncio.Event().wait()
    finally:
        await app_runner.cleanup()
