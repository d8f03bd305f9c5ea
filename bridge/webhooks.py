"""Webhook notices: a JSON POST when a run or a job finishes, signed, retried, recorded.

Deliveries run as background tasks with a bounded number of tries, so a webhook that never
answers costs the run nothing. The body is signed with HMAC-SHA256 over the exact bytes
sent (`X-Bridge-Signature: sha256=<hex>`) when a secret is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Bridge-Signature"


@dataclass(frozen=True)
class Hook:
    url: str
    events: frozenset[str] = frozenset({"run_finished"})
    secret: str | None = None


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


Record = Callable[[str, Mapping[str, Any]], None]


class Notifier:
    """Sends notices in the background, a few tries each, never holding up a run."""

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
                task.add_done_callback(self._tasks.discard)

    async def _deliver(
        self, hook: Hook, event: str, payload: Mapping[str, Any], record: Record
    ) -> None:
        body = orjson.dumps({"event": event, **payload})
        headers = {"Content-Type": "application/json", "User-Agent": "bridge-webhook"}
        if hook.secret:
            headers[SIGNATURE_HEADER] = sign(hook.secret, body)
        error = ""
        for attempt in range(1, self.tries + 1):
            try:
                async with (
                    aiohttp.ClientSession(
                        timeout=aiohttp.ClientTimeout(total=self.timeout)
                    ) as session,
                    session.post(hook.url, data=body, headers=headers) as resp,
                ):
                    if resp.status < 300:
                        record(
                            "webhook_delivered",
                            {
                                "url": hook.url,
                                "event": event,
                                "status": resp.status,
                                "attempt": attempt,
                            },
                        )
                        return
                    error = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = str(exc) or type(exc).__name__
            if attempt < self.tries:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
        log.warning("webhook %s gave up after %d tries: %s", hook.url, self.tries, error)
        record("webhook_failed", {"url": hook.url, "event": event, "error": error})

    async def drain(self, timeout: float = 5.0) -> None:
        """Give pending deliveries a moment at shutdown, then drop them."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def hooks_from_spec(
    entries: tuple[Mapping[str, Any], ...], environ: Mapping[str, str]
) -> list[Hook]:
    out = []
    for entry in entries:
        secret = environ.get(entry["secret_env"]) if entry.get("secret_env") else None
        events = frozenset(entry.get("events") or ("run_finished",))
        out.append(Hook(entry["url"], events, secret))
    return out
