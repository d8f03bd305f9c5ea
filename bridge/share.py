"""How many jobs a worker takes from the queue: its share of what the farm holds.

Twice the farm's slots in hand keep every slot filled with a job waiting behind each. One
worker alone needs all of them; with several, each holding that many only multiplies the
jobs claimed, looked up and started ahead of a slot (at a run's start, three workers on
one host did three times one worker's work before the first prompts, on the cores that
also run the servers) and leaves fewer jobs in the queue for the others. So by default
a worker fetches while it holds less than the farm's total divided among the live
workers (procrastinate's heartbeats), counted again as workers come and go.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable

from procrastinate import BaseConnector, jobs
from procrastinate.manager import JobManager

REFRESH = 1.0  # seconds a count of the live workers stands (a worker gone raises the share)
POLL = 0.2  # seconds between looks at whether the worker is stopping, while it waits


class Share:
    """This worker's jobs in hand against its share of `total` (fixed: `total` itself)."""

    def __init__(self, total: int, live: Callable[[], Awaitable[int]], *, fixed: bool) -> None:
        self.total = total
        self.fixed = fixed
        self.held = 0
        self._live = live
        self._workers = 1
        self._counted = -math.inf
        self._ended = asyncio.Event()

    def limit(self) -> int:
        return self.total if self.fixed else math.ceil(self.total / max(1, self._workers))

    async def room(self, stopping: Callable[[], bool]) -> bool:
        """Wait until this worker may hold one more job; False once it is stopping."""
        while not stopping():
            if not self.fixed and time.monotonic() - self._counted >= REFRESH:
                self._workers = await self._live()
                self._counted = time.monotonic()
            if self.held < self.limit():
                return True
            self._ended.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL):
                    await self._ended.wait()
        return False

    def taken(self) -> None:
        self.held += 1

    def ended(self) -> None:
        self.held -= 1
        self._ended.set()


class SharedFetch(JobManager):
    """procrastinate's job manager, fetching only while the worker has room (Share):
    until then no job is taken, so the other workers take it."""

    def __init__(
        self, connector: BaseConnector, share: Share, stopping: Callable[[], bool]
    ) -> None:
        super().__init__(connector)
        self.share = share
        self.stopping = stopping

    async def fetch_job(self, queues: Iterable[str] | None, worker_id: int) -> jobs.Job | None:
        if not await self.share.room(self.stopping):
            return None
        job = await super().fetch_job(queues, worker_id)
        if job is not None:
            self.share.taken()
        return job


__all__ = ["Share", "SharedFetch"]
