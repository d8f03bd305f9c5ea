"""One ComfyUI server over its HTTP + WebSocket API (aiohttp), as ComfyUI 0.8 really behaves.

Facts this relies on, all seen on the wire (see tests/fixtures/comfyui):
- we choose the prompt_id and register for its events before POST /prompt, because a fast
  or cached prompt's events can arrive before the POST's reply;
- events go only to the socket whose clientId is the prompt's client_id, so every prompt
  carries ours; `executing` with node null is the only "done", and only then is the
  history entry written;
- a reconnecting socket gets no replay, and a restarted server has forgotten its queue and
  history, so /history and /queue are the truth and the socket is only the fast path;
- video outputs are listed under `images` (with `animated`), so every list-valued key of
  a node's outputs is walked for items with a filename.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Collection, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from bridge.backends.base import Attempt, Outcome, Progress, ProgressFn
from bridge.errors import PermanentBackendError, TransientBackendError
from bridge.hashing import file_digest
from bridge.masking import mask_url
from bridge.paths import PathEscape, safe_relative

log = logging.getLogger(__name__)

_RECONNECTED = {"type": "_reconnected"}
UPLOAD_SUBFOLDER = "bridge"


class ComfyUIBackend:
    """A ComfyUI server; `slots` prompts are kept on it at once so its queue never runs dry."""

    def __init__(
        self,
        url: str,
        *,
        slots: int = 2,
        client_id: str | None = None,
        poll_interval: float = 2.0,
        request_timeout: float = 60.0,
        download_tries: int = 6,
    ) -> None:
        self.url = url.rstrip("/")
        self.name = mask_url(self.url)
        self.slots = slots
        self.client_id = client_id or uuid.uuid4().hex
        self.poll_interval = poll_interval
        self.request_timeout = request_timeout
        self.download_tries = download_tries
        self.healthy = False
        self.connected = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watchers: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._object_info: Mapping[str, Any] | None = None
        self._classes: dict[str, Any] = {}  # single classes asked, None for unknown ones
        self._partials: dict[Path, str] = {}  # .part file -> the validator its bytes came with

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None),
                trace_configs=[_debug_trace()] if log.isEnabledFor(logging.DEBUG) else None,
            )
        stats = await self.system_stats()
        version = stats.get("system", {}).get("comfyui_version", "?")
        log.info("ComfyUI %s at %s", version, self.name)
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_socket(), name=f"ws {self.name}")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise TransientBackendError(f"{self.name}: not started")
        return self._session

    # -- plain requests ----------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """(status, parsed JSON or text); connection trouble and 5xx are transient.

        A GET cut short is asked again at once (twice at most): it changes nothing, and a
        reset connection says little about the server.
        """
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        tries = 3 if method == "GET" else 1
        for tried in range(1, tries + 1):
            try:
                async with self.session.request(
                    method, self.url + path, timeout=timeout, **kwargs
                ) as resp:
                    text = await resp.text()
                    status = resp.status
                    ctype = resp.content_type
                break
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
                if tried < tries:
                    log.debug("%s %s cut short (%s); asking again", method, path, exc)
                    continue
                self.healthy = False
                raise TransientBackendError(
                    f"{self.name} did not answer {method} {path}: {_describe(exc)}"
                ) from None
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self.healthy = False
                raise TransientBackendError(
                    f"{self.name} did not answer {method} {path}: {_describe(exc)}"
                ) from None
        if status >= 500:
            raise TransientBackendError(f"{self.name} {method} {path}: HTTP {status}: {text[:200]}")
        body: Any = text
        if ctype == "application/json" and text:
            try:
                body = orjson.loads(text)
            except ValueError:
                body = text
        return status, body

    async def system_stats(self) -> dict[str, Any]:
        status, body = await self._request("GET", "/system_stats")
        if status != 200 or not isinstance(body, dict):
            self.healthy = False
            raise TransientBackendError(f"{self.name}: /system_stats answered HTTP {status}")
        self.healthy = True
        return body

    async def object_info(self, classes: Collection[str] | None = None) -> Mapping[str, Any]:
        """Every node class, or only `classes`: those are asked one by one, at once, which
        spares the server a scan of every model folder (and ~0.6 MB) before a run's first
        prompt. Unknown classes are absent from the answer."""
        if self._object_info is not None or classes is None:
            if self._object_info is None:
                status, body = await self._request("GET", "/object_info")
                if status != 200 or not isinstance(body, dict):
                    raise TransientBackendError(f"{self.name}: /object_info answered HTTP {status}")
                self._object_info = body
            info = self._object_info
            return info if classes is None else {c: info[c] for c in classes if c in info}
        asked = [c for c in classes if c not in self._classes]
        for cls, answer in zip(
            asked, await asyncio.gather(*(self._one_class(c) for c in asked)), strict=True
        ):
            self._classes[cls] = answer
        return {c: info for c in classes if (info := self._classes[c]) is not None}

    async def _one_class(self, cls: str) -> Any:
        status, body = await self._request("GET", "/object_info/" + quote(cls, safe=""))
        if status != 200 or not isinstance(body, dict):
            raise TransientBackendError(f"{self.name}: /object_info/{cls} answered HTTP {status}")
        return body.get(cls)  # {} for a class the server does not have

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The finished prompt's history entry, or None while unknown, queued or running."""
        status, body = await self._request("GET", f"/history/{prompt_id}")
        if status == 200 and isinstance(body, dict):
            return body.get(prompt_id)
        return None

    async def queued(self, prompt_id: str) -> bool:
        status, body = await self._request("GET", "/queue")
        if status != 200 or not isinstance(body, dict):
            return False
        items = [*body.get("queue_running", []), *body.get("queue_pending", [])]
        return any(len(item) > 1 and item[1] == prompt_id for item in items)

    # -- the socket --------------------------------------------------------------------

    async def _read_socket(self) -> None:
        """One long-lived socket, reconnected with backoff; watchers reconcile after a gap."""
        delay = 0.2
        first = True
        while True:
            try:
                async with self.session.ws_connect(
                    f"{self.url}/ws?clientId={self.client_id}", heartbeat=20, max_msg_size=0
                ) as ws:
                    self.connected.set()
                    delay = 0.2
                    if not first:
                        for queue in list(self._watchers.values()):
                            queue.put_nowait(_RECONNECTED)
                    first = False
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            self._dispatch(msg.data)
                        elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused, reset, handshake failure: retry later
                log.debug("socket to %s: %s", self.name, _describe(exc))
            self.connected.clear()
            for queue in list(self._watchers.values()):
                queue.put_nowait(_RECONNECTED)  # prompts poll while the socket is down
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _dispatch(self, text: str) -> None:
        try:
            message = orjson.loads(text)
        except ValueError:
            return
        data = message.get("data") if isinstance(message, dict) else None
        if not isinstance(data, dict):
            return
        prompt_id = data.get("prompt_id")
        queue = self._watchers.get(prompt_id) if prompt_id else None
        if queue is not None:
            queue.put_nowait(message)

    # -- running a job -----------------------------------------------------------------

    async def execute(self, attempt: Attempt, progress: ProgressFn) -> Outcome:
        prompt_id = attempt.prompt_id
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._watchers[prompt_id] = queue
        try:
            entry = None
            posted: Mapping[str, Any] | None = None
            if attempt.resume and not await self.queued(prompt_id):
                # The queue first, then the history: ComfyUI writes a prompt's history before
                # it leaves the queue, so one gone from the queue is in the history or was
                # never there. Asked the other way round, a prompt ending between the two
                # asks looked unknown and was posted a second time.
                entry = await self.history(prompt_id)
                if entry is None:
                    posted = await self._submit(attempt)
            elif not attempt.resume:
                posted = await self._submit(attempt)
            submitted = posted is not None
            ran_nodes = False
            if entry is None:
                entry, ran_nodes = await self._wait(attempt, queue, progress)
            attempt.rendered()
            files = await self._collect(attempt, entry)
            recorded = entry.get("prompt")
            if posted is None and isinstance(recorded, list) and len(recorded) > 2:
                posted = recorded[2]
            return Outcome(
                files=files,
                server=self.name,
                prompt_id=prompt_id,
                cached=not ran_nodes,
                submitted=submitted,
                workflow=posted,
            )
        finally:
            self._watchers.pop(prompt_id, None)

    async def _submit(self, attempt: Attempt) -> Mapping[str, Any]:
        workflow = dict(attempt.workflow or attempt.job.workflow)
        if attempt.start_image is not None and attempt.job.start_image is not None:
            name = await self.upload(attempt.start_image)
            bind = attempt.job.start_image
            node = workflow[bind.node]
            workflow[bind.node] = {**node, "inputs": {**node["inputs"], bind.input: name}}
        body = {
            "prompt": workflow,
            "client_id": self.client_id,
            "prompt_id": attempt.prompt_id,
            "extra_data": {"extra_pnginfo": {"bridge": {"job": attempt.job.id}}},
        }
        status, reply = await self._request("POST", "/prompt", json=body)
        if status == 200 and isinstance(reply, dict) and not reply.get("node_errors"):
            return workflow
        if isinstance(reply, dict):
            raise PermanentBackendError(f"ComfyUI rejected the prompt: {rejection(reply)}")
        raise PermanentBackendError(f"ComfyUI rejected the prompt: HTTP {status}: {reply!s:.300}")

    async def upload(self, path: Path) -> str:
        """Upload a start image under a content-derived name; returns the name LoadImage takes."""
        name = f"{file_digest(path)[:16]}{path.suffix.lower() or '.png'}"
        form = aiohttp.FormData()
        form.add_field("image", path.read_bytes(), filename=name, content_type="image/png")
        form.add_field("subfolder", UPLOAD_SUBFOLDER)
        form.add_field("type", "input")
        form.add_field("overwrite", "true")
        status, reply = await self._request("POST", "/upload/image", data=form)
        if status != 200 or not isinstance(reply, dict) or "name" not in reply:
            raise PermanentBackendError(f"{self.name}: uploading {path.name} failed: HTTP {status}")
        sub = reply.get("subfolder") or ""
        return f"{sub}/{reply['name']}" if sub else str(reply["name"])

    async def _wait(
        self, attempt: Attempt, queue: asyncio.Queue[dict[str, Any]], progress: ProgressFn
    ) -> tuple[dict[str, Any], bool]:
        """Follow the prompt to its end: socket events when connected, /history otherwise."""
        job_id = attempt.job.id
        prompt_id = attempt.prompt_id
        ran_nodes = False
        silent = 0.0
        while True:
            wait = self.poll_interval if self.connected.is_set() else self.poll_interval / 2
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancellation
                # that arrives as the message does, and the job would run on, uncancelled
                async with asyncio.timeout(wait):
                    message = await queue.get()
            except TimeoutError:
                silent += wait
                # Silence is normal (model loading); look at the truth now and then.
                if not self.connected.is_set() or silent >= 5 * self.poll_interval:
                    silent = 0.0
                    entry = await self._reconcile(prompt_id)
                    if entry is not None:
                        return entry, True
                continue
            silent = 0.0
            kind = message.get("type")
            data = message.get("data", {})
            if kind == "_reconnected":
                entry = await self._reconcile(prompt_id)
                if entry is not None:
                    return entry, True
            elif kind == "progress":
                progress(
                    Progress(job_id, data.get("value", 0), data.get("max", 0), data.get("node"))
                )
            elif kind == "executing":
                if data.get("node") is None:
                    entry = await self._final_history(prompt_id)
                    return entry, ran_nodes
                ran_nodes = True

    async def _reconcile(self, prompt_id: str) -> dict[str, Any] | None:
        """After a gap: the history entry if finished; lost prompts are a transient failure."""
        entry = await self.history(prompt_id)
        if entry is not None:
            return entry
        if await self.queued(prompt_id):
            return None
        entry = await self.history(prompt_id)  # it may have finished between the two calls
        if entry is not None:
            return entry
        raise TransientBackendError(
            f"{self.name} no longer knows prompt {prompt_id} (restarted?); it will be resubmitted"
        )

    async def _final_history(self, prompt_id: str) -> dict[str, Any]:
        for delay in (0, 0.05, 0.2, 0.5, 1.0):
            await asyncio.sleep(delay)
            entry = await self.history(prompt_id)
            if entry is not None:
                return entry
        raise TransientBackendError(f"{self.name}: prompt {prompt_id} finished but has no history")

    async def _collect(self, attempt: Attempt, entry: Mapping[str, Any]) -> tuple[Path, ...]:
        """Download the outputs; a download cut short is retried as a download (resumed
        where the server honours Range), from a fresh /history entry, never re-rendered."""
        done: set[Path] = set()
        failures = 0
        while True:
            try:
                return await self._download_outputs(attempt, entry, done)
            except _DownloadFailed as exc:
                failures += 1
                if failures >= self.download_tries:
                    self._forget_partials(attempt.dest)
                    raise TransientBackendError(f"{exc} ({failures} tries)") from None
                log.info("%s; downloading it again", exc)
            await asyncio.sleep(min(0.25 * 2**failures, 5.0))
            try:
                fresh = await self.history(attempt.prompt_id)
            except TransientBackendError as exc:
                log.info("%s; downloading again later", exc.message)
                continue
            if fresh is None:
                self._forget_partials(attempt.dest)
                raise TransientBackendError(
                    f"{self.name} no longer has the history of prompt {attempt.prompt_id}"
                )
            entry = fresh

    async def _download_outputs(
        self, attempt: Attempt, entry: Mapping[str, Any], done: set[Path]
    ) -> tuple[Path, ...]:
        status = entry.get("status") or {}
        if status.get("status_str") != "success":
            raise PermanentBackendError(failure(status))
        outputs = entry.get("outputs") or {}
        node = attempt.job.output_node
        chosen = {node: outputs[node]} if node in outputs else outputs
        items = [item for ui in chosen.values() for item in output_items(ui)]
        if not items:
            raise PermanentBackendError(
                f"the prompt succeeded but node {node} produced no file "
                "(is its output node connected?)"
            )
        attempt.dest.mkdir(parents=True, exist_ok=True)
        stem = f"{attempt.job.kind.value}-{attempt.job.hash[:12]}"
        files = []
        for i, item in enumerate(items):
            ext = PurePosixPath(str(item["filename"])).suffix.lower()
            target = attempt.dest / (f"{stem}{ext}" if i == 0 else f"{stem}-{i}{ext}")
            if target not in done:
                await self.download(item, target)
                done.add(target)
            files.append(target)
        return tuple(files)

    async def download(self, item: Mapping[str, Any], target: Path) -> Path:
        """Stream /view into `target` atomically; the server's names never choose our path.

        A transfer cut short leaves its `.part` file and raises _DownloadFailed; the next
        call asks only for the missing bytes (Range, with If-Range so a changed file is
        sent whole), and starts over when the server answers 200 instead of 206.
        """
        try:
            remote = safe_relative(str(item.get("subfolder") or ""), str(item["filename"]))
        except PathEscape as exc:
            raise PermanentBackendError(f"{self.name} named an unsafe output path: {exc}") from None
        params = {
            "filename": remote.name,
            "subfolder": str(remote.parent) if str(remote.parent) != "." else "",
            "type": str(item.get("type") or "output"),
        }
        part = target.with_name(f".{target.name}.part")
        validator = self._partials.get(part)
        have = part.stat().st_size if validator and part.exists() else 0
        headers = {"Range": f"bytes={have}-", "If-Range": validator} if have and validator else {}
        try:
            async with self.session.get(
                self.url + "/view",
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120),
            ) as resp:
                if resp.status == 404:
                    raise PermanentBackendError(
                        f"{self.name} lists output {remote} but does not have it (HTTP 404)"
                    )
                if resp.status == 416:  # our partial file is longer than theirs: start over
                    self._partials.pop(part, None)
                    raise _DownloadFailed(f"{self.name}: /view {remote}: HTTP 416")
                if resp.status not in (200, 206):
                    raise _DownloadFailed(f"{self.name}: /view {remote}: HTTP {resp.status}")
                resumed = resp.status == 206 and _range_start(resp) == have
                if resp.status == 206 and not resumed:
                    self._partials.pop(part, None)
                    raise _DownloadFailed(f"{self.name}: /view {remote}: unexpected range")
                new_validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
                if new_validator and not resp.headers.get("Content-Encoding"):
                    self._partials[part] = new_validator
                with part.open("ab" if resumed else "wb") as fh:
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        fh.write(chunk)
                expected = _total_size(resp)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if part not in self._partials:
                part.unlink(missing_ok=True)
            raise _DownloadFailed(
                f"{self.name}: downloading {remote} failed: {_describe(exc)}"
            ) from None
        except _DownloadFailed:
            part.unlink(missing_ok=True)
            raise
        except BaseException:
            self._partials.pop(part, None)
            part.unlink(missing_ok=True)
            raise
        self._partials.pop(part, None)
        size = part.stat().st_size
        if expected is not None and size != expected:
            part.unlink(missing_ok=True)
            raise _DownloadFailed(
                f"{self.name}: downloading {remote} gave {size} bytes of {expected}"
            )
        part.replace(target)
        return target

    def _forget_partials(self, dest: Path) -> None:
        for part in [p for p in self._partials if p.parent == dest]:
            self._partials.pop(part, None)
            part.unlink(missing_ok=True)

    async def cancel(self, attempt: Attempt) -> None:
        """Delete it if pending, interrupt it if running; both are harmless otherwise."""
        with contextlib.suppress(Exception):
            await self._request("POST", "/queue", json={"delete": [attempt.prompt_id]})
        with contextlib.suppress(Exception):
            await self._request("POST", "/interrupt", json={"prompt_id": attempt.prompt_id})


def _debug_trace() -> aiohttp.TraceConfig:
    """LOG_LEVEL=DEBUG: every request to the server with its status and time, URL masked."""
    trace = aiohttp.TraceConfig()

    async def start(_s: Any, ctx: Any, params: aiohttp.TraceRequestStartParams) -> None:
        ctx.started = time.monotonic()

    async def end(_s: Any, ctx: Any, params: aiohttp.TraceRequestEndParams) -> None:
        ms = (time.monotonic() - ctx.started) * 1000
        url = mask_url(str(params.url))
        log.debug("%s %s -> %d in %.0f ms", params.method, url, params.response.status, ms)

    async def failed(_s: Any, ctx: Any, params: aiohttp.TraceRequestExceptionParams) -> None:
        ms = (time.monotonic() - ctx.started) * 1000
        url = mask_url(str(params.url))
        log.debug("%s %s -> %s after %.0f ms", params.method, url, _describe(params.exception), ms)

    trace.on_request_start.append(start)
    trace.on_request_end.append(end)
    trace.on_request_exception.append(failed)
    return trace


def output_items(ui: Any) -> list[Mapping[str, Any]]:
    """Every {filename, ...} in a node's outputs, whatever key it is under (images, gifs)."""
    if not isinstance(ui, Mapping):
        return []
    return [
        item
        for value in ui.values()
        if isinstance(value, list)
        for item in value
        if isinstance(item, Mapping) and "filename" in item
    ]


def rejection(reply: Mapping[str, Any]) -> str:
    """A 400 from POST /prompt in one readable line per problem, node by node."""
    error = reply.get("error") or {}
    lines = []
    for nid, node in sorted((reply.get("node_errors") or {}).items()):
        for e in node.get("errors", []):
            extra = e.get("extra_info") or {}
            where = f"node {nid} ({node.get('class_type', '?')})"
            name = extra.get("input_name")
            lines.append(
                f"{where} {name + ': ' if name else ''}{e.get('message')}: {e.get('details')}"
            )
    if not lines:
        lines.append(
            f"{error.get('message', 'invalid prompt')}: {error.get('details', '')}".strip()
        )
    return "; ".join(lines)


def failure(status: Mapping[str, Any]) -> str:
    """Why a prompt failed, from its history messages: the node's own exception message."""
    for event, data in reversed(status.get("messages") or []):
        if event == "execution_error":
            return (
                f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                f"{data.get('exception_type', 'error')}: "
                f"{str(data.get('exception_message', '')).strip()}"
            )
        if event == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return f"the prompt ended with status {status.get('status_str')!r}"


class _DownloadFailed(TransientBackendError):
    """A transfer cut short: the render is done, only the bytes need fetching again."""


def _range_start(resp: aiohttp.ClientResponse) -> int | None:
    """The first byte of a 206's `Content-Range: bytes a-b/total`."""
    unit, _, spec = resp.headers.get("Content-Range", "").partition(" ")
    first = spec.partition("-")[0]
    return int(first) if unit == "bytes" and first.isdigit() else None


def _total_size(resp: aiohttp.ClientResponse) -> int | None:
    """The whole file's size: from Content-Range on a 206, Content-Length on a 200."""
    if resp.status == 206:
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length", "")
    return int(length) if length.isdigit() and not resp.headers.get("Content-Encoding") else None


def _describe(exc: BaseException) -> str:
    """The failure in a user's words: a refused or unreachable connection by its reason,
    not aiohttp's `Cannot connect to host ... ssl:default [...]`."""
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.errno:
        return f"cannot connect ({os.strerror(exc.os_error.errno)})"
    return str(exc) or type(exc).__name__
