"""Two ways to reach a model behind one small interface: `answer(role, payload, feedback)`.

`ChatClient` speaks OpenAI-compatible Chat Completions (Ollama, vLLM, llama.cpp, LM Studio,
gateways); `AgentServiceClient` speaks the old system's agent service (ECHO_BRAIN_URL). Both
return the model's JSON text unvalidated: the caller validates every answer the same way.
Transport faults (timeouts, 429, 5xx, dropped connections) are retried here with backoff that
honours Retry-After; a service that does not answer at all raises LLMUnavailable so the caller
can fall back to another director.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp

from bridge.direct.roles import Role
from bridge.errors import DirectionError, LLMUnavailable
from bridge.masking import mask_url

ATTEMPTS = 4  # transport attempts per call (429, 5xx, timeouts, dropped connections)
BACKOFF = 0.5  # seconds before the second attempt; doubles, capped at MAX_WAIT
MAX_WAIT = 30.0
MAX_TOKENS = 2048


@dataclass(frozen=True)
class Reply:
    """One model answer: its text (JSON expected) and what the call cost."""

    text: str
    model: str
    seconds: float
    tokens_in: int | None = None
    tokens_out: int | None = None
    truncated: bool = False  # finish_reason "length": the answer was cut off


class Client(Protocol):
    label: str  # what goes into the lock file's `director:`, e.g. "llm:qwen2.5:7b"

    async def answer(self, role: Role, payload: Mapping[str, Any], feedback: str) -> Reply: ...

    async def close(self) -> None: ...


def endpoint(base: str, path: str) -> str:
    """`base` may or may not end in /v1; either way the path is appended once."""
    base = base.rstrip("/")
    return base + path.removeprefix("/v1") if base.endswith("/v1") else base + path


def retry_after(value: str | None, attempt: int) -> float:
    """Seconds to wait: Retry-After as seconds or an HTTP date, else exponential backoff."""
    wait: float = BACKOFF * 2**attempt
    if value:
        try:
            wait = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
                wait = (when - datetime.now(UTC)).total_seconds()
            except (TypeError, ValueError):
                pass
    return min(max(wait, 0.0), MAX_WAIT)


def _detail(text: str) -> str:
    """The error message of an OpenAI-style or FastAPI error body, else the text itself."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:200]
    if isinstance(body, dict):
        err = body.get("error", body.get("detail"))
        if isinstance(err, dict):
            return str(err.get("message", err))[:200]
        if err is not None:
            return str(err)[:200]
    return text.strip()[:200]


class _Http:
    """One aiohttp session, a concurrency bound shared by every call, and the retry loop."""

    def __init__(
        self, base: str, timeout: float, limit: asyncio.Semaphore, *, retry_503: bool = True
    ) -> None:
        self.base = base
        self.retry_503 = retry_503  # the agent service's 503 means "no such agent", not busy
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.limit = limit
        self._session: aiohttp.ClientSession | None = None
        self.answered = False  # once the service answered, a refused connection is a fault

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(
        self, path: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> tuple[int, str, float]:
        """POST with transport retries; returns (status, text, seconds) of a final answer."""
        url = endpoint(self.base, path) if path.startswith("/v1") else self.base + path
        shown = mask_url(url)
        problem = ""
        for attempt in range(ATTEMPTS):
            wait = retry_after(None, attempt)
            started = time.perf_counter()
            try:
                async with self.limit:
                    started = time.perf_counter()
                    async with self.session.post(
                        url, json=body, headers=dict(headers or {}), timeout=self.timeout
                    ) as resp:
                        text = await resp.text()
                        status = resp.status
                        header = resp.headers.get("Retry-After")
            except TimeoutError:
                problem = f"no answer from {shown} within {self.timeout.total:g}s"
            except aiohttp.ClientConnectorError as exc:
                if not self.answered:
                    raise LLMUnavailable(f"{shown} does not answer ({exc.os_error})") from None
                problem = f"{shown} refused the connection"
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
                problem = f"{shown} dropped the connection mid-answer ({type(exc).__name__})"
            except aiohttp.ClientError as exc:
                problem = f"{shown}: {exc}"
            else:
                self.answered = True
                seconds = time.perf_counter() - started
                if status == 429 or (status >= 500 and (status != 503 or self.retry_503)):
                    problem = f"{shown} answered {status}: {_detail(text)}"
                    wait = retry_after(header, attempt)
                else:
                    return status, text, seconds
            if attempt + 1 < ATTEMPTS:
                await asyncio.sleep(wait)
        raise DirectionError(f"{problem} (after {ATTEMPTS} attempts)")

    async def get(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, str]:
        url = endpoint(self.base, path) if path.startswith("/v1") else self.base + path
        try:
            async with self.session.get(
                url, headers=dict(headers or {}), timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                return resp.status, await resp.text()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise LLMUnavailable(f"{mask_url(url)} does not answer ({exc or 'timeout'})") from None


def _user_message(payload: Mapping[str, Any]) -> str:
    return "The scene, as JSON data:\n" + json.dumps(payload, indent=1, ensure_ascii=False)


class ChatClient:
    """OpenAI-compatible `POST /v1/chat/completions`, structured output by JSON Schema."""

    def __init__(
        self, base: str, model: str, api_key: str | None, timeout: float, limit: asyncio.Semaphore
    ) -> None:
        self.http = _Http(base, timeout, limit)
        self.model = model
        self.label = f"llm:{model}"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.json_schema = True  # until the server refuses response_format json_schema

    async def probe(self) -> dict[str, Any]:
        """Whether the endpoint answers and knows the model (GET /v1/models)."""
        status, text = await self.http.get("/v1/models", self._headers)
        if status in (401, 403):
            raise DirectionError(f"{mask_url(self.http.base)} refused the API key ({status})")
        if status >= 400:
            raise LLMUnavailable(f"{mask_url(self.http.base)} answered {status} to /v1/models")
        try:
            models = [m.get("id") for m in json.loads(text).get("data", [])]
        except (ValueError, AttributeError):
            models = []
        return {"reachable": True, "models": models}

    async def answer(self, role: Role, payload: Mapping[str, Any], feedback: str) -> Reply:
        messages = [
            {"role": "system", "content": role.system},
            {"role": "user", "content": _user_message(payload)},
        ]
        if feedback:
            messages.append({"role": "user", "content": feedback})
        while True:
            fmt: dict[str, Any] = (
                {
                    "type": "json_schema",
                    "json_schema": {"name": role.name, "schema": role.schema, "strict": True},
                }
                if self.json_schema
                else {"type": "json_object"}
            )
            body = {
                "model": self.model,
                "messages": messages,
                "temperature": 0,
                "max_tokens": MAX_TOKENS,
                "response_format": fmt,
            }
            status, text, seconds = await self.http.post(
                "/v1/chat/completions", body, self._headers
            )
            if (
                status == 400
                and self.json_schema
                and re.search(r"response_format|json_schema", text)
            ):
                self.json_schema = False  # an older server: ask for any JSON object instead
                continue
            if status >= 400:
                raise DirectionError(
                    f"{mask_url(self.http.base)} answered {status}: {_detail(text)}"
                )
            return self._reply(text, seconds)

    def _reply(self, text: str, seconds: float) -> Reply:
        try:
            body = json.loads(text)
            choice = body["choices"][0]
            content = choice["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise DirectionError(
                f"{mask_url(self.http.base)} answered something that is not a chat completion"
            ) from None
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        return Reply(
            text=content,
            model=str(body.get("model") or self.model),
            seconds=seconds,
            tokens_in=usage.get("prompt_tokens"),
            tokens_out=usage.get("completion_tokens"),
            truncated=choice.get("finish_reason") == "length",
        )

    async def close(self) -> None:
        await self.http.close()


_AGENT_NAMES = {"reasoning": "ReasoningAgent", "narration": "NarrationAgent"}


class AgentServiceClient:
    """The old system's agent service: reasoning plans shots, narration writes prompts.

    Its coding agent writes Python, not render parameters, so that role always falls back.
    Its answers are free text; the reasoning agent is asked for JSON in `constraints`.
    """

    def __init__(self, base: str, timeout: float, limit: asyncio.Semaphore) -> None:
        self.http = _Http(base, timeout, limit, retry_503=False)
        self.label = "agent-service"
        self.active: set[str] = set()

    async def probe(self) -> dict[str, Any]:
        status, text = await self.http.get("/api/agents/status")
        if status >= 400:
            raise LLMUnavailable(f"{mask_url(self.http.base)} answered {status} to agent status")
        try:
            agents = json.loads(text).get("agents", [])
        except (ValueError, AttributeError):
            agents = []
        self.active = {
            a.get("name", "") for a in agents if isinstance(a, dict) and a.get("status") == "active"
        }
        return {"reachable": True, "agents": sorted(self.active)}

    async def answer(self, role: Role, payload: Mapping[str, Any], feedback: str) -> Reply:
        if role.name not in _AGENT_NAMES:
            raise LLMUnavailable("the agent service has no agent for render parameters")
        if _AGENT_NAMES[role.name] not in self.active:
            raise LLMUnavailable(f"its {_AGENT_NAMES[role.name]} is not active")
        if role.name == "reasoning":
            return await self._reasoning(role, payload, feedback)
        return await self._narration(payload)

    async def _call(self, path: str, body: Mapping[str, Any]) -> tuple[dict[str, Any], float]:
        status, text, seconds = await self.http.post(path, body)
        if status == 503:
            raise LLMUnavailable(f"the agent service says: {_detail(text)}")
        if status >= 400:
            raise DirectionError(f"the agent service answered {status}: {_detail(text)}")
        try:
            data = json.loads(text)
        except ValueError:
            raise DirectionError("the agent service answered something that is not JSON") from None
        if not isinstance(data, dict):
            raise DirectionError("the agent service answered something that is not an object")
        return data, seconds

    async def _reasoning(self, role: Role, payload: Mapping[str, Any], feedback: str) -> Reply:
        constraints = (
            f"{role.system}\nAnswer with JSON only, matching this JSON Schema:\n"
            f"{json.dumps(role.schema)}"
        )
        if feedback:
            constraints += "\n" + feedback
        data, seconds = await self._call(
            "/api/agents/reasoning",
            {
                "task": "Plan the shots of this scene.",
                "background": _user_message(payload),
                "constraints": constraints,
            },
        )
        text = str(data.get("response") or data.get("conclusion") or "")
        start, end = text.find("{"), text.rfind("}")
        return Reply(
            text=text[start : end + 1] if 0 <= start < end else text,
            model=str(data.get("model", "")),
            seconds=seconds,
        )

    async def _narration(self, payload: Mapping[str, Any]) -> Reply:
        """One narration call per shot; its `comfyui_prompt` is the shot's prompt."""
        names = ", ".join(c["name"] for c in payload.get("cast", []))
        calls = [
            self._call(
                "/api/agents/narration",
                {
                    "scene": f"{payload.get('visual_description', '')}. {shot.get('action', '')}",
                    "character": names or None,
                    "mood": payload.get("description") or None,
                },
            )
            for shot in payload.get("shots", [])
        ]
        results = await asyncio.gather(*calls)
        prompts = [
            {"shot": shot["id"], "prompt": str(data.get("comfyui_prompt") or ""), "negative": ""}
            for shot, (data, _) in zip(payload.get("shots", []), results, strict=True)
        ]
        answer = {"prompts": prompts, "why": "the agent service's narration agent wrote them"}
        return Reply(
            text=json.dumps(answer),
            model=str(results[0][0].get("model", "")) if results else "",
            seconds=sum(s for _, s in results),
        )

    async def close(self) -> None:
        await self.http.close()
