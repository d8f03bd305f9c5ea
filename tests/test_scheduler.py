from __future__ import annotations

import asyncio
from collections.abc import Iterable

import networkx as nx
import pytest

from bridge.errors import PermanentBackendError, TransientBackendError
from bridge.events import SUBSCRIBER_ERRORS, Bus, JobFailed, JobSkipped, JobSucceeded
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


class FakeClock:
    """Time that moves only when a test moves it; counts how often the scheduler looks."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    async def looked_again(self) -> None:
        """Wait until the scheduler reads the clock once more (its next deadline check)."""
        seen = self.reads
        while self.reads == seen:
            await asyncio.sleep(0.005)


async def test_timeout_cancels_the_job_and_fails_it() -> None:
    clock = FakeClock()
    cancelled = asyncio.Event()

    async def run(job: Job, attempt: int, progress) -> None:
        clock.now = 0.2  # past the deadline: the scheduler's next look must fail it
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    plan = make_plan([("a", "b")])
    sched = Scheduler(plan, run, policy=Policy(timeout=0.1), clock=clock)
    states = await asyncio.wait_for(sched.run(), 30)
    assert states == {"a": JobState.FAILED, "b": JobState.SKIPPED}
    assert cancelled.is_set()
    assert sched.errors["a"] == "ran past the 0.1 s WORKFLOW_TIMEOUT; interrupted"


@pytest.mark.parametrize("maximum", [0, 10], ids=["submitted", "first-progress"])
async def test_timeout_restarts_when_submitted_and_at_first_progress(maximum: int) -> None:
    """A job queued behind another prompt is not charged for the wait: the deadline restarts
    when it is submitted and at its first real progress. The clock is the test's, so the
    scheduler is seen to look at it past the first deadline and let the job run on."""
    clock = FakeClock()

    async def run(job: Job, attempt: int, progress) -> str:
        clock.now = 0.06  # waited in a queue for most of the timeout
        progress(0, maximum)
        clock.now = 0.15  # past the first deadline (0.1), before the restarted one (0.16)
        await clock.looked_again()
        return "done"

    plan = make_plan([], nodes=["a"])
    sched = Scheduler(plan, run, policy=Policy(timeout=0.1), clock=clock)
    assert (await asyncio.wait_for(sched.run(), 30))["a"] is JobState.SUCCEEDED


async def test_timeout_without_progress_is_not_restarted() -> None:
    """The same wait with no sign of life is a timeout: the test above can fail."""
    clock = FakeClock()

    async def run(job: Job, attempt: int, progress) -> str:
        clock.now = 0.15
        await clock.looked_again()
        await asyncio.Event().wait()
        return "never"

    plan = make_plan([], nodes=["a"])
    sched = Scheduler(plan, run, policy=Policy(timeout=0.1), clock=clock)
    assert (await asyncio.wait_for(sched.run(), 30))["a"] is JobState.FAILED


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


class Journal:
    """A record that notes each event, and whether any display saw it first."""

    def __init__(self, bus: Bus) -> None:
        self.seen: list[tuple[str, object]] = []
        bus.subscribe(lambda event: self.seen.append(("bus", event)))

    async def __call__(self, event: object) -> None:
        self.seen.append(("record", event))


async def test_every_event_is_recorded_before_any_display_hears_of_it() -> None:
    async def run(job: Job, attempt: int, progress) -> None:
        if job.id == "b" and attempt == 1:
            raise TransientBackendError("HTTP 500")
        if job.id == "c":
            raise PermanentBackendError("node 3 failed")

    bus = Bus()
    journal = Journal(bus)
    plan = make_plan([("a", "b"), ("a", "c"), ("c", "d")])
    await Scheduler(plan, run, bus=bus, record=journal, sleep=no_sleep).run()
    seen = journal.seen
    assert [where for where, _ in seen] == ["record", "bus"] * (len(seen) // 2)
    assert all(seen[i][1] is seen[i + 1][1] for i in range(0, len(seen), 2))
    recorded = [e for where, e in seen if where == "record"]
    failed = [(e.job_id, e.kind, e.attempt, e.final) for e in recorded if isinstance(e, JobFailed)]
    assert failed == [("b", "transient", 1, False), ("c", "permanent", 1, True)]
    assert JobSkipped("d", "c") in recorded


async def test_a_timeout_is_recorded_as_such_on_the_fake_clock() -> None:
    ticks = iter(range(0, 10**6, 1000))  # every reading of the clock is 1000 s later

    async def run(job: Job, attempt: int, progress) -> None:
        await asyncio.Event().wait()  # never finishes by itself

    bus = Bus()
    journal = Journal(bus)
    plan = make_plan([("a", "b")])
    sched = Scheduler(
        plan, run, policy=Policy(timeout=900), bus=bus, record=journal, clock=lambda: next(ticks)
    )
    assert await sched.run() == {"a": JobState.FAILED, "b": JobState.SKIPPED}
    recorded = [e for where, e in journal.seen if where == "record"]
    (failed,) = [e for e in recorded if isinstance(e, JobFailed)]
    assert (failed.job_id, failed.kind, failed.final) == ("a", "timeout", True)
    assert "900 s WORKFLOW_TIMEOUT" in failed.error


async def test_a_record_that_cannot_be_written_ends_the_run_loudly() -> None:
    stopped = asyncio.Event()

    async def run(job: Job, attempt: int, progress) -> None:
        if job.id == "slow":
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                stopped.set()
                raise

    async def record(event: object) -> None:
        if isinstance(event, JobSucceeded):
            raise OSError("disk full")

    plan = make_plan([], nodes=["fast", "slow"])
    with pytest.raises(OSError, match="disk full"):
        await Scheduler(plan, run, record=record).run()
    assert stopped.is_set()  # nothing is left running unrecorded


async def test_a_failing_display_is_logged_and_counted_and_the_run_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def run(job: Job, attempt: int, progress) -> None:
        return None

    def broken(event: object) -> None:
        raise ValueError("display bug")

    bus = Bus()
    bus.subscribe(broken)
    before = SUBSCRIBER_ERRORS.value
    plan = make_plan([("a", "b")])
    states = await Scheduler(plan, run, bus=bus).run()
    assert set(states.values()) == {JobState.SUCCEEDED}
    assert SUBSCRIBER_ERRORS.value - before == 4  # two starts, two successes
    failures = [r for r in caplog.records if "subscriber" in r.getMessage()]
    assert len(failures) == 4
    assert failures[0].exc_info is not None
    assert failures[0].exc_info[0] is ValueError


def _by_letter(job: Job) -> str:
    return job.id[0]


async def test_one_slot_runs_a_family_back_to_back_families_in_first_appearance() -> None:
    seen: list[str] = []

    async def run(job: Job, attempt: int, progress) -> None:
        seen.append(job.id)

    plan = make_plan([], nodes=["a1", "b2", "c3", "a4", "b5", "c6", "b7"])
    await Scheduler(plan, run, policy=Policy(max_remote=1), family=_by_letter).run()
    assert seen == ["a1", "a4", "b2", "b5", "b7", "c3", "c6"]


async def test_a_family_job_made_ready_later_joins_its_running_family() -> None:
    seen: list[str] = []

    async def run(job: Job, attempt: int, progress) -> None:
        seen.append(job.id)

    # a2 waits for a1; once a1 is done it goes before b1, which was ready all along
    plan = make_plan([("a1", "a2")], nodes=["b1"])
    await Scheduler(plan, run, policy=Policy(max_remote=1), family=_by_letter).run()
    assert seen == ["a1", "a2", "b1"]


async def test_a_retried_job_rejoins_the_family_order() -> None:
    seen: list[str] = []

    async def run(job: Job, attempt: int, progress) -> None:
        seen.append(job.id)
        if job.id == "a1" and attempt == 1:
            raise TransientBackendError("connection refused")

    plan = make_plan([], nodes=["a1", "a2", "b1", "b2"])
    sched = Scheduler(plan, run, policy=Policy(max_remote=1), sleep=no_sleep, family=_by_letter)
    states = await sched.run()
    assert set(states.values()) == {JobState.SUCCEEDED}
    assert seen[0] == "a1"
    assert sorted(seen) == ["a1", "a1", "a2", "b1", "b2"]
    assert seen.index("a2") < seen.index("b1")
