"""Several backends as one: jobs go to the least busy healthy server with a free slot.

A slot is taken from submission until the job's outputs are safe. So that a server's queue
never runs dry while a finished prompt downloads, a server whose every leased prompt has
finished executing takes one more (the scheduler bounds how many are downloading).

When every slot is taken, jobs wait in one queue across runs: highest run priority first
(bridge.priority), ties first-come, so an urgent run started behind a long one gets the
next freed slot.

A server that stops answering is marked unhealthy by its own failed request; its jobs fail
as transient, the scheduler retries them, and the retry is leased to another server. A
background probe brings a server back when /system_stats answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from bridge.backends.base import Backend
from bridge.errors import TransientBackendError

log = logging.getLogger(__name__)


class ServerPool:
    def __init__(
        self, backends: Sequence[Backend], *, health_interval: float = 2.0, grace: float = 30.0
    ) -> None:
        if not backends:
            raise ValueError("a pool needs at least one backend")
        self.backends = list(backends)
        self.health_interval = health_interval
        self.grace = grace  # how long a lease waits for a server to come back
        self.in_flight = {b.name: 0 for b in self.backends}
        self.executing = {b.name: 0 for b in self.backends}  # leased, not yet rendered
        self._unrendered: dict[asyncio.Task[Any], str] = {}  # lease holder -> its server
        self._waking: set[asyncio.Future[None]] = set()
        self._changed = asyncio.Condition()
        self._waiting: set[tuple[int, int]] = set()  # (-priority, arrival) of each lease
        self._tickets = itertools.count()
        self._probe: asyncio.Task[None] | None = None

    @property
    def slots(self) -> int:
        return sum(b.slots for b in self.backends)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.backends]

    async def start(self) -> None:
        """Start every backend; fine while at least one answers, else TransientBackendError
        with each one's problem (naming its server)."""
        results = await asyncio.gather(*(b.start() for b in self.backends), return_exceptions=True)
        problems = []
        for backend, result in zip(self.backends, results, strict=True):
            if isinstance(result, BaseException):
                backend.healthy = False
                said = str(result)
                problems.append(said if backend.name in said else f"{backend.name}: {said}")
                log.info("%s is not answering: %s", backend.name, result)
            else:
                backend.healthy = True
        if len(problems) == len(self.backends):
            raise TransientBackendError("; ".join(problems))
        self._probe = asyncio.create_task(self._watch_health(), name="pool health")

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await asyncio.gather(*(b.close() for b in self.backends), return_exceptions=True)

    def healthy(self) -> list[Backend]:
        return [b for b in self.backends if b.healthy]

    @contextlib.asynccontextmanager
    async def lease(self, prefer: str | None = None, priority: int = 0) -> AsyncIterator[Backend]:
        """A healthy backend with a free slot, `prefer` first; waits while all are busy,
        and for a while when none answers (a server restart takes seconds). Waiters take
        freed slots highest `priority` first, ties first-come."""
        if not self.healthy():
            await self._revive()
        ticket = (-priority, next(self._tickets))
        async with self._changed:
            self._waiting.add(ticket)
            try:
                while True:
                    healthy = self.healthy()
                    if not healthy:
                        raise TransientBackendError(
                            "no server is answering: " + ", ".join(self.names)
                        )
                    room = {b.name: self._room(b) for b in healthy}
                    ahead = sum(1 for other in self._waiting if other < ticket)
                    if ahead < sum(room.values()):
                        free = [b for b in healthy if room[b.name]]
                        chosen = next((b for b in free if b.name == prefer), None) or min(
                            free,
                            key=lambda b: (
                                self.in_flight[b.name] / b.slots,
                                self.in_flight[b.name],
                            ),
                        )
                        self.in_flight[chosen.name] += 1
                        self.executing[chosen.name] += 1
                        break
                    await self._changed.wait()
            finally:
                self._waiting.discard(ticket)
                self._changed.notify_all()  # the next in line may now be first
        task = asyncio.current_task()
        assert task is not None
        self._unrendered[task] = chosen.name
        try:
            yield chosen
        finally:
            async with self._changed:
                self.in_flight[chosen.name] -= 1
                if self._unrendered.pop(task, None) is not None:
                    self.executing[chosen.name] -= 1
                self._changed.notify_all()

    def _room(self, backend: Backend) -> int:
        """Prompts `backend` takes now: its free slots, or one more when every prompt it
        holds has finished executing (its outputs are downloading; its queue must not run dry)."""
        free = backend.slots - self.in_flight[backend.name]
        if free > 0:
            return free
        return 0 if self.executing[backend.name] else 1

    def rendered(self) -> None:
        """The calling lease holder's prompt has finished executing; its outputs are still
        downloading, so it keeps its slot, but its server may be sent the next prompt."""
        task = asyncio.current_task()
        name = self._unrendered.pop(task, None) if task is not None else None
        if name is None:
            return
        self.executing[name] -= 1
        if not self.executing[name]:
            waking = asyncio.ensure_future(self._wake())
            self._waking.add(waking)
            waking.add_done_callback(self._waking.discard)

    async def _wake(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _revive(self) -> None:
        """Probe the servers until one answers or the grace period ends (a restart)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        while not self.healthy() and loop.time() < deadline:
            await self._probe_down()
            if not self.healthy():
                await asyncio.sleep(min(0.5, self.health_interval))

    async def _probe_down(self) -> None:
        for backend in self.backends:
            if backend.healthy:
                continue
            try:
                await backend.start()
            except Exception:  # still down
                continue
            log.warning("%s is answering again", backend.name)
            backend.healthy = True
            async with self._changed:
                self._changed.notify_all()

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            await self._probe_down()
