"""The REST API (`bridge serve`): the seed's endpoints over the same runner as the CLI.

Thin by design: requests are checked, turned into a spec and a selection, and handed to
the one Runner the process owns (one pool, one global job limit for every request). Run
state is read back from the job store, so what the API says is what the CLI's `status`
says. Documented in schemas/openapi.json.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from bridge import console
from bridge.compile import compile_plan
from bridge.db.models import JobRecord, Run
from bridge.direct.direct import analyze_scene, direct_spec, llm_status, wants_direction
from bridge.errors import BridgeError, ConfigError, DirectionError, NotFoundError, SpecErrors
from bridge.events import SUBSCRIBER_ERRORS
from bridge.presets import PRESETS
from bridge.runner import Runner, Selection
from bridge.spec import rows
from bridge.spec.load import load_bytes
from bridge.spec.model import Spec
from bridge.spec.validate import load_spec, validate
from bridge.states import JobState, RunState
from bridge.templates import bundled
from bridge.webhooks import Hook

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    def __init__(self, runner: Runner, token: str | None = None) -> None:
        self.runner = runner
        self.store = runner.store
        self.token = token
        self.tasks: dict[int, asyncio.Task[Any]] = {}
        self.spec_dir = runner.settings.output_path / ".api-specs"

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
        app.on_cleanup.append(self._cleanup)
        return app

    # -- middleware ----------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token and request.path != "/api/health":
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {self.token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
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
                return _problem(exc.status, exc.reason)
            raise
        except SpecErrors as exc:
            return _problem(
                422, "the spec has errors", errors=[console.error_record(e) for e in exc.errors]
            )
        except DirectionError as exc:  # the model service failed, not the request
            return _problem(502, exc.message)
        except BridgeError as exc:
            return _problem(400, exc.message)
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.path)
            return _problem(500, "internal error; see the server log")

    async def _cleanup(self, app: web.Application) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    # -- reading -------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        pool = self.runner.pool
        servers = [{"name": b.name, "healthy": b.healthy} for b in (pool.backends if pool else [])]
        return _json(
            {
                "status": "ok",
                "backend": "preview" if self.runner.preview else "comfyui",
                "servers": servers,
                "running": len(self.tasks),
                "direction": await llm_status(self.runner.settings),
            }
        )

    async def capabilities(self, request: web.Request) -> web.Response:
        from bridge import preflight

        pool = await self.runner.backend()
        servers = []
        for b in pool.backends:
            entry: dict[str, Any] = {"name": b.name, "healthy": b.healthy}
            if entry["healthy"] and not self.runner.preview:
                try:
                    info = await b.object_info()
                except BridgeError as exc:
                    entry["error"] = exc.message
                else:
                    loras = preflight.combo_options(
                        info.get("LoraLoader", {})
                        .get("input", {})
                        .get("required", {})
                        .get("lora_name")
                    )
                    entry.update(node_classes=len(info), loras=loras or [])
            servers.append(entry)
        return _json(
            {
                "servers": servers,
                "templates": {
                    n: {"kind": t.kind, "description": t.description} for n, t in bundled().items()
                },
                "presets": {n: asdict(p) for n, p in PRESETS.items()},
                "direction": await llm_status(self.runner.settings),
            }
        )

    def _run_or_404(self, raw: str) -> Run:
        try:
            run_id = int(raw)
        except ValueError:
            raise web.HTTPNotFound(reason=f"no run {raw!r}") from None
        if not 0 < run_id < 2**63:
            raise web.HTTPNotFound(reason=f"no run {raw!r}")
        run = self.store.run(run_id)
        if run is None:
            raise web.HTTPNotFound(reason=f"no run {run_id}")
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
        return _json(self._run_view(self._run_or_404(request.match_info["job_id"])))

    async def run_detail(self, request: web.Request) -> web.Response:
        run = self._run_or_404(request.match_info["run_id"])
        view = self._run_view(run)
        view["jobs"] = [_job_view(j) for j in self.store.jobs(run.id or 0)]
        return _json(view)

    async def jobs(self, request: web.Request) -> web.Response:
        raw_status = request.query.get("status")
        if raw_status is not None and raw_status not in set(RunState):
            return _problem(400, f"status must be one of {', '.join(RunState)}")
        status = RunState(raw_status) if raw_status is not None else None
        try:
            limit = int(request.query.get("limit", "50"))
        except ValueError:
            return _problem(400, "limit must be a whole number")
        if not 1 <= limit <= 500:
            return _problem(400, "limit must be from 1 to 500")
        runs = self.store.runs(limit=limit, status=status)
        return _json({"jobs": [self._run_view(r) for r in runs]})

    async def metrics(self, request: web.Request) -> web.Response:
        registry = CollectorRegistry()
        registry.register(_Collector(self))
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    # -- starting runs -------------------------------------------------------------------

    async def post_spec(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if not raw.strip():
            return _problem(400, "send the spec's YAML as the request body")
        digest = hashlib.sha256(raw).hexdigest()[:16]
        self.spec_dir.mkdir(parents=True, exist_ok=True)
        path = self.spec_dir / f"{digest}.yaml"
        doc = load_bytes(raw, str(path))
        if wants_direction(doc.data):  # direct: true scenes are directed, then checked
            path.write_bytes(raw)
            await direct_spec(path, self.runner.settings, say=log.warning)
            spec = load_spec(path)
        else:
            spec = validate(doc)  # SpecErrors → 422 with positions
            path.write_bytes(raw)
        hooks = _hooks(request.query.get("notify_webhook"))
        return await self._start(spec, Selection(), hooks)

    async def _options(self, request: web.Request) -> tuple[str | None, list[Hook]]:
        if not request.can_read_body:
            return None, []
        try:
            body = orjson.loads(await request.read())
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
        priority = body.get("priority")
        if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)):
            raise BridgeError("priority must be a whole number")
        return preset, _hooks(body.get("notify_webhook"))

    def _spec_of(self, project_id: str) -> Spec:
        try:
            return rows.spec_for_project(self.store, project_id)
        except NotFoundError as exc:
            raise web.HTTPNotFound(reason=exc.message) from None

    async def generate_project(self, request: web.Request) -> web.Response:
        preset, hooks = await self._options(request)
        spec = self._spec_of(request.match_info["project_id"])
        return await self._start(_with_preset(spec, preset), Selection(), hooks)

    async def generate_scene(self, request: web.Request) -> web.Response:
        preset, hooks = await self._options(request)
        scene_id = request.match_info["scene_id"]
        try:
            project_id = rows.project_of_scene(self.store, scene_id)
        except NotFoundError as exc:
            raise web.HTTPNotFound(reason=exc.message) from None
        if request.can_read_body and orjson.loads(await request.read()).get("analyze") is True:
            # The old system's "scene with analysis": direct the scene, then render it.
            project = self.store.project(project_id)
            if project is None or not project.spec_file:
                raise BridgeError(
                    f"scene {scene_id!r} is held only in the database; analysis writes a "
                    "direction file beside a spec: `bridge export` it first"
                )
            await analyze_scene(project.spec_file, scene_id, self.runner.settings, say=log.warning)
        spec = self._spec_of(project_id)
        return await self._start(
            _with_preset(spec, preset), Selection(scene_ids=(scene_id,)), hooks
        )

    async def _start(self, spec: Spec, selection: Selection, hooks: list[Hook]) -> web.Response:
        plan = selection.narrow(compile_plan(spec))
        created: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_run(run_id: int) -> None:
            if not created.done():
                created.set_result(run_id)

        async def go() -> None:
            try:
                await self.runner.run(spec, plan, selection, hooks=hooks, on_run=on_run)
            except BaseException as exc:
                if not created.done():
                    created.set_exception(exc)
                raise

        task = asyncio.create_task(go())
        run_id = await created
        self.tasks[run_id] = task
        task.add_done_callback(lambda _: self.tasks.pop(run_id, None))
        return _json(
            {
                "job_id": run_id,
                "run_id": run_id,
                "status": RunState.RUNNING.value,
                "jobs": len(plan),
                "links": {"status": f"/api/status/{run_id}", "run": f"/api/runs/{run_id}"},
            },
            202,
        )


def _hooks(url: Any) -> list[Hook]:
    if url is None:
        return []
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise BridgeError("notify_webhook must be an http(s) URL")
    return [Hook(url, frozenset({"run_finished", "job_finished", "job_failed"}))]


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
        for b in pool.backends if pool else []:
            up.add_metric([b.name], 1.0 if b.healthy else 0.0)
        yield up


async def serve(runner: Runner, host: str, port: int, token: str | None) -> None:
    check_exposure(host, token)
    await runner.backend()
    api = Api(runner, token)
    app_runner = web.AppRunner(api.app(), handle_signals=False, access_log=None)
    await app_runner.setup()
    site = web.TCPSite(app_runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    console.out(f"listening on http://{host}:{bound}")
    try:
        await asyncio.Event().wait()
    finally:
        await app_runner.cleanup()
