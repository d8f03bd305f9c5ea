"""Which of a worker's waiting jobs gets which free server slot.

One loop per worker process reads every server's state in one query and hands the free
slots to the process's waiting jobs, highest priority first, claiming them in one
transaction (at a run's start, one commit for all the jobs then waiting, not one per
slot). A worker that frees a slot offers it to its own waiting jobs first and, if none
takes it, announces it (a NOTIFY) to wake the other workers' loops; so does a claim that
loads other models into a server with a slot still free. A loop reads the state again
only when its answer may have changed: while every slot is held, when a slot is freed (a
job that starts waiting then has nothing to look for); while the free slots are none its
jobs may take, when one is freed or the servers' models change, or when the queue's
counts or an idle server's grace may change its choice. (It used to poll ten times a
second: each read is four round trips, and three workers' polls were most of what they
asked of PostgreSQL beyond one worker's.)

Affinity: a job takes the free slot on the server that has the most of it loaded. Ready
jobs are queued as one stream per server (queue.streams), each a stretch of jobs sharing
models, so a server that keeps to its own stream switches models only where its stretch
does. It serves another stream's jobs only once its own stream has nothing waiting (else
each theft delays its own stretch, and its next family starts late).

A server busy with other models is switched only when nothing waiting at the job's
priority level or above still wants those models. Any other switch (an idle server, or a
stream that ran out) is made only when it pays: the server's own stream has nothing
waiting, and the job's family has more jobs waiting than SWITCH_ROUNDS fills of the slots
of the servers that have its models. Fewer, and those servers finish them about as soon
as a switched one would have loaded the models (a load costs a few jobs' time); the
waiting counts are a second old, so a looser rule sends every idle server after the same
last few jobs. A server idle for IDLE_GRACE no longer waits for its own stream (whose jobs
may all need models it lacks).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from bridge import affinity, queue
from bridge.db import farm
from bridge.errors import TransientBackendError

log = logging.getLogger(__name__)

SLOT_POLL = (0.05, 0.15)  # seconds between looks at the servers while jobs wait (jittered)
SLOT_BACKSTOP = 1.0  # seconds between looks while every slot is held and a freed one wakes
# the broker (farm.SLOTS_FREED): leases that ran out free slots without a word
WANTED_FOR = 1.0  # seconds the queue's waiting counts are reused: demand moves slowly, and
# reading it scans the queue (it was most of PostgreSQL's CPU with three workers polling)
IDLE_GRACE = 3.0  # seconds an idle server keeps its models for its own stream's jobs
SWITCH_ROUNDS = 2  # a family's waiting jobs are worth another server's switch beyond this
# many fills of its loaded servers' slots


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


@dataclass(frozen=True)
class Demand:
    """The jobs waiting for a server, across every worker (the queue's counts, and this
    process's own waiters, which the counts may not show yet); built once a round."""

    families: dict[str, int] = field(default_factory=dict)  # family -> highest priority
    lanes: dict[int, dict[str, int]] = field(default_factory=dict)  # stream -> families'
    counts: dict[tuple[str, int], int] = field(default_factory=dict)  # (family, level) -> n

    @classmethod
    def of(cls, rows: Iterable[farm.Waiting], waiters: Iterable[Want] = ()) -> Demand:
        demand = cls()
        for row in rows:
            demand._add(row.family, row.lane, row.priority, row.count)
        mine: dict[tuple[str, int], int] = {}
        for w in waiters:
            key = (w.family, w.priority // queue.LEVEL)
            mine[key] = mine.get(key, 0) + 1
            demand._add(w.family, w.lane, w.priority, 0)
        for key, n in mine.items():
            demand.counts[key] = max(demand.counts.get(key, 0), n)
        return demand

    def _add(self, family: str, lane: int | None, priority: int, count: int) -> None:
        self.families[family] = max(self.families.get(family, priority), priority)
        if lane is not None:
            stream = self.lanes.setdefault(lane, {})
            stream[family] = max(stream.get(family, priority), priority)
        key = (family, priority // queue.LEVEL)
        self.counts[key] = self.counts.get(key, 0) + count

    def wants(self, family: str, level: int) -> bool:
        """Whether a job of `family` waits at priority `level` or above."""
        top = self.families.get(family)
        return top is not None and top // queue.LEVEL >= level

    def stream_waits(self, index: int, streams: int, level: int) -> bool:
        """Whether a job of the `index`-th server's stream waits at `level` or above."""
        return any(
            top // queue.LEVEL >= level
            for lane, families in self.lanes.items()
            if lane % streams == index
            for top in families.values()
        )

    def count(self, family: str, level: int) -> int:
        return sum(n for (f, lv), n in self.counts.items() if f == family and lv >= level)


def choose(
    want: Want,
    healthy: Iterable[str],
    states: Mapping[str, farm.ServerState],
    demand: Demand,
    *,
    use_affinity: bool,
    idle_long: Collection[str] = (),
) -> list[tuple[str, bool]]:
    """The servers to try for `want`, best first, each with whether it may be switched to
    the job's models while busy (farm.claim_slots checks that, and the models, again as it
    claims); `idle_long`: the servers idle for IDLE_GRACE."""
    if want.prefer is not None and want.prefer in healthy:
        return [(want.prefer, True)]
    free = [n for n in healthy if n in want.eligible and states.get(n, _NONE).free > 0]
    if not use_affinity:
        return [(n, True) for n in random.sample(free, len(free))]
    level = want.priority // queue.LEVEL
    names = sorted(states)
    own = names[want.lane % len(names)] if want.lane is not None and names else None
    up = [n for n in healthy if n in want.eligible and n in states]
    loaded = sum(
        states[n].slots
        for n in up
        if states[n].signature and not affinity.switches(states[n].signature, want.signature)
    )

    def free_for_it(name: str) -> bool:
        """Whether `name` may serve the job: its own stream's server, or one whose own
        stream has nothing waiting (work stealing: else each theft leaves the server's own
        stretch, and its next family, late) or that idled for IDLE_GRACE."""
        if want.lane is None or name == own or name in idle_long:
            return True
        return not demand.stream_waits(names.index(name), len(names), level)

    def pays(name: str) -> bool:
        """Whether switching `name` to the job's models is worth a model load."""
        if want.lane is None or name == own:
            return True
        return free_for_it(name) and demand.count(want.family, level) > SWITCH_ROUNDS * loaded

    ok = []
    for name in free:
        state = states[name]
        if state.signature and not affinity.switches(state.signature, want.signature):
            if free_for_it(name):
                ok.append((name, False))
            continue
        # a server that ran nothing yet loads the job's models too: into another stream's
        # server, that is a switch more when its own stretch starts
        held = bool(state.signature) and demand.wants(affinity.family(state.signature), level)
        if (not held or state.free == state.slots) and pays(name):
            ok.append((name, bool(state.signature) and not held))

    def best(choice: tuple[str, bool]) -> tuple[bool, bool, float, bool, int]:
        """An idle server with the job's models (it runs the job now, where its own
        stream's server would queue it behind another: a run's last jobs); then the job's
        own stream's server unless it would switch it, then the most already loaded; among
        the rest a server that ran nothing yet before one with other models."""
        name = choice[0]
        state = states[name]
        idle = state.free == state.slots
        fresh = not state.signature and idle
        same = not affinity.switches(state.signature, want.signature)
        mine = name == own and (fresh or same)
        overlap = affinity.overlap(state.signature, want.signature)
        return not (idle and same), not mine, -overlap, not fresh, -state.free

    return sorted(ok, key=best)


_NONE = farm.ServerState({}, 0, 0)


class Farm(Protocol):
    """The shared slot rows and the servers, as the broker uses them."""

    async def states(self) -> dict[str, farm.ServerState]: ...
    async def waiting(self) -> list[farm.Waiting]: ...
    async def claim(self, claims: Sequence[farm.SlotClaim]) -> list[farm.Slot | None]:
        """Each claim's slot or None, in one transaction, in order (farm.claim_slots)."""
        ...

    async def release(self, slot: farm.Slot, worker_id: int) -> bool: ...
    async def announce(self, servers: Sequence[str]) -> None:
        """Wake the other workers' brokers for each of `servers`, in one transaction."""
        ...

    async def outage(self) -> None: ...
    def woken(self) -> bool:
        """Whether a slot another process announces calls the broker's changed() now."""
        ...

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
        self._waiting: list[farm.Waiting] = []
        self._waiting_at = -WANTED_FOR
        self._idle_since: dict[str, float] = {}
        self._freed: set[str] = set()  # servers with a slot we freed and nobody was told of
        self._full = False  # the last look found every slot held, and none was freed since

    async def claim(self, want: Want) -> farm.Slot:
        """A slot for `want` (with the signature its server had before)."""
        want.ticket = next(self._tickets)
        self.waiting.append(want)
        if not self._full or want.prefer is not None:
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
        self._full = False
        self._wake.set()

    async def give_back(self, slot: farm.Slot, worker_id: int) -> None:
        """Free `slot`. This process's waiters may take it first; the other workers are
        told only if none does, else every worker would race for every freed slot."""
        if not await self.farm.release(slot, worker_id):
            return
        if self.waiting and self._loop is not None and not self._loop.done():
            self._freed.add(slot.server)
            self.changed()
        else:
            await self.farm.announce([slot.server])

    async def _run(self) -> None:
        try:
            while self.waiting:
                self._wake.clear()
                freed, self._freed = self._freed, set()
                quiet: float | None = None
                try:
                    quiet = await self._round(freed)
                except SQLAlchemyError as exc:
                    log.warning("slot claims wait for the database: %s", exc)
                    await self.farm.outage()
                except Exception:  # the loop must outlive a bad round, or every waiter hangs
                    log.exception("slot claims failed; trying again")
                finally:
                    await self._announce(freed)
                if not self.waiting:
                    return
                # a freed slot (or another change announced) wakes us; the backstop sees
                # the rest (a lease run out, a server back up)
                if quiet is not None and self.farm.woken():
                    pause = quiet
                else:
                    pause = random.uniform(*SLOT_POLL)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):  # not wait_for: see ComfyUIBackend._wait
                        await self._wake.wait()
        finally:
            await self._announce(self._freed)

    async def _announce(self, servers: set[str]) -> None:
        """Tell the other workers of the slots we freed and did not take again."""
        if servers:
            told = sorted(servers)
            servers.clear()
            await self.farm.announce(told)

    async def _queue_waiting(self) -> list[farm.Waiting]:
        now = asyncio.get_running_loop().time()
        if now - self._waiting_at >= WANTED_FOR:
            self._waiting, self._waiting_at = await self.farm.waiting(), now
        return self._waiting

    def _idle_long(self, states: Mapping[str, farm.ServerState], now: float) -> set[str]:
        for name, state in states.items():
            if state.free == state.slots:
                self._idle_since.setdefault(name, now)
            else:
                self._idle_since.pop(name, None)
        return {n for n, since in self._idle_since.items() if now - since >= IDLE_GRACE}

    async def _round(self, freed: set[str]) -> float | None:
        """Hand this round's free slots to the waiters, highest priority first, claimed
        in one transaction. Returns how long its answer stands unless something announced
        changes it, or None to look again soon (a slot was taken, or lost to another
        worker). `freed`: the servers the other workers are to be told of (slots freed
        here that no waiter here took, and servers whose models a claim here changed
        while a slot stays free)."""
        states = await self.farm.states()
        healthy = self.farm.healthy()
        now = asyncio.get_running_loop().time()
        idle_long = self._idle_long(states, now)
        if self._all_held(states, healthy):
            return SLOT_BACKSTOP  # nothing to hand out (nor to ask who wants)
        waiters = sorted(
            (w for w in self.waiting if not w.got.done()), key=lambda w: (-w.priority, w.ticket)
        )
        rows = await self._queue_waiting() if self.use_affinity else []
        picks = self._plan(waiters, healthy, states, Demand.of(rows, waiters), now, idle_long)
        if picks:
            got = await self.farm.claim([claim for _, claim in picks])
            for (w, claim), slot in zip(picks, got, strict=True):
                await self._settle(w, claim, slot, states, freed)
        if self._all_held(states, healthy):  # as the claims left them
            return SLOT_BACKSTOP
        return None if picks else self._unchanged_for(now, idle_long)

    def _plan(
        self,
        waiters: list[Want],
        healthy: list[str],
        states: Mapping[str, farm.ServerState],
        demand: Demand,
        now: float,
        idle_long: Collection[str],
    ) -> list[tuple[Want, farm.SlotClaim]]:
        """Each waiter's claim in turn, as if the ones before it got their first choice
        (the claims check the servers again, in the same order): the servers to try, best
        first, and the busy ones it may switch, with the signature each is expected to
        have by then."""
        expect = dict(states)
        picks = []
        for w in waiters:
            up = [n for n in healthy if n in w.eligible]
            if up:
                w.deadline = now + self.farm.grace()
            elif now > w.deadline:  # as in one process: transient, retried, then failed
                w.got.set_exception(
                    TransientBackendError("no server is answering: " + ", ".join(w.eligible))
                )
                continue
            chosen = choose(
                w, up, expect, demand, use_affinity=self.use_affinity, idle_long=idle_long
            )
            if not chosen:
                continue
            switch = {name: expect[name].signature for name, ok in chosen if ok and name in expect}
            order = tuple(name for name, _ in chosen)
            picks.append(
                (w, farm.SlotClaim(order, w.worker_id, w.run_id, w.job_id, w.signature, switch))
            )
            first = expect.get(chosen[0][0], _NONE)
            expect[chosen[0][0]] = replace(first, free=first.free - 1, signature=w.signature)
        return picks

    async def _settle(
        self,
        w: Want,
        claim: farm.SlotClaim,
        slot: farm.Slot | None,
        states: dict[str, farm.ServerState],
        freed: set[str],
    ) -> None:
        """Give a claimed slot to its waiter, and mark in `states` what the claim found."""
        if slot is None:  # others took them since the read
            for name in claim.servers:
                states[name] = replace(states.get(name, _NONE), free=0)
            return
        before = states.get(slot.server, _NONE)
        states[slot.server] = replace(before, free=before.free - 1, signature=w.signature)
        freed.discard(slot.server)
        if before.free > 1 and affinity.switches(before.signature, w.signature):
            freed.add(slot.server)  # other workers' jobs of these models may now take it
        if w.got.done():  # its job was cancelled meanwhile
            if await self.farm.release(slot, w.worker_id):
                freed.add(slot.server)
        else:
            w.got.set_result(slot)

    def _all_held(self, states: Mapping[str, farm.ServerState], healthy: list[str]) -> bool:
        """Whether every slot the waiters could take is held, so that only a freed one
        (announced) changes that; a job that starts waiting meanwhile has nothing to look
        for (a take-over's has: its own slot)."""
        held = not any(states.get(n, _NONE).free for n in healthy) and all(
            w.prefer is None and any(n in w.eligible for n in healthy)
            for w in self.waiting
            if not w.got.done()
        )
        self._full = held and not self._wake.is_set()  # woken since the read: look again
        return held

    def _unchanged_for(self, now: float, idle_long: Collection[str]) -> float:
        """How long a round that handed nothing out stands, unless a slot is freed or a
        server's models change (both announced): until the queue's waiting counts are read
        again or an idle server's grace ends, either of which may change what may switch."""
        until = [SLOT_BACKSTOP]
        if self.use_affinity:
            until.append(self._waiting_at + WANTED_FOR - now)
            until += [
                t + IDLE_GRACE - now for n, t in self._idle_since.items() if n not in idle_long
            ]
        return max(SLOT_POLL[0], min(until))
