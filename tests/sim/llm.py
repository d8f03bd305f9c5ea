"""Test doubles of the two model services the direction agents call.

`chat_app` speaks OpenAI-compatible Chat Completions as Ollama and vLLM document it:
`POST /v1/chat/completions` → `{"id", "object": "chat.completion", "created", "model",
"choices": [{"index", "message": {"role", "content"}, "finish_reason"}], "usage"}`; errors as
`{"error": {"message", "type", "code"}}`; `GET /v1/models` → `{"object": "list", "data": [...]}`.
Its "model" answers each role correctly from the scene JSON in the user message, unless a
fault is queued: invalid JSON, schema-violating JSON, an injected field, a truncated answer
(finish_reason "length"), a slow answer, a 500, a 429 with Retry-After, a connection dropped
mid-answer, or a 400 refusing `response_format` json_schema (as older servers do).

`agent_app` answers like the old agent service (../shared/SEED-COMPAT.md): agents status,
reasoning (JSON in free text), narration (with `comfyui_prompt`), 503 for a missing agent.

    python -m tests.sim.llm --port 8399 --latency 0.2 [--agents]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

FAULTS = (
    "invalid_json",
    "schema",
    "inject",
    "truncated",
    "slow",
    "500",
    "429",
    "drop",
    "refuse_json_schema",
)


@dataclass
class State:
    latency: float = 0.0
    slow: float = 3.0
    faults: deque[str] = field(default_factory=deque)
    always: str | None = None  # a fault on every answer
    only_scene: str | None = None  # faults hit only the requests about this scene
    requests: list[dict[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    refuses_json_schema: bool = False
    agents: dict[str, str] = field(
        default_factory=lambda: {"ReasoningAgent": "active", "NarrationAgent": "active"}
    )


def _scene(messages: list[dict[str, Any]]) -> dict[str, Any]:
    for m in messages:
        text = str(m.get("content", ""))
        if m.get("role") == "user" and "as JSON data:\n" in text:
            scene: dict[str, Any] = json.loads(text.split("as JSON data:\n", 1)[1])
            return scene
    return {}


def _role(body: dict[str, Any]) -> str:
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return str(fmt["json_schema"]["name"])
    system = str(body["messages"][0]["content"]).lower()
    return next(r for r in ("reasoning", "narration", "coding") if f"{r} agent" in system)


def answer(role: str, scene: dict[str, Any]) -> dict[str, Any]:
    """What a well-behaved model answers for the role."""
    if role == "reasoning":
        longest = int(scene["max_frames_per_shot"])
        total = int(scene.get("frame_count") or longest)
        count = math.ceil(total / longest)
        base, extra = divmod(total, count)
        shots = [
            {
                "id": f"s{i + 1:02d}",
                "action": f"{scene.get('description') or 'the scene'} (beat {i + 1})",
                "camera": "slow pan left" if i % 2 else "static wide",
                "frames": base + (1 if i < extra else 0),
            }
            for i in range(count)
        ]
        return {"shots": shots, "why": "even beats within the shot length"}
    if role == "narration":
        return {
            "prompts": [
                {
                    "shot": s["id"],
                    "prompt": f"{scene.get('visual_description', '')}, {s.get('action', '')}",
                    "negative": "blurry",
                }
                for s in scene["shots"]
            ],
            "why": "look first, then action",
        }
    return {
        "template": scene["template"],
        "preset": scene["preset"]["name"],
        "steps": 20,
        "cfg": 6.5,
        "why": "balanced for the scene",
    }


def _completion(content: str, model: str, finish: str = "stop") -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{int(time.time() * 1000)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160},
    }


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> Any:
    body = {"error": {"message": message, "type": kind, "code": status}}
    return web.json_response(body, status=status, headers=headers)


def chat_app(state: State) -> web.Application:
    async def models(request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": "tiny", "object": "model", "owned_by": "sim"}]}
        )

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        state.requests.append(body)
        state.times.append(time.monotonic())
        fmt = (body.get("response_format") or {}).get("type")
        if state.refuses_json_schema and fmt == "json_schema":
            return _error(400, "response_format json_schema is not supported", "invalid_request")
        fault = None
        if state.only_scene in (None, _scene(body["messages"]).get("scene")):
            fault = state.faults.popleft() if state.faults else state.always
        if fault == "refuse_json_schema" and fmt == "json_schema":
            state.refuses_json_schema = True
            return _error(400, "response_format json_schema is not supported", "invalid_request")
        await asyncio.sleep(state.latency)
        if fault == "500":
            return _error(500, "model runner crashed", "server_error")
        if fault == "429":
            return _error(429, "rate limited", "rate_limit", {"Retry-After": "1"})
        if fault == "slow":
            await asyncio.sleep(state.slow)
        if fault == "drop":
            resp = web.StreamResponse(headers={"Content-Length": "4000"})
            resp.content_type = "application/json"
            await resp.prepare(request)
            await resp.write(b'{"id": "chatcmpl-1", "choices": [{"message": {"content": "{\\"')
            assert request.transport is not None
            request.transport.close()
            return resp
        role = _role(body)
        good = answer(role, _scene(body["messages"]))
        content = json.dumps(good)
        finish = "stop"
        if fault == "invalid_json":
            content = "Sure! Here is the JSON you asked for: {shots: [..."
        elif fault == "schema":
            content = json.dumps({**good, "why": 42})
        elif fault == "inject":
            content = json.dumps({**good, "start_image": "/etc/passwd", "seed": 1})
        elif fault == "truncated":
            content, finish = content[: len(content) // 2], "length"
        return web.json_response(_completion(content, str(body.get("model")), finish))

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", completions)
    return app


def agent_app(state: State) -> web.Application:
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "healthy"})

    async def status(request: web.Request) -> web.Response:
        agents = [
            {
                "name": name,
                "model": "tiny",
                "status": state.agents.get(name, "not_implemented"),
                "tasks_processed": 0,
            }
            for name in ("CodingAgent", "ReasoningAgent", "NarrationAgent")
        ]
        return web.json_response({"agents": agents})

    def available(name: str) -> bool:
        return state.agents.get(name) == "active" and state.always != f"503-{name}"

    async def reasoning(request: web.Request) -> web.Response:
        body = await request.json()
        state.requests.append({"agent": "reasoning", **body})
        await asyncio.sleep(state.latency)
        if not available("ReasoningAgent"):
            return web.json_response({"detail": "Reasoning agent not available"}, status=503)
        scene = json.loads(body["background"].split("as JSON data:\n", 1)[1])
        text = "Let me think about the shots.\n" + json.dumps(answer("reasoning", scene))
        return web.json_response(
            {"task": body["task"], "response": text, "analysis": "", "model": "tiny"}
        )

    async def narration(request: web.Request) -> web.Response:
        body = await request.json()
        state.requests.append({"agent": "narration", **body})
        await asyncio.sleep(state.latency)
        if not available("NarrationAgent"):
            return web.json_response({"detail": "Narration agent not available"}, status=503)
        return web.json_response(
            {
                "scene": body["scene"],
                "narration": "The night is quiet.",
                "mood": body.get("mood"),
                "comfyui_prompt": f"masterpiece, {body['scene']}",
                "model": "tiny",
            }
        )

    async def coding(request: web.Request) -> web.Response:
        return web.json_response({"detail": "Coding agent not available"}, status=503)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/api/agents/status", status)
    app.router.add_post("/api/agents/reasoning", reasoning)
    app.router.add_post("/api/agents/narration", narration)
    app.router.add_post("/api/agents/coding", coding)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8399)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--agents", action="store_true", help="be the agent service instead")
    args = parser.parse_args()
    state = State(latency=args.latency)
    app = agent_app(state) if args.agents else chat_app(state)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
