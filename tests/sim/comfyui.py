"""A ComfyUI 0.8 simulator for tests: the real wire protocol, with fault injection.

It speaks what tests/fixtures/comfyui recorded from a real server, message for message:
400 bodies with node_errors, the WebSocket sequence (status, execution_start,
execution_cached, progress_state / executing / executed per node, execution_success,
status, executing{node: null} last), routing by client_id, /history entries written only
when a prompt ends, SaveVideo outputs under `images` with `animated: [true]`, uploads,
/queue, /interrupt. Outputs are real files made by ffmpeg at the size, fps and frame count
the workflow asks for, so the client's downloads and probes are exercised for real; a
command already run is not run again (its file is copied), as ffmpeg's output is the same.

Run as a process: `python -m tests.sim.comfyui --port 0` prints `listening on URL`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "comfyui"
OUTPUT_NODES = {"SaveImage", "SaveVideo", "PreviewImage", "SaveImageWebsocket"}
SAMPLERS = {"KSampler", "FramePackSampler"}
# Nodes whose outputs are costly to recompute: what a "model switch" reloads. Independent
# of bridge's own list (bridge/affinity.py) on purpose: the simulator plays the server.
EXPENSIVE = {
    "CheckpointLoaderSimple",
    "UNETLoader",
    "CLIPLoader",
    "VAELoader",
    "LoraLoader",
    "LoraLoaderModelOnly",
    "CLIPTextEncode",
    "LoadFramePackModel",
    "DownloadAndLoadFramePackModel",
    "EmptyImage",
    "ImageScale",
    "ImageScaleBy",
}


def default_object_info() -> dict[str, Any]:
    """The recorded subset, plus every other recorded class name with permissive inputs."""
    subset = json.loads((FIXTURES / "object_info_subset.json").read_text())["nodes"]
    names = (FIXTURES / "object_info_all_class_names.txt").read_text().split()
    info = {
        name: {"input": {"required": {}}, "output_node": name in OUTPUT_NODES} for name in names
    }
    info.update(subset)
    return info


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Prompt:
    number: int
    prompt_id: str
    graph: dict[str, Any]
    extra: dict[str, Any]
    outputs: list[str]
    client_id: str | None
    interrupted: bool = False
    queued_at: float = 0.0  # on the loop's clock: when the POST was taken


@dataclass
class Simulator:
    job_seconds: float = 0.05
    object_info: dict[str, Any] = field(default_factory=default_object_info)
    output_dir: Path | None = None
    # fault injection
    fail_posts: int = 0
    error_nodes: set[str] = field(default_factory=set)
    missing_outputs: bool = False
    corrupt_outputs: bool = False
    black_outputs: bool = False
    black_prompts: int = 0  # the next N prompts render black, then normal again
    drop_socket_after: int | None = None
    # model switches: a prompt whose expensive nodes differ from the previous prompt's pays this
    switch_seconds: float = 0.0
    # observation
    posted: list[str] = field(default_factory=list)
    posted_at: list[float] = field(default_factory=list)  # wall clock (time.time()) per POST
    uploads: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    switches: int = 0  # prompts that found other expensive nodes loaded than they need
    max_load: int = 0  # most prompts ever queued or running at once
    busy_seconds: float = 0.0  # time spent executing prompts
    url: str = ""

    def __post_init__(self) -> None:
        self._tmp = None
        if self.output_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="comfysim-")
            self.output_dir = Path(self._tmp.name) / "output"
        self.input_dir = self.output_dir.parent / "input"
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.input_dir.mkdir(parents=True, exist_ok=True)
        self._runner: web.AppRunner | None = None
        self._port = 0
        # ffmpeg's command (output path aside) -> the file it made: ffmpeg is deterministic,
        # and starting it costs the test host ~0.1 CPU-s (its shared libraries), which the
        # bench's servers would otherwise take from the workers they are meant to measure
        self._renders: dict[tuple[str, ...], bytes] = {}
        self._reset()

    def _reset(self) -> None:
        self.queue: list[Prompt] = []
        self.running: Prompt | None = None
        self.current_node: str | None = None
        self.history: dict[str, dict[str, Any]] = {}
        self.cache: dict[str, dict[str, Any]] = {}  # node key -> ui output
        self.loaded: frozenset[str] = frozenset()  # expensive node keys of the last prompt
        self.counter = itertools.count(0)
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.messages: asyncio.Queue[tuple[str, dict[str, Any], str | None]] = asyncio.Queue()
        self.wake = asyncio.Event()
        self.interrupt_flag = False
        self.object_info_asked: list[str] = []  # "*" for the whole /object_info
        self.free_at = 0.0  # on the loop's clock: when the last prompt's execution was due to end

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, port: int = 0) -> str:
        app = web.Application(client_max_size=100 * 1024 * 1024)
        routes = [
            ("GET", "/ws", self.ws),
            ("POST", "/prompt", self.post_prompt),
            ("GET", "/prompt", self.get_prompt),
            ("GET", "/queue", self.get_queue),
            ("POST", "/queue", self.post_queue),
            ("POST", "/interrupt", self.post_interrupt),
            ("GET", "/history", self.get_history_all),
            ("GET", "/history/{prompt_id}", self.get_history),
            ("GET", "/object_info", self.get_object_info),
            ("GET", "/object_info/{cls}", self.get_object_info_one),
            ("GET", "/system_stats", self.get_system_stats),
            ("GET", "/features", self.get_features),
            ("GET", "/view", self.get_view),
            ("POST", "/upload/image", self.post_upload),
        ]
        app.router.add_get("/_sim", self.get_sim)
        app.router.add_post("/_sim", self.post_sim)
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            app.router.add_route(method, "/api" + path, handler)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self._port)
        await site.start()
        self._port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{self._port}"
        self._worker = asyncio.create_task(self._work())
        self._publisher = asyncio.create_task(self._publish())
        return self.url

    async def stop(self) -> None:
        for task in (self._worker, self._publisher):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for ws in list(self.sockets.values()):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self, down_for: float = 0.0) -> None:
        """Like a server restart: queue, history and cache are gone; files stay."""
        await self.stop()
        self._reset()
        if down_for:
            await asyncio.sleep(down_for)
        await self.start(self._port)

    # -- websocket ---------------------------------------------------------------------

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        self.sockets[sid] = ws
        await ws.send_json(
            {
                "type": "status",
                "data": {
                    "status": {"exec_info": {"queue_remaining": self._remaining()}},
                    "sid": sid,
                },
            }
        )
        if self.running is not None and self.running.client_id == sid and self.current_node:
            await ws.send_json({"type": "executing", "data": {"node": self.current_node}})
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    with contextlib.suppress(ValueError):
                        data = json.loads(msg.data)
                        if data.get("type") == "feature_flags":
                            await ws.send_json(
                                {"type": "feature_flags", "data": await self._features()}
                            )
        finally:
            if self.sockets.get(sid) is ws:
                del self.sockets[sid]
        return ws

    def _send(self, kind: str, data: dict[str, Any], sid: str | None) -> None:
        """Queue a message, as ComfyUI's send_sync does: the prompt worker never waits for
        a socket, and its next prompt starts however many clients listen (the bench's
        three workers each hold a socket to every server; awaited here, each broadcast
        between two prompts cost three sends instead of one)."""
        self.messages.put_nowait((kind, data, sid))

    async def _publish(self) -> None:
        """ComfyUI's publish_loop: the queued messages, in order."""
        while True:
            await self._deliver(*await self.messages.get())

    async def _deliver(self, kind: str, data: dict[str, Any], sid: str | None) -> None:
        targets: Iterable[tuple[str, web.WebSocketResponse]]
        if sid is None:
            targets = list(self.sockets.items())
        else:
            targets = [(sid, self.sockets[sid])] if sid in self.sockets else []
        for key, ws in targets:
            if self.drop_socket_after is not None and sid is not None:
                if self.drop_socket_after <= 0:
                    self.drop_socket_after = None
                    self.sockets.pop(key, None)
                    await ws.close()
                    continue
                self.drop_socket_after -= 1
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_json({"type": kind, "data": data})

    def _status(self) -> None:
        self._send(
            "status", {"status": {"exec_info": {"queue_remaining": self._remaining()}}}, None
        )

    def _remaining(self) -> int:
        return len(self.queue) + (1 if self.running else 0)

    # -- HTTP --------------------------------------------------------------------------

    async def post_prompt(self, request: web.Request) -> web.Response:
        arrived = time.time()  # before the body is read: when the client's POST got here
        if self.fail_posts > 0:
            self.fail_posts -= 1
            return web.Response(
                status=500, text="500 Internal Server Error\n\nServer got itself in trouble"
            )
        try:
            body = json.loads(await request.text())
        except ValueError:
            return web.Response(
                status=500, text="500 Internal Server Error\n\nServer got itself in trouble"
            )
        if "prompt" not in body:
            return _error400("no_prompt", "No prompt provided", "No prompt provided")
        graph = body["prompt"]
        for nid, node in graph.items():
            cls = node.get("class_type") if isinstance(node, dict) else None
            if cls is None:
                return _error400(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{nid}'",
                )
            if cls not in self.object_info:
                return _error400(
                    "invalid_prompt",
                    f"Cannot execute because node {cls} does not exist.",
                    f"Node ID '#{nid}'",
                )
        outputs = [nid for nid, n in graph.items() if n["class_type"] in OUTPUT_NODES]
        if not outputs:
            return _error400("prompt_no_outputs", "Prompt has no outputs", "", node_errors=None)
        node_errors = self._validate(graph, outputs)
        if node_errors:
            details = "\n".join(
                f"{e['message']}: {e['details']}"
                for n in node_errors.values()
                for e in n["errors"]
                if e["type"] == "value_not_in_list"
            )
            return web.json_response(
                {
                    "error": {
                        "type": "prompt_outputs_failed_validation",
                        "message": "Prompt outputs failed validation",
                        "details": details,
                        "extra_info": {},
                    },
                    "node_errors": node_errors,
                },
                status=400,
            )
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        extra = dict(body.get("extra_data") or {})
        client_id = body.get("client_id")
        if client_id:
            extra["client_id"] = client_id
        extra["create_time"] = _now_ms()
        number = next(self.counter)
        queued_at = asyncio.get_running_loop().time()
        self.queue.append(
            Prompt(number, prompt_id, graph, extra, outputs, client_id, queued_at=queued_at)
        )
        self.posted.append(prompt_id)
        self.posted_at.append(arrived)
        self.max_load = max(self.max_load, self._remaining())
        self.wake.set()
        self._status()
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    def _validate(self, graph: dict[str, Any], outputs: list[str]) -> dict[str, Any]:
        errors: dict[str, Any] = {}
        for nid, node in graph.items():
            info = self.object_info[node["class_type"]]
            specs = {
                **info.get("input", {}).get("required", {}),
                **info.get("input", {}).get("optional", {}),
            }
            found = []
            for name in info.get("input", {}).get("required", {}):
                if name not in node["inputs"]:
                    found.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": name,
                            "extra_info": {"input_name": name},
                        }
                    )
            for name, value in node["inputs"].items():
                spec = specs.get(name)
                if spec is None or isinstance(value, list):
                    continue
                if node["class_type"] == "LoadImage" and name == "image":
                    if not (self.input_dir / value).is_file():
                        found.append(
                            {
                                "type": "custom_validation_failed",
                                "message": "Custom validation failed for node",
                                "details": f"image - Invalid image file: {value}",
                                "extra_info": {"input_name": name},
                            }
                        )
                    continue
                options = _options(spec)
                if options is not None and value not in options:
                    found.append(
                        {
                            "type": "value_not_in_list",
                            "message": "Value not in list",
                            "details": f"{name}: '{value}' not in {options!r}",
                            "extra_info": {
                                "input_name": name,
                                "input_config": spec,
                                "received_value": value,
                            },
                        }
                    )
                    continue
                limits = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if isinstance(value, int | float) and not isinstance(value, bool):
                    if "min" in limits and value < limits["min"]:
                        found.append(
                            {
                                "type": "value_smaller_than_min",
                                "message": f"Value {value} smaller than min of {limits['min']}",
                                "details": name,
                                "extra_info": {
                                    "input_name": name,
                                    "input_config": spec,
                                    "received_value": value,
                                },
                            }
                        )
                    elif "max" in limits and value > limits["max"]:
                        found.append(
                            {
                                "type": "value_bigger_than_max",
                                "message": f"Value {value} bigger than max of {limits['max']}",
                                "details": name,
                                "extra_info": {
                                    "input_name": name,
                                    "input_config": spec,
                                    "received_value": value,
                                },
                            }
                        )
            if found:
                errors[nid] = {
                    "errors": found,
                    "dependent_outputs": outputs,
                    "class_type": node["class_type"],
                }
        return errors

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": self._remaining()}})

    def _item(self, p: Prompt) -> list[Any]:
        return [p.number, p.prompt_id, p.graph, p.extra, p.outputs]

    async def get_queue(self, request: web.Request) -> web.Response:
        running = [self._item(self.running)] if self.running else []
        return web.json_response(
            {"queue_running": running, "queue_pending": [self._item(p) for p in self.queue]}
        )

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.queue.clear()
        for pid in body.get("delete", []):
            for p in self.queue:
                if p.prompt_id == pid:
                    self.queue.remove(p)
                    self.deleted.append(pid)
                    break
        self._status()
        return web.Response(status=200)

    async def post_interrupt(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            body = await request.json()
        pid = body.get("prompt_id") if isinstance(body, dict) else None
        if self.running is not None and (pid is None or pid == self.running.prompt_id):
            self.interrupt_flag = True
            self.interrupted.append(self.running.prompt_id)
        return web.Response(status=200)

    async def get_history(self, request: web.Request) -> web.Response:
        pid = request.match_info["prompt_id"]
        entry = self.history.get(pid)
        return web.json_response({pid: entry} if entry else {})

    async def get_history_all(self, request: web.Request) -> web.Response:
        items = list(self.history.items())
        if "max_items" in request.query:
            items = items[-int(request.query["max_items"]) :]
        return web.json_response(dict(items))

    async def get_object_info(self, request: web.Request) -> web.Response:
        self.object_info_asked.append("*")
        return web.json_response(self.object_info)

    async def get_object_info_one(self, request: web.Request) -> web.Response:
        cls = request.match_info["cls"]
        self.object_info_asked.append(cls)
        return web.json_response({cls: self.object_info[cls]} if cls in self.object_info else {})

    async def get_system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            json.loads((FIXTURES / "get_system_stats.json").read_text())["body"]
        )

    async def _features(self) -> dict[str, Any]:
        return {
            "supports_preview_metadata": True,
            "max_upload_size": 104857600.0,
            "extension": {"manager": {"supports_v4": True}},
        }

    async def get_features(self, request: web.Request) -> web.Response:
        return web.json_response(await self._features())

    async def get_view(self, request: web.Request) -> web.StreamResponse:
        name = request.query.get("filename", "")
        sub = request.query.get("subfolder", "")
        kind = request.query.get("type", "output")
        if not name or name.startswith("/") or ".." in name:
            return web.Response(status=400)
        base = {"output": self.output_dir, "input": self.input_dir}.get(kind)
        if base is None:
            return web.Response(status=400)
        path = (base / sub / Path(name).name).resolve()
        if not path.is_relative_to(base.resolve()):
            return web.Response(status=403)
        if self.missing_outputs or not path.is_file():
            return web.Response(status=404)
        ctype = "video/mp4" if path.suffix == ".mp4" else "image/png"
        headers = {"Content-Disposition": f'filename="{path.name}"', "Content-Type": ctype}
        if self.corrupt_outputs:
            return web.Response(body=path.read_bytes()[:100], headers=headers)
        return web.FileResponse(path, headers=headers)

    async def post_upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        image = form.get("image")
        if image is None or not hasattr(image, "file"):
            return web.Response(status=400)
        sub = str(form.get("subfolder", ""))
        folder = (self.input_dir / sub).resolve()
        if not folder.is_relative_to(self.input_dir.resolve()):
            return web.Response(status=400)
        folder.mkdir(parents=True, exist_ok=True)
        data = image.file.read()
        name = Path(image.filename).name
        overwrite = str(form.get("overwrite", "")) in ("true", "1")
        target = folder / name
        if target.exists() and not overwrite and target.read_bytes() != data:
            stem, suffix = target.stem, target.suffix
            for i in itertools.count(1):
                target = folder / f"{stem} ({i}){suffix}"
                if not target.exists():
                    break
        target.write_bytes(data)
        self.uploads.append(target.name)
        return web.json_response({"name": target.name, "subfolder": sub, "type": "input"})

    # -- control, for tests that run the simulator as a process --------------------------

    async def get_sim(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "posted": self.posted,
                "posted_at": self.posted_at,
                "executed": self.executed,
                "uploads": self.uploads,
                "interrupted": self.interrupted,
                "deleted": self.deleted,
                "switches": self.switches,
                "max_load": self.max_load,
                "busy_seconds": self.busy_seconds,
            }
        )

    async def post_sim(self, request: web.Request) -> web.Response:
        body = await request.json()
        for key in (
            "job_seconds",
            "fail_posts",
            "missing_outputs",
            "corrupt_outputs",
            "black_outputs",
            "black_prompts",
            "drop_socket_after",
            "switch_seconds",
        ):
            if key in body:
                setattr(self, key, body[key])
        if "error_nodes" in body:
            self.error_nodes = set(body["error_nodes"])
        return web.json_response({"ok": True})

    # -- execution ---------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            while not self.queue:
                self.wake.clear()
                await self.wake.wait()
            prompt = min(self.queue, key=lambda p: p.number)
            self.queue.remove(prompt)
            self.running = prompt
            # A GPU starts a queued prompt as the last one ends, whenever this loop gets
            # to it: the time a busy test host takes to wake it is not the server's.
            started = self.free_at = max(self.free_at, prompt.queued_at)
            try:
                await self._switch(prompt)
                await self._execute(prompt)
            finally:
                self.running = None
                self.current_node = None
                self.busy_seconds += self.free_at - started

    async def _switch(self, p: Prompt) -> None:
        """Load what the prompt's expensive nodes need when the last prompt had others
        (a checkpoint, a LoRA set, encoded text: seconds to tens of seconds on a GPU)."""
        order = _order(p.graph, p.outputs)
        needed = frozenset(
            _node_key(p.graph, n) for n in order if p.graph[n]["class_type"] in EXPENSIVE
        )
        if needed and needed != self.loaded:
            self.switches += 1
            if self.switch_seconds:
                self.free_at += self.switch_seconds
                await _until(self.free_at)
        self.loaded = needed or self.loaded

    async def _execute(self, p: Prompt) -> None:
        sid = p.client_id
        pid = p.prompt_id
        messages: list[list[Any]] = []
        self._status()
        start = {"prompt_id": pid, "timestamp": _wall_ms(self.free_at)}
        messages.append(["execution_start", start])
        self._send("execution_start", start, sid)
        order = _order(p.graph, p.outputs)
        keys = {nid: _node_key(p.graph, nid) for nid in order}
        cached = [nid for nid in order if keys[nid] in self.cache]
        data = {"nodes": cached, "prompt_id": pid, "timestamp": _wall_ms(self.free_at)}
        messages.append(["execution_cached", data])
        self._send("execution_cached", data, sid)
        outputs: dict[str, Any] = {}
        states: dict[str, dict[str, Any]] = {}
        to_run = [n for n in order if n not in cached]
        per_node = self.job_seconds / max(1, len(to_run))
        node_end = self.free_at  # nodes end on their share (_until)
        black = self.black_outputs or self.black_prompts > 0
        if self.black_prompts > 0:
            self.black_prompts -= 1
        executed: list[str] = list(cached)
        for nid in cached:
            ui = self.cache[keys[nid]]
            if ui is not None:
                outputs[nid] = ui
                self._send(
                    "executed",
                    {"node": nid, "display_node": nid, "output": ui, "prompt_id": pid},
                    sid,
                )
        error = None
        for nid in to_run:
            if self.interrupt_flag:
                self.interrupt_flag = False
                node = p.graph[nid]
                error = [
                    "execution_interrupted",
                    {
                        "prompt_id": pid,
                        "node_id": nid,
                        "node_type": node["class_type"],
                        "executed": executed,
                        "timestamp": _now_ms(),
                    },
                ]
                break
            node = p.graph[nid]
            self.current_node = nid
            states[nid] = _state(pid, nid, 0.0, 1.0, "running")
            self._send("progress_state", {"prompt_id": pid, "nodes": dict(states)}, sid)
            self._send("executing", {"node": nid, "display_node": nid, "prompt_id": pid}, sid)
            node_start, node_end = node_end, node_end + per_node
            if node["class_type"] in SAMPLERS:
                steps = int(node["inputs"].get("steps", 4)) or 1
                shown = min(steps, 8)
                for i in range(1, shown + 1):
                    await _until(node_start + per_node * i / shown)
                    if self.interrupt_flag:
                        break
                    value = round(i * steps / shown)
                    self._send(
                        "progress",
                        {"value": value, "max": steps, "prompt_id": pid, "node": nid},
                        sid,
                    )
                    states[nid] = _state(pid, nid, float(value), float(steps), "running")
                    self._send("progress_state", {"prompt_id": pid, "nodes": dict(states)}, sid)
            elif node["class_type"] not in ("SaveVideo", "SaveImage"):
                await _until(node_end)
            if node["class_type"] in self.error_nodes:
                error = self._error(
                    p, nid, executed, "RuntimeError", f"simulated failure in {node['class_type']}"
                )
                break
            ui = None
            if node["class_type"] in ("SaveVideo", "SaveImage"):
                try:
                    ui = await self._render(p.graph, nid, black)
                except ValueError as exc:
                    error = self._error(p, nid, executed, "av.error.ExternalError", str(exc))
                    break
                await _until(node_end)
                outputs[nid] = ui
                self._send(
                    "executed",
                    {"node": nid, "display_node": nid, "output": ui, "prompt_id": pid},
                    sid,
                )
            self.cache[keys[nid]] = ui
            executed.append(nid)
            states[nid] = _state(pid, nid, 1.0, 1.0, "finished")
            self._send("progress_state", {"prompt_id": pid, "nodes": dict(states)}, sid)
        self.current_node = None
        self.free_at = min(node_end, asyncio.get_running_loop().time())  # interrupted: now
        if error is None:
            done = {"prompt_id": pid, "timestamp": _wall_ms(node_end)}
            messages.append(["execution_success", done])
            self._send("execution_success", done, sid)
            status = {"status_str": "success", "completed": True, "messages": messages}
        else:
            messages.append(error)
            self._send(error[0], error[1], sid)
            status = {"status_str": "error", "completed": False, "messages": messages}
            if error[0] == "execution_interrupted":
                outputs = {}
        self.history[pid] = {
            "prompt": [p.number, pid, p.graph, p.extra, p.outputs],
            "outputs": outputs,
            "status": status,
            "meta": {
                n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n}
                for n in outputs
            },
        }
        self.executed.append(pid)
        self.running = None  # like PromptQueue.task_done: off the queue as history is written
        self._status()
        self._send("executing", {"node": None, "prompt_id": pid}, sid)

    def _error(
        self, p: Prompt, nid: str, executed: list[str], etype: str, message: str
    ) -> list[Any]:
        return [
            "execution_error",
            {
                "prompt_id": p.prompt_id,
                "node_id": nid,
                "node_type": p.graph[nid]["class_type"],
                "executed": list(executed),
                "exception_message": message + "\n",
                "exception_type": etype,
                "traceback": ['  File "execution.py", line 518, in execute\n'],
                "current_inputs": {},
                "current_outputs": {},
                "timestamp": _now_ms(),
            },
        ]

    async def _render(self, graph: dict[str, Any], nid: str, black: bool) -> dict[str, Any]:
        node = graph[nid]
        prefix = str(node["inputs"].get("filename_prefix", "ComfyUI"))
        sub, _, base = prefix.rpartition("/")
        folder = self.output_dir / sub
        folder.mkdir(parents=True, exist_ok=True)
        video = node["class_type"] == "SaveVideo"
        ext = "mp4" if video else "png"
        existing = len(list(folder.glob(f"{base}_*_.{ext}")))
        name = f"{base}_{existing + 1:05d}_.{ext}"
        w, h, frames, fps, color = _media(graph, nid)
        if video and (w % 2 or h % 2):
            raise ValueError(
                "[Errno 542398533] Generic error in an external library: 'avcodec_open2(\"libx264\", {})'"
            )
        # EmptyImage makes a flat colour, as on a real server; "model" nodes make motion.
        if black:
            source = f"color=c=black:s={w}x{h}:r={fps:g}"
        elif color is not None:
            source = f"color=c=0x{color:06x}:s={w}x{h}:r={fps:g}"
        else:
            source = f"testsrc2=s={w}x{h}:r={fps:g}"
        args = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", source]
        if video:
            args += [
                "-frames:v",
                str(frames),
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
            ]
        else:
            args += ["-frames:v", "1"]
        key = tuple(args)
        if key in self._renders:
            (folder / name).write_bytes(self._renders[key])
        else:
            args.append(str(folder / name))
            proc = await asyncio.create_subprocess_exec(*args, stderr=subprocess.PIPE)
            _, err = await proc.communicate()
            if proc.returncode != 0:
                raise ValueError(err.decode(errors="replace"))
            if len(self._renders) >= _RENDERS_KEPT:
                del self._renders[next(iter(self._renders))]
            self._renders[key] = (folder / name).read_bytes()
        item = {"filename": name, "subfolder": sub, "type": "output"}
        return {"images": [item], "animated": [True]} if video else {"images": [item]}


_RENDERS_KEPT = 64


def _wall_ms(moment: float) -> int:
    """A moment on the loop's clock as ComfyUI stamps its messages: ms since the epoch."""
    return int((time.time() + moment - asyncio.get_running_loop().time()) * 1000)


async def _until(moment: float) -> None:
    """Sleep until `moment` on the loop's clock. A GPU's time does not stretch with the
    host's load: the simulator's own work (its ffmpeg, its messages) is spent inside a
    node's share of job_seconds, so a busy test host does not slow the servers it plays."""
    await asyncio.sleep(max(0.0, moment - asyncio.get_running_loop().time()))


def _error400(
    kind: str, message: str, details: str, node_errors: dict | None = None
) -> web.Response:
    return web.json_response(
        {
            "error": {"type": kind, "message": message, "details": details, "extra_info": {}},
            "node_errors": node_errors or {},
        },
        status=400,
    )


def _options(spec: Any) -> list[Any] | None:
    if isinstance(spec, list) and spec:
        if isinstance(spec[0], list):
            return spec[0]
        if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
            return spec[1].get("options")
    return None


def _state(pid: str, nid: str, value: float, maximum: float, state: str) -> dict[str, Any]:
    return {
        "value": value,
        "max": maximum,
        "state": state,
        "node_id": nid,
        "prompt_id": pid,
        "display_node_id": nid,
        "parent_node_id": None,
        "real_node_id": nid,
    }


def _order(graph: dict[str, Any], outputs: list[str]) -> list[str]:
    """Ancestors before descendants, only what the outputs need (like ComfyUI)."""
    seen: list[str] = []

    def visit(nid: str) -> None:
        if nid in seen:
            return
        for value in reversed(list(graph[nid]["inputs"].values())):
            if isinstance(value, list) and len(value) == 2 and value[0] in graph:
                visit(value[0])
        seen.append(nid)

    for out in outputs:
        visit(out)
    return seen


def _node_key(graph: dict[str, Any], nid: str) -> str:
    node = graph[nid]
    inputs = {
        k: _node_key(graph, v[0]) + f":{v[1]}"
        if isinstance(v, list) and len(v) == 2 and v[0] in graph
        else v
        for k, v in sorted(node["inputs"].items())
    }
    return json.dumps([node["class_type"], inputs], sort_keys=True, default=str)


def _media(graph: dict[str, Any], nid: str) -> tuple[int, int, int, float, int | None]:
    """(width, height, frames, fps, flat colour or None) upstream of `nid`."""
    found: dict[str, Any] = {"w": 64, "h": 64, "frames": 1, "fps": 24.0, "color": None}
    makers = {"KSampler", "FramePackSampler", "WanImageToVideo", "LoadImage"}
    done: set[str] = set()

    def walk(n: str) -> None:
        if n in done:
            return
        done.add(n)
        node = graph[n]
        cls, i = node["class_type"], node["inputs"]
        for value in i.values():
            if isinstance(value, list) and len(value) == 2 and value[0] in graph:
                walk(value[0])
        if cls in ("EmptyImage", "EmptyLatentImage", "ImageScale", "WanImageToVideo"):
            found["w"], found["h"] = (
                int(i.get("width", found["w"])),
                int(i.get("height", found["h"])),
            )
        if cls == "EmptyImage":
            found["frames"] = int(i.get("batch_size", 1))
            found["color"] = int(i.get("color", 0)) % 2**24
        if cls == "ImageBatch":
            found["frames"] = found.get("batch_total", found["frames"])
        if cls == "WanImageToVideo":
            found["frames"] = int(i.get("length", 1))
        if cls == "FramePackSampler":
            window = int(i.get("latent_window_size", 9))
            sections = max(1, round(float(i.get("total_second_length", 1)) * 30 / (window * 4)))
            found["frames"] = 4 * window * sections + 1
        if cls == "CreateVideo":
            found["fps"] = float(i.get("fps", 30))

    walk(nid)
    if graph[nid]["class_type"] == "SaveVideo" or any(
        graph[n]["class_type"] == "ImageBatch" for n in done
    ):
        batches = [graph[n] for n in done if graph[n]["class_type"] == "ImageBatch"]
        if batches:
            found["frames"] = sum(
                int(graph[v[0]]["inputs"].get("batch_size", 1))
                for b in batches
                for v in b["inputs"].values()
                if isinstance(v, list)
            )
    color = None if any(graph[n]["class_type"] in makers for n in done) else found["color"]
    return int(found["w"]), int(found["h"]), int(found["frames"]), float(found["fps"]), color


async def _serve(port: int, job_seconds: float, switch_seconds: float) -> None:
    sim = Simulator(job_seconds=job_seconds, switch_seconds=switch_seconds)
    url = await sim.start(port)
    print(f"listening on {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="ComfyUI 0.8 simulator for bridge's tests")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--job-seconds", type=float, default=0.05)
    parser.add_argument(
        "--switch-seconds", type=float, default=0.0, help="cost of a change of expensive nodes"
    )
    args = parser.parse_args()
    asyncio.run(_serve(args.port, args.job_seconds, args.switch_seconds))


if __name__ == "__main__":
    main()
