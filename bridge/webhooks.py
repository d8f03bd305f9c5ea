"""Webhook notices: a JSON POST when a run or a job finishes, signed, retried, recorded.

Deliveries run as background tasks with a bounded number of tries, so a webhook that never
answers costs the run nothing. With a secret, each attempt is signed in the manner of
Stripe's scheme: `X-Bridge-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`,
so a receiver can check both the bytes and their age and refuse replays. Secrets come only
from variables named BRIDGE_WEBHOOK_SECRET_*, so a spec cannot turn a webhook into an HMAC
oracle for another secret of the process (BRIDGE_API_TOKEN).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from bridge.errors import ConfigError, RecordError
from bridge.masking import mask_text, mask_url

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Bridge-Signature"
SECRET_PREFIX = "BRIDGE_WEBHOOK_SECRET_"


@dataclass(frozen=True)
class Hook:
    url: str
    events: frozenset[str] = frozenset({"run_finished"})
    secret: str | None = None


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The X-Bridge-Signature value: `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "t.body")>`."""
    signed = str(timestamp).encode() + b"." + body
    return f"t={timestamp},v1={hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}"


Record = Callable[[str, Mapping[str, Any]], None]


class Notifier:
    """Sends notices in the background, a few tries each, never holding up a run.

    Each delivery ends recorded, as `webhook_delivered` or `webhook_failed`: the record is
    a blocking write the delivery awaits (in a thread), and `drain` at exit waits up to its
    limit for every delivery, records those it cuts short as failed, and says loudly when
    a record could not be written.
    """

    def __init__(
        self,
        *,
        tries: int = 4,
        backoff: float = 1.0,
        timeout: float = 10.0,
    ) -> None:
        self.tries = tries
        self.backoff = backoff
        self.timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self._unrecorded: list[BaseException] = []

    def send(
        self,
        hooks: list[Hook],
        event: str,
        payload: Mapping[str, Any],
        record: Record = lambda kind, data: None,
    ) -> None:
        """Deliver in the background; `record` hears of each delivery or final failure."""
        for hook in hooks:
            if event in hook.events:
                task = asyncio.create_task(self._deliver(hook, event, payload, record))
                self._tasks.add(task)
                task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            self._unrecorded.append(exc)
            log.error("a webhook delivery could not be recorded: %s", exc)

    async def _deliver(
        self, hook: Hook, event: str, payload: Mapping[str, Any], record: Record
    ) -> None:
        body = mask_text(orjson.dumps({"event": event, **payload}).decode()).encode()
        shown = mask_url(hook.url)
        try:
            status, attempt, error = await self._attempts(hook, body)
        except asyncio.CancelledError:
            error = "still undelivered when bridge stopped (BRIDGE_WEBHOOK_DRAIN)"
            log.warning("webhook %s: %s", shown, error)
            await asyncio.to_thread(
                record, "webhook_failed", {"url": shown, "event": event, "error": error}
            )
            raise
        if status:
            data = {"url": shown, "event": event, "status": status, "attempt": attempt}
            await asyncio.to_thread(record, "webhook_delivered", data)
            return
        log.warning("webhook %s gave up after %d tries: %s", shown, self.tries, error)
        await asyncio.to_thread(
            record, "webhook_failed", {"url": shown, "event": event, "error": error}
        )

    async def _attempts(self, hook: Hook, body: bytes) -> tuple[int, int, str]:
        """(HTTP status, attempt, "") once one is accepted, else (0, tries, last error)."""
        headers = {"Content-Type": "application/json", "User-Agent": "bridge-webhook"}
        error = ""
        for attempt in range(1, self.tries + 1):
            if hook.secret:  # signed per attempt, so a late retry is not refused as stale
                headers[SIGNATURE_HEADER] = sign(hook.secret, body, int(time.time()))
            try:
                async with (
                    aiohttp.ClientSession(
                        timeout=aiohttp.ClientTimeout(total=self.timeout)
                    ) as session,
                    session.post(hook.url, data=body, headers=headers) as resp,
                ):
                    if resp.status < 300:
                        return resp.status, attempt, ""
                    error = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = mask_text(str(exc)) or type(exc).__name__
            if attempt < self.tries:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
        return 0, self.tries, error

    async def drain(self, limit: float) -> None:
        """At exit: let outstanding deliveries finish for up to `limit` seconds; those
        still under way are stopped and recorded as failed."""
        if self._tasks:
            tasks = set(self._tasks)
            _, pending = await asyncio.wait(tasks, timeout=limit)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._unrecorded:
            raise RecordError(
                f"{len(self._unrecorded)} webhook result(s) could not be recorded: "
                f"{self._unrecorded[0]}"
            )


def hooks_from_spec(
    entries: tuple[Mapping[str, Any], ...], environ: Mapping[str, str]
) -> list[Hook]:
    out = []
    for entry in entries:
        name = entry.get("secret_env")
        if name and not name.startswith(SECRET_PREFIX):
            raise ConfigError(f"webhook secret_env {name!r} must be named {SECRET_PREFIX}*")
        secret = environ.get(name) if name else None
        events = frozenset(entry.get("events") or ("run_finished",))
        out.append(Hook(entry["url"], events, secret))
    return out
