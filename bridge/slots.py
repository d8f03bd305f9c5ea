"""Which of a worker's waiting jobs gets which free server slot.

One loop per worker process reads every server's state in one query and hands the free
slots to the process's waiting jobs, highest priority first; a slot this process frees
wakes it at once. (Each job polling on its own cost two queries a job every poll, and let
only the first waiter ask.)

Affinity: a job takes the free slot on the server that has the most of it loaded. A server
busy with other models is switched only when nothing waiting at the job's priority level or
above still wants those models; an idle server is anyone's, since it would otherwise idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from bridge import affinity, queue
from bridge.db import farm
from bridge.errors import TransientBackendError

log = logging.getLogger(__name__)

SLOT_POLL = (0.05, 0.15)  # seconds between looks at the servers while jobs wait (jittered)
WANTED_FOR = 1.0  # seconds the queue's wanted families are reused: demand moves slowly, and
# reading it scans the queue (it was most of PostgreSQL's CPU with three workers polling)


@dataclass(eq=False)
class Want:
    """A job of this process waiting for a slot."""

    run_id: int
    job_id: str
    worker_id: int
    signature: affinity.Signature
    priority: int  # the queue's, with aging: the order among waiters
    eligible: tuple[str, ...]
    prefer: str | None  # the server its prompt already went to (a take-over)
    lane: int | None  # its stream in the queue: the lane-th server is its own (queue.streams)
    deadline: float  # when no eligible server answered since: a transient error
    got: asyncio.Future[farm.Slot] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    ticket: int = 0

    @property
    def family(self) -> str:
        return affinity.family(self.signature)


def choose(
    want: Want,
    healthy: Iterable[str],
    states: Mapping[str, farm.ServerState],
    wanted: Mapping[str, int],
    *,
    use_affinity: bool,
) -> list[tuple[str, bool]]:
    """The servers to try for `want`, best first, each with whether it may be switched to
    the job's models while busy. With affinity, a server whose loaded models a job waiting
    at `want`'s priority level or above still wants is switched only when it would
    otherwise idle (claim_slot checks that, and the models, again as it claims)."""
    if want.prefer is not None and want.prefer in healthy:
        return [(want.prefer, True)]
    free = [n for n in healthy if n in want.eligible and states.get(n, _NONE).free > 0]
    if not use_affinity:
        return [(n, True) for n in random.sample(free, len(free))]
    level = want.priority // queue.LEVEL
    ok = []
    for name in free:
        state = states[name]
        other = wanted.get(affinity.family(state.signature))
        busy_switch = bool(state.signature) and (other is None or other // queue.LEVEL < level)
        if (
            busy_switch
            or state.free == state.slots
            or not affinity.switches(state.signature, want.signature)
        ):
            ok.append((name, busy_switch))

    names = sorted(states)
    own = names[want.lane % len(names)] if want.lane is not None and names else None

    def best(choice: tuple[str, bool]) -> tuple[bool, float, bool, int]:
        """The job's own stream's server unless it would switch it, then the most already
        loaded; among the rest a server that ran nothing yet before one with other models."""
        name = choice[0]
        state = states[name]
        fresh = not state.signature and state.free == state.slots
        mine = name == own and (fresh or not affinity.switches(state.signature, want.signature))
        overlap = affinity.overlap(state.signature, want.signature)
        return not mine, -overlap, not fresh, -state.free

    return sorted(ok, key=best)


_NONE = farm.ServerState({}, 0, 0)


class Farm(Protocol):
    """The shared slot rows and the servers, as the broker uses them."""

    async def states(self) -> dict[str, farm.ServerState]: ...
    async def wanted(self) -> dict[str, int]: ...
    async def claim(
        self, want: Want, order: list[str], may_switch: dict[str, dict[str, float]]
    ) -> farm.Slot | None: ...
    async def release(self, slot: farm.Slot, worker_id: int) -> None: ...
    async def outage(self) -> None: ...
    def healthy(self) -> list[str]: ...
    def grace(self) -> float: ...


class Slots:
    """The slot broker of one worker process."""

    def __init__(self, source: Farm, *, use_affinity: bool) -> None:
        self.farm = source
        self.use_affinity = use_affinity
        self.waiting: list[Want] = []
        self._tickets = itertools.count()
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._wanted: dict[str, int] = {}
        self._wanted_at = -WANTED_FOR

    async def claim(self, want: Want) -> farm.Slot:
        """A slot for `want` (with the signature its server had before)."""
        want.ticket = next(self._tickets)
        self.waiting.append(want)
        self.changed()
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._run(), name="bridge slots")
        try:
            return await asyncio.shield(want.got)
        finally:
            self.waiting.remove(want)
            if not want.got.done():
                want.got.cancel()

    def changed(self) -> None:
        """A slot was freed or a job started waiting: look again now."""
        self._wake.set()

    async def _run(self) -> None:
        while self.waiting:
            self._wake.clear()
            try:
                await self._round()
            except SQLAlchemyError as exc:
                log.warning("slot claims wait for the database: %s", exc)
                await self.farm.outage()
            except Exception:  # the loop must outlive a bad round, or every waiter hangs
                log.exception("slot claims failed; trying again")
            if not self.waiting:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), random.uniform(*SLOT_POLL))

    async def _queue_wants(self) -> dict[str, int]:
        now = asyncio.get_running_loop().time()
        if now - self._wanted_at >= WANTED_FOR:
            self._wanted, self._wanted_at = await self.farm.wanted(), now
        return self._wanted

    async def _round(self) -> None:
        """Hand this round's free slots to the waiters, highest priority first."""
        states = await self.farm.states()
        healthy = self.farm.healthy()
        if not any(states.get(n, _NONE).free for n in healthy) and all(
            w.prefer is None and any(n in w.eligible for n in healthy) for w in self.waiting
        ):
            return  # every slot is held: nothing to hand out (and no need to ask who wants)
        wanted = dict(await self._queue_wants()) if self.use_affinity else {}
        waiters = sorted(
            (w for w in self.waiting if not w.got.done()), key=lambda w: (-w.priority, w.ticket)
        )
        for w in waiters:
            wanted[w.family] = max(wanted.get(w.family, w.priority), w.priority)
        now = asyncio.get_running_loop().time()
        for w in waiters:
            up = [n for n in healthy if n in w.eligible]
            if up:
                w.deadline = now + self.farm.grace()
            elif now > w.deadline:  # as in one process: transient, retried, then failed
                w.got.set_exception(
                    TransientBackendError("no server is answering: " + ", ".join(w.eligible))
                )
                continue
            chosen = choose(w, up, states, wanted, use_affinity=self.use_affinity)
            if not chosen:
                continue
            order = [name for name, _ in chosen]
            switch = {name: states[name].signature for name, ok in chosen if ok and name in states}
            slot = await self.farm.claim(w, order, switch)
            if slot is None:  # others took them since the read
                for name in order:
                    states[name] = replace(states.get(name, _NONE), free=0)
                continue
            before = states.get(slot.server, _NONE)
            states[slot.server] = replace(before, free=before.free - 1, signature=w.signature)
            if w.got.done():  # its job was cancelled meanwhile
                await self.farm.release(slot, w.worker_id)
            else:
                w.got.set_result(slot)
