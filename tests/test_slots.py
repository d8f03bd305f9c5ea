"""Which waiting job gets which server slot: the broker's choice (no database) and the
claim's own check under its lock (PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from bridge import affinity, queue, slots
from bridge.db import farm
from bridge.db.store import Store

A = {"ckpt-a": 10.0, "text-1": 1.0}
A2 = {"ckpt-a": 10.0, "text-2": 1.0}  # the same models, another prompt
B = {"ckpt-b": 10.0, "text-3": 1.0}
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


def chosen(w: slots.Want, states: dict, wanted: dict, *, use_affinity: bool = True) -> list:
    return slots.choose(w, list(states), states, wanted, use_affinity=use_affinity)


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


def claim(engine: Engine, worker: int, job: str, signature: dict, **kw: object) -> farm.Slot | None:
    return farm.claim_slot(
        engine, ["s1"], worker_id=worker, run_id=1, job_id=job, lease=30, signature=signature, **kw
    )


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
