"""Which waiting job gets which server slot: the broker's choice (no database) and the
claim's own check under its lock (PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from bridge import affinity, queue, slots
from bridge.db import farm
from bridge.db.store import Store

A = {"ckpt-a": 10.0, "text-1": 1.0}
A2 = {"ckpt-a": 10.0, "text-2": 1.0}  # the same models, another prompt
B = {"ckpt-b": 10.0, "text-3": 1.0}
C = {"ckpt-c": 10.0, "text-4": 1.0}
NORMAL = queue.queue_priority(0, 10)
HIGH = queue.queue_priority(10, 10)


def want(
    signature: dict[str, float],
    priority: int = NORMAL,
    prefer: str | None = None,
    lane: int | None = None,
):
    return slots.Want(
        run_id=1,
        job_id="j",
        worker_id=1,
        signature=signature,
        priority=priority,
        eligible=("s1", "s2", "s3"),
        prefer=prefer,
        lane=lane,
        deadline=0.0,
        got=None,  # type: ignore[arg-type]  # the broker's; choose() never reads it
    )


def state(signature: dict[str, float], free: int, slots_: int = 2) -> farm.ServerState:
    return farm.ServerState(signature, free, slots_)


def chosen(
    w: slots.Want,
    states: dict,
    wanted: dict,
    *,
    use_affinity: bool = True,
    demand: slots.Demand | None = None,
    idle_long: tuple[str, ...] = (),
) -> list:
    """`wanted`: family -> the highest priority waiting (demand: the whole picture)."""
    demand = demand or slots.Demand(families=wanted)
    return slots.choose(
        w, list(states), states, demand, use_affinity=use_affinity, idle_long=idle_long
    )


def test_a_job_queues_behind_its_own_models_before_taking_an_idle_server() -> None:
    states = {"s2": state(A, 1), "s3": state(B, 2)}
    order = [name for name, _ in chosen(want(A2), states, {})]
    assert order == ["s2", "s3"]  # same checkpoint, other prompt: no switch


def test_a_server_that_ran_nothing_yet_comes_before_one_with_other_models() -> None:
    states = {"s1": state(B, 2), "s2": state({}, 2)}
    assert [name for name, _ in chosen(want(A), states, {})] == ["s2", "s1"]


def test_a_job_goes_to_its_own_stream_s_server_unless_that_would_switch_it() -> None:
    states = {"s1": state(A, 1), "s2": state({}, 2), "s3": state(B, 1)}
    assert chosen(want(A2, lane=1), states, {})[0][0] == "s2"  # its own, fresh
    assert chosen(want(A2, lane=0), states, {})[0][0] == "s1"  # its own, same models
    assert chosen(want(A2, lane=2), states, {})[0][0] == "s1"  # its own has other models


def test_a_busy_server_keeps_its_models_while_a_job_waits_for_them() -> None:
    states = {"s1": state(A, 1), "s2": state(A, 0)}
    wanted = {queue_family(A): NORMAL}
    assert chosen(want(B), states, wanted) == []  # s1 would be switched while busy


def test_an_idle_server_is_switched_since_it_would_otherwise_idle() -> None:
    states = {"s1": state(A, 2)}
    wanted = {queue_family(A): NORMAL}
    assert chosen(want(B), states, wanted) == [("s1", False)]  # only while still idle


def test_a_busy_server_is_switched_once_nothing_waits_for_its_models() -> None:
    states = {"s1": state(A, 1)}
    assert chosen(want(B), states, {}) == [("s1", True)]


def test_a_higher_priority_job_switches_a_busy_server() -> None:
    states = {"s1": state(A, 1)}
    wanted = {queue_family(A): NORMAL}
    assert chosen(want(B, priority=HIGH), states, wanted) == [("s1", True)]


def test_at_the_start_each_stream_takes_its_own_server() -> None:
    states = {"s1": state({}, 2), "s2": state({}, 2), "s3": state({}, 2)}
    assert chosen(want(B, lane=4), states, {})[0] == ("s2", False)  # 4 % 3 servers


def test_full_servers_and_other_servers_are_not_offered() -> None:
    states = {"s1": state(A, 0), "s2": state(A, 1), "s4": state(A, 2)}  # s4: not eligible
    assert [n for n, _ in chosen(want(A), states, {})] == ["s2"]


def test_a_taken_over_job_goes_back_to_its_prompt_s_server() -> None:
    states = {"s1": state(A, 2), "s2": state(B, 0)}
    assert chosen(want(A, prefer="s2"), states, {}) == [("s2", True)]


def test_without_affinity_any_free_server_will_do() -> None:
    states = {"s1": state(A, 1), "s2": state(A, 0), "s3": state({}, 2)}
    got = chosen(want(B), states, {queue_family(A): HIGH}, use_affinity=False)
    assert sorted(got) == [("s1", True), ("s3", True)]


def waiting(signature: dict, lane: int | None, count: int = 1, priority: int = NORMAL):
    return farm.Waiting(affinity.family(signature), lane, priority, count)


def test_an_idle_server_keeps_its_models_while_its_own_stream_has_jobs_waiting() -> None:
    states = {"s1": state(A, 2), "s2": state(B, 0), "s3": state({}, 0)}
    demand = slots.Demand.of([waiting(A, lane=0), waiting(B, lane=1, count=20)])
    assert chosen(want(B, lane=1), states, {}, demand=demand) == []
    # its own stream's jobs come first: they are its to switch
    assert chosen(want(C, lane=0), states, {}, demand=demand) == [("s1", False)]


def test_a_server_whose_stream_ran_out_switches_only_for_enough_waiting_jobs() -> None:
    states = {"s1": state(A, 2), "s2": state(B, 0), "s3": state(B, 1)}
    few = slots.Demand.of([waiting(B, lane=1, count=8)])  # s2 and s3 hold 4 of B at once
    assert chosen(want(B, lane=1), states, {}, demand=few) == [("s3", False)]
    many = slots.Demand.of([waiting(B, lane=1, count=9)])
    assert chosen(want(B, lane=1), states, {}, demand=many) == [("s3", False), ("s1", True)]


def test_a_server_serves_another_stream_only_once_its_own_has_nothing_waiting() -> None:
    states = {"s1": state(A, 2), "s2": state(A, 1)}
    ahead = slots.Demand.of([waiting(A, lane=0), waiting(A, lane=1)])  # s2's own stream
    assert chosen(want(A2, lane=0), states, {}, demand=ahead) == [("s1", False)]
    done = slots.Demand.of([waiting(A, lane=0)])
    assert chosen(want(A2, lane=0), states, {}, demand=done) == [("s1", False), ("s2", False)]
    late = chosen(want(A2, lane=0), states, {}, demand=ahead, idle_long=("s2",))
    assert late == [("s1", False), ("s2", False)]


def test_an_idle_server_with_the_job_s_models_runs_it_before_its_own_queues_it() -> None:
    """At a run's end: its own stream's server would queue it behind a running job."""
    states = {"s1": state(A, 1), "s2": state(A, 2)}
    demand = slots.Demand.of([waiting(A, lane=0)])  # s2's own stream has nothing waiting
    assert chosen(want(A2, lane=0), states, {}, demand=demand) == [("s2", False), ("s1", False)]
    ahead = slots.Demand.of([waiting(A, lane=0), waiting(A, lane=1)])
    assert chosen(want(A2, lane=0), states, {}, demand=ahead) == [("s1", False)]


def test_a_higher_level_job_is_not_held_back_by_a_lower_stream() -> None:
    states = {"s1": state(A, 2), "s2": state(B, 0)}
    demand = slots.Demand.of([waiting(A, lane=0), waiting(B, lane=1, count=5, priority=HIGH)])
    assert chosen(want(B, lane=1, priority=HIGH), states, {}, demand=demand) == [("s1", True)]


def test_a_server_that_ran_nothing_yet_waits_for_its_own_stream() -> None:
    states = {"s1": state(B, 0), "s2": state({}, 2)}
    demand = slots.Demand.of([waiting(B, lane=0, count=9), waiting(A, lane=1)])
    assert chosen(want(B, lane=0), states, {}, demand=demand) == []
    assert chosen(want(A, lane=1), states, {}, demand=demand) == [("s2", False)]


def test_a_server_idle_for_the_grace_no_longer_waits_for_its_own_stream() -> None:
    states = {"s1": state(A, 2), "s2": state(B, 0)}
    demand = slots.Demand.of([waiting(A, lane=0), waiting(B, lane=1, count=5)])
    assert chosen(want(B, lane=1), states, {}, demand=demand) == []
    got = chosen(want(B, lane=1), states, {}, demand=demand, idle_long=("s1",))
    assert got == [("s1", False)]
    few = slots.Demand.of([waiting(A, lane=0), waiting(B, lane=1, count=4)])
    assert chosen(want(B, lane=1), states, {}, demand=few, idle_long=("s1",)) == []


def test_demand_counts_the_jobs_in_hand_the_queue_does_not_show_yet() -> None:
    mine = [want(B, lane=1), want(B, lane=1)]
    demand = slots.Demand.of([waiting(B, lane=1, count=1)], mine)
    assert demand.count(queue_family(B), 0) == 2
    assert demand.stream_waits(1, 3, 0)
    assert not demand.stream_waits(0, 3, 0)
    assert demand.wants(queue_family(B), 0)
    assert not demand.wants(queue_family(B), 10)


def queue_family(signature: dict[str, float]) -> str:
    return affinity.family(signature)


# -- the claim's check, on PostgreSQL ---------------------------------------------------------


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    store = Store(pg_url)
    asyncio.run(queue.ensure_schema(queue.app_for(pg_url), store.engine))
    farm.ensure_slots(store.engine, {"s1": 2, "s2": 2})
    yield store.engine
    store.close()


def live_worker(engine: Engine) -> int:
    with engine.begin() as conn:
        return int(
            conn.execute(
                text("INSERT INTO procrastinate_workers DEFAULT VALUES RETURNING id")
            ).scalar_one()
        )


def claim(
    engine: Engine,
    worker: int,
    job: str,
    signature: dict,
    guard: bool = True,
    may_switch: dict | None = None,
) -> farm.Slot | None:
    (slot,) = farm.claim_slots(
        engine,
        [farm.SlotClaim(("s1",), worker, 1, job, signature, may_switch or {})],
        lease=30,
        guard=guard,
    )
    return slot


def test_a_claim_does_not_switch_a_server_busy_with_other_models(engine: Engine) -> None:
    me = live_worker(engine)
    first = claim(engine, me, "a1", A)
    assert first is not None
    assert first.loaded == {}
    assert claim(engine, me, "b1", B) is None  # busy with A: not switched
    second = claim(engine, me, "a2", A2)  # the same models: queued behind
    assert second is not None
    assert second.loaded == A
    farm.release_slot(engine, first, me)
    farm.release_slot(engine, second, me)
    third = claim(engine, me, "b1", B)  # idle again: switched
    assert third is not None
    assert third.loaded == A2


def test_a_claim_switches_a_busy_server_only_as_the_broker_last_saw_it(engine: Engine) -> None:
    me = live_worker(engine)
    assert claim(engine, me, "a1", A) is not None
    stale = {"s1": B}  # the broker read B; A is loaded now
    assert claim(engine, me, "c1", {"ckpt-c": 10.0}, may_switch=stale) is None
    seen = {"s1": A}
    assert claim(engine, me, "c1", {"ckpt-c": 10.0}, may_switch=seen) is not None


@pytest.mark.parametrize("guard", [True, False])
def test_a_claim_counts_the_server_s_job_and_a_switch_when_its_models_differ(
    engine: Engine, guard: bool
) -> None:
    """Counted in the claim's own transaction, with or without affinity routing."""
    me = live_worker(engine)
    counts = []
    for job, signature in (("a1", A), ("a2", A2), ("b1", B)):
        slot = claim(engine, me, job, signature, guard=guard)
        assert slot is not None
        farm.release_slot(engine, slot, me)
        counts.append(farm.server_counts(engine)["s1"])
    assert counts == [(1, 1), (2, 1), (3, 2)]  # (jobs, switches): A2 loads nothing new
    assert farm.signatures(engine)["s1"] == B


def test_claims_in_one_transaction_see_the_servers_as_the_earlier_ones_left_them(
    engine: Engine,
) -> None:
    me = live_worker(engine)
    batch = [
        farm.SlotClaim(("s1",), me, 1, "a1", A),
        farm.SlotClaim(("s1",), me, 1, "b1", B),  # s1 is busy with A by now: not switched
        farm.SlotClaim(("s1", "s2"), me, 1, "b2", B),
        farm.SlotClaim(("s1",), me, 1, "a2", A2),  # A's models: queued behind a1
    ]
    got = farm.claim_slots(engine, batch, lease=30, guard=True)
    assert [(s.server, s.loaded) if s else None for s in got] == [
        ("s1", {}),
        None,
        ("s2", {}),
        ("s1", A),
    ]
    assert farm.server_counts(engine) == {"s1": (2, 1), "s2": (1, 1)}


def test_a_claim_that_names_no_server_gets_none_in_its_place(engine: Engine) -> None:
    me = live_worker(engine)
    batch = [
        farm.SlotClaim((), me, 1, "a1", A),
        farm.SlotClaim(("s2",), me, 1, "b1", B),
        farm.SlotClaim((), me, 1, "a2", A),
    ]
    got = farm.claim_slots(engine, batch, lease=30, guard=True)
    assert [(s.server, s.loaded) if s else None for s in got] == [None, ("s2", {}), None]


def test_a_claim_the_database_refuses_raises_what_the_broker_waits_out(engine: Engine) -> None:
    """The broker waits for the database on SQLAlchemy's errors; the claims go out on the
    driver's own cursor (a pipeline), whose errors must reach it as the same kind."""
    me = live_worker(engine)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE server_slots RENAME TO server_slots_gone"))
    with pytest.raises(SQLAlchemyError, match="server_slots"):
        claim(engine, me, "a1", A)


@pytest.mark.parametrize("guard", [True, False])
def test_claims_that_name_the_same_servers_in_opposite_orders_never_deadlock(
    engine: Engine, guard: bool
) -> None:
    """Two workers' batches lock the servers they name in one order, whatever order their
    claims come in (else each can hold one server's row and wait for the other's)."""
    from concurrent.futures import ThreadPoolExecutor

    me = live_worker(engine)

    def batches(servers: tuple[str, ...], job: str) -> None:
        for n in range(40):
            claims = [farm.SlotClaim((name,), me, 1, f"{job}{n}-{name}", A) for name in servers]
            for slot in farm.claim_slots(engine, claims, lease=30, guard=guard):
                if slot is not None:
                    farm.release_slot(engine, slot, me)

    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(batches, ("s1", "s2"), "x"), pool.submit(batches, ("s2", "s1"), "y")]
        for run in runs:
            run.result(timeout=60)  # a deadlock is PostgreSQL's error here, after 1 s


def queued(engine: Engine, family: str, lane: int | None, priority: int) -> None:
    args = {"run_id": 1, "job_id": f"j{priority}{lane}", "family": family, "lane": lane}
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO procrastinate_jobs (queue_name, task_name, priority, args) "
                "VALUES ('default', :task, :p, CAST(:args AS jsonb))"
            ),
            {"task": queue.TASK, "p": priority, "args": json.dumps(args)},
        )


def test_the_queue_s_waiting_jobs_by_family_stream_and_level(engine: Engine) -> None:
    queued(engine, "fa", 0, NORMAL)
    queued(engine, "fa", 0, NORMAL - 1)
    queued(engine, "fa", 0, HIGH)
    queued(engine, "fb", None, NORMAL)
    got = farm.waiting(engine, queue.TASK, queue.LEVEL)
    assert sorted(got, key=lambda w: (w.priority, w.family)) == [
        farm.Waiting("fa", 0, NORMAL, 2),
        farm.Waiting("fb", None, NORMAL, 1),
        farm.Waiting("fa", 0, HIGH, 1),
    ]
    demand = slots.Demand.of(got)
    assert demand.count("fa", 0) == 3
    assert demand.count("fa", 10) == 1
    assert demand.stream_waits(0, 2, 10)


def test_freed_slots_are_announced_to_listening_workers_when_asked(
    engine: Engine, pg_url: str
) -> None:
    """A release says nothing (the releasing broker may take the slot again itself);
    announce_freed, and a worker leaving, wake every listening worker."""
    import psycopg

    me = live_worker(engine)
    with psycopg.connect(queue.conninfo(pg_url), autocommit=True) as listener:
        listener.execute(f"LISTEN {farm.SLOTS_FREED}")
        slot = claim(engine, me, "a1", A)
        assert slot is not None
        assert farm.release_slot(engine, slot, me)
        assert not farm.release_slot(engine, slot, me)  # no longer held
        assert list(listener.notifies(timeout=0.2)) == []
        farm.announce_freed(engine, ["s1", "s2"])
        heard = list(listener.notifies(timeout=2.0, stop_after=2))
        assert [(n.channel, n.payload) for n in heard] == [
            (farm.SLOTS_FREED, "s1"),
            (farm.SLOTS_FREED, "s2"),
        ]
        farm.unregister_worker(engine, me)
        heard = list(listener.notifies(timeout=2.0, stop_after=1))
        assert [(n.channel, n.payload) for n in heard] == [(farm.SLOTS_FREED, "")]


# -- the broker's loop (no database) ----------------------------------------------------------


class HeldFarm:
    """One server with two slots, `free` of them free at first and the models of
    `signature` loaded; counts the reads and what is announced."""

    def __init__(self, woken: bool, free: int = 0, signature: dict[str, float] = A) -> None:
        self._woken = woken
        self.reads = 0
        self.free_slots = free
        self.signature = signature
        self.announced: list[str] = []
        self.announcements = 0  # transactions
        self.claims: list[int] = []  # the claims in each transaction

    async def states(self) -> dict[str, farm.ServerState]:
        self.reads += 1
        return {"s1": state(self.signature, self.free_slots)}

    async def waiting(self) -> list[farm.Waiting]:
        return []

    async def claim(self, claims: list[farm.SlotClaim]) -> list[farm.Slot | None]:
        self.claims.append(len(claims))
        got: list[farm.Slot | None] = []
        for n, _ in enumerate(claims):
            got.append(farm.Slot("s1", n, {}) if self.free_slots > 0 else None)
            self.free_slots -= got[-1] is not None
        return got

    async def release(self, slot: farm.Slot, worker_id: int) -> bool:
        self.free_slots += 1
        return True

    async def announce(self, servers: Sequence[str]) -> None:
        self.announced.extend(servers)
        self.announcements += 1

    async def outage(self) -> None:
        pass

    def woken(self) -> bool:
        return self._woken

    def healthy(self) -> list[str]:
        return ["s1"]

    def grace(self) -> float:
        return 60.0


def waiter() -> slots.Want:
    w = want(A)
    w.got = asyncio.get_running_loop().create_future()
    w.deadline = asyncio.get_running_loop().time() + 60
    return w


@pytest.mark.parametrize("woken", [True, False])
def test_while_every_slot_is_held_the_broker_waits_for_one_to_be_freed(woken: bool) -> None:
    """Told of every freed slot, it reads the slots again only when one is freed (or after
    the backstop); not told, it keeps looking."""

    async def scenario() -> tuple[int, farm.Slot]:
        source = HeldFarm(woken)
        broker = slots.Slots(source, use_affinity=True)
        claimed = asyncio.create_task(broker.claim(waiter()))
        await asyncio.sleep(3 * slots.SLOT_POLL[1])
        reads = source.reads
        source.free_slots = 1  # another worker freed one: it says so
        broker.changed()
        slot = await asyncio.wait_for(claimed, 1.0)
        return reads, slot

    reads, slot = asyncio.run(scenario())
    assert slot.server == "s1"
    assert 3 * slots.SLOT_POLL[1] < slots.SLOT_BACKSTOP
    if woken:
        assert reads == 1
    else:
        assert reads >= 3


def test_a_slot_given_back_goes_to_the_process_s_own_waiter_before_others_hear_of_it() -> None:
    async def scenario() -> list[str]:
        source = HeldFarm(woken=True)
        broker = slots.Slots(source, use_affinity=True)
        claimed = asyncio.create_task(broker.claim(waiter()))
        await asyncio.sleep(slots.SLOT_POLL[1])
        await broker.give_back(farm.Slot("s1", 1, {}), worker_id=1)
        assert (await asyncio.wait_for(claimed, 1.0)).server == "s1"
        assert source.announced == []  # taken here: nobody else had to look
        await broker.give_back(farm.Slot("s1", 0, {}), worker_id=1)  # nobody here waits
        return source.announced

    assert asyncio.run(scenario()) == ["s1"]


def test_a_slot_given_back_that_no_waiter_here_may_take_is_announced() -> None:
    async def scenario() -> list[str]:
        source = HeldFarm(woken=True)
        broker = slots.Slots(source, use_affinity=True)
        elsewhere = waiter()
        elsewhere.eligible = ("s2",)  # a server that is not up
        claimed = asyncio.create_task(broker.claim(elsewhere))
        await asyncio.sleep(slots.SLOT_POLL[1])
        await broker.give_back(farm.Slot("s1", 1, {}), worker_id=1)
        for _ in range(50):
            if source.announced:
                break
            await asyncio.sleep(0.01)
        claimed.cancel()
        return source.announced

    assert asyncio.run(scenario()) == ["s1"]


def test_a_job_that_starts_waiting_while_every_slot_is_held_reads_nothing() -> None:
    """It has nothing to look for until a slot is freed, and then it is served in turn."""

    async def scenario() -> tuple[int, str]:
        source = HeldFarm(woken=True)
        broker = slots.Slots(source, use_affinity=True)
        first, second = waiter(), waiter()
        first.job_id, second.job_id = "first", "second"
        claims = [asyncio.create_task(broker.claim(first))]
        await asyncio.sleep(slots.SLOT_POLL[1])
        claims.append(asyncio.create_task(broker.claim(second)))
        await asyncio.sleep(3 * slots.SLOT_POLL[1])
        reads = source.reads
        source.free_slots = 1
        broker.changed()
        done, _ = await asyncio.wait(claims, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
        for claim in claims:
            claim.cancel()
        return reads, "first" if claims[0] in done else "second"

    assert asyncio.run(scenario()) == (1, "first")


def test_free_slots_no_waiter_here_may_take_are_not_polled() -> None:
    """Looked at again when told of a change, or once the queue's counts may have moved,
    not ten times a second."""

    async def scenario() -> tuple[int, int]:
        source = HeldFarm(woken=True, free=1)
        broker = slots.Slots(source, use_affinity=True)
        elsewhere = waiter()
        elsewhere.eligible = ("s2",)  # a server that is not up
        claimed = asyncio.create_task(broker.claim(elsewhere))
        await asyncio.sleep(slots.WANTED_FOR / 2)
        quiet = source.reads
        broker.changed()
        await asyncio.sleep(slots.SLOT_POLL[0])
        claimed.cancel()
        return quiet, source.reads

    quiet, woken = asyncio.run(scenario())
    assert 3 * slots.SLOT_POLL[1] < slots.WANTED_FOR / 2
    assert (quiet, woken) == (1, 2)


def test_a_claim_that_loads_other_models_beside_a_free_slot_is_announced() -> None:
    """Another worker's jobs of those models may take the slot beside it now."""

    async def scenario(free: int) -> list[str]:
        source = HeldFarm(woken=True, free=free, signature=B)
        broker = slots.Slots(source, use_affinity=True)
        assert (await asyncio.wait_for(broker.claim(waiter()), 1.0)).server == "s1"
        await asyncio.sleep(slots.SLOT_POLL[0])  # the broker's loop ends and tells
        return source.announced

    assert asyncio.run(scenario(free=2)) == ["s1"]
    assert asyncio.run(scenario(free=1)) == []  # nothing left beside it to take


class TwoServers(HeldFarm):
    """Servers s1 and s2, both with two free slots and B loaded."""

    def __init__(self) -> None:
        super().__init__(woken=True, signature=B)
        self.free = {"s1": 2, "s2": 2}

    async def states(self) -> dict[str, farm.ServerState]:
        self.reads += 1
        return {name: state(B, free) for name, free in self.free.items()}

    async def claim(self, claims: list[farm.SlotClaim]) -> list[farm.Slot | None]:
        self.claims.append(len(claims))
        got: list[farm.Slot | None] = []
        for claim in claims:
            name = next((n for n in claim.servers if self.free[n]), None)
            got.append(None if name is None else farm.Slot(name, self.free[name] - 1, B))
            if name is not None:
                self.free[name] -= 1
        return got

    def healthy(self) -> list[str]:
        return ["s1", "s2"]


def test_the_servers_a_round_switches_beside_free_slots_are_announced_at_once() -> None:
    """One transaction for the round, not one per server: the broker's next round waits
    for it."""

    async def scenario() -> tuple[list[str], int, list[str]]:
        source = TwoServers()
        broker = slots.Slots(source, use_affinity=True)
        first, second = waiter(), waiter()
        first.eligible = second.eligible = ("s1", "s2")
        second.signature = C  # A is loaded on one of them by then: C takes the other
        got = await asyncio.wait_for(asyncio.gather(broker.claim(first), broker.claim(second)), 1.0)
        await asyncio.sleep(slots.SLOT_POLL[0])  # the broker's loop ends and tells
        return sorted(slot.server for slot in got), source.announcements, source.announced

    assert asyncio.run(scenario()) == (["s1", "s2"], 1, ["s1", "s2"])


def test_a_round_claims_every_slot_it_hands_out_in_one_transaction() -> None:
    """At a run's start every waiter gets its slot at once, not one commit after another."""

    async def scenario() -> tuple[list[int], list[str]]:
        source = HeldFarm(woken=True, free=2)
        broker = slots.Slots(source, use_affinity=True)
        waiters = [waiter() for _ in range(3)]
        for n, w in enumerate(waiters):
            w.job_id = f"j{n}"
        claims = [asyncio.create_task(broker.claim(w)) for w in waiters]
        done, _ = await asyncio.wait(claims, timeout=1.0)
        for claim in claims:
            claim.cancel()
        return source.claims, [w.job_id for w, c in zip(waiters, claims, strict=True) if c in done]

    claims, served = asyncio.run(scenario())
    assert claims == [2]  # two free slots: the first two waiters, in one claim
    assert served == ["j0", "j1"]
