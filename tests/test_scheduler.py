from __future__ import annotations

import asyncio
from collections.abc import Iterable

import networkx as nx
import pytest

from bridge.errors import PermanentBackendError, TransientBackendError
from bridge.events import Bus, JobFailed, JobSkipped
from bridge.plan import Job, JobKind, Plan
from bridge.scheduler import JobState, Policy, Scheduler


def make_plan(edges: Iterable[tuple[str, str]], nodes: Iterable[str] = ()) -> Plan:
    graph: nx.DiGraph = nx.DiGraph()
    graph.add_nodes_from(nodes)
    graph.add_edges_from(edges)
    order = tuple(nx.lexicographical_topological_sort(graph))
    for n in order:
        kind = JobKind.ASSEMBLE if n.startswith("assemble") else JobKind.RENDER
        graph.nodes[n]["job"] = Job(
            id=n,
            kind=kind,
            scene=None,
            shot=None,
            template=None,
            workflow={},
            expect=None,
            hash=n,
            deps=tuple(graph.predecessors(n)),
        )
    return Plan(project="p", graph=graph, order=order)


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


async def test_dependencies_run_first_and_all_succeed() -> None:
    seen: list[str] = []

    async def run(job: Job, attempt: int, progress) -> str:
        seen.append(job.id)
        await asyncio.sleep(0)
        return job.id

    plan = make_plan([("a", "b"), ("b", "c"), ("a", "d")])
    states = await Scheduler(plan, run).run()
    assert set(states.values()) == {JobState.SUCCEEDED}
    assert seen.index("a") < seen.index("b") < seen.index("c")
    assert seen.index("a") < seen.index("d")


async def test_concurrency_limit_is_respected() -> None:
    running = peak = 0

    async def run(job: Job, attempt: int, progress) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    plan = make_plan([], nodes=[f"j{i:02d}" for i in range(12)])
    await Scheduler(plan, run, policy=Policy(max_remote=3)).run()
    assert peak == 3


async def test_serial_order_with_one_slot_is_the_plan_order() -> None:
    seen: list[str] = []

    async def run(job: Job, attempt: int, progress) -> None:
        seen.append(job.id)

    plan = make_plan([("a", "c")], nodes=["b", "d"])
    await Scheduler(plan, run, policy=Policy(max_remote=1)).run()
    assert seen == ["a", "b", "c", "d"]


async def test_transient_failures_are_retried_with_backoff() -> None:
    delays: list[float] = []
    calls = 0

    async def sleep(d: float) -> None:
        delays.append(d)

    async def run(job: Job, attempt: int, progress) -> str:
        nonlocal calls
        calls += 1
        if attempt < 3:
            raise TransientBackendError("connection refused")
        return "ok"

    plan = make_plan([], nodes=["a"])
    sched = Scheduler(plan, run, policy=Policy(backoff=0.5), sleep=sleep)
    states = await sched.run()
    assert states["a"] is JobState.SUCCEEDED
    assert calls == 3
    assert delays == [0.5, 1.0]


async def test_transient_failures_give_up_after_the_retry_budget() -> None:
    async def run(job: Job, attempt: int, progress) -> None:
        raise TransientBackendError("server down")

    plan = make_plan([], nodes=["a"])
    sched = Scheduler(plan, run, policy=Policy(retries=2), sleep=no_sleep)
    assert (await sched.run())["a"] is JobState.FAILED
    assert sched.errors["a"] == "server down"


async def test_permanent_failure_skips_dependents_and_others_go_on() -> None:
    bus = Bus()
    events: list[object] = []
    bus.subscribe(events.append)
    calls: list[tuple[str, int]] = []

    async def run(job: Job, attempt: int, progress) -> None:
        calls.append((job.id, attempt))
        if job.id == "b":
            raise PermanentBackendError("node 3 (KSampler): Value not in list")

    plan = make_plan([("a", "b"), ("b", "c"), ("c", "d"), ("a", "e")])
    states = await Scheduler(plan, run, bus=bus).run()
    assert states == {
        "a": JobState.SUCCEEDED,
        "b": JobState.FAILED,
        "c": JobState.SKIPPED,
        "d": JobState.SKIPPED,
        "e": JobState.SUCCEEDED,
    }
    assert ("b", 2) not in calls
    assert [e.job_id for e in events if isinstance(e, JobSkipped)] == ["c", "d"]
    failed = [e for e in events if isinstance(e, JobFailed)]
    assert failed[0].kind == "permanent"
    assert failed[0].final


async def test_timeout_cancels_the_job_and_fails_it() -> None:
    cancelled = asyncio.Event()

    async def run(job: Job, attempt: int, progress) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    plan = make_plan([("a", "b")])
    sched = Scheduler(plan, run, policy=Policy(timeout=0.05))
    states = await sched.run()
    assert states == {"a": JobState.FAILED, "b": JobState.SKIPPED}
    assert cancelled.is_set()
    assert "WORKFLOW_TIMEOUT" in sched.errors["a"]


async def test_timeout_restarts_at_first_progress() -> None:
    async def run(job: Job, attempt: int, progress) -> str:
        await asyncio.sleep(0.06)  # queued behind another prompt
        progress(0, 10)
        await asyncio.sleep(0.06)
        return "done"

    plan = make_plan([], nodes=["a"])
    assert (await Scheduler(plan, run, policy=Policy(timeout=0.1)).run())["a"] is JobState.SUCCEEDED


async def test_cached_jobs_are_not_run_and_release_their_dependents() -> None:
    seen: list[str] = []

    async def run(job: Job, attempt: int, progress) -> None:
        seen.append(job.id)

    plan = make_plan([("a", "b"), ("b", "c")])
    states = await Scheduler(plan, run).run(cached={"a": "old", "b": "old"})
    assert seen == ["c"]
    assert states["a"] is JobState.CACHED


async def test_a_bug_in_a_job_fails_only_that_job() -> None:
    async def run(job: Job, attempt: int, progress) -> None:
        if job.id == "a":
            raise KeyError("oops")

    plan = make_plan([], nodes=["a", "b"])
    sched = Scheduler(plan, run)
    states = await sched.run()
    assert states == {"a": JobState.FAILED, "b": JobState.SUCCEEDED}
    assert sched.errors["a"] == "internal error: KeyError: 'oops'"


async def test_cancelling_the_run_cancels_running_jobs() -> None:
    started = asyncio.Event()

    async def run(job: Job, attempt: int, progress) -> None:
        started.set()
        await asyncio.sleep(10)

    plan = make_plan([("a", "b")])
    sched = Scheduler(plan, run)
    task = asyncio.create_task(sched.run())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sched.states == {"a": JobState.CANCELLED, "b": JobState.CANCELLED}
