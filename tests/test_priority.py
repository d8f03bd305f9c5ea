"""Run priorities: one scale for every front door, and the order freed slots are given in."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge import priority
from bridge.backends.pool import ServerPool
from bridge.errors import UsageError


@pytest.mark.parametrize(
    ("given", "expected"),
    [("low", -10), ("normal", 0), ("High", 10), ("urgent", 20), (5, 5), ("-3", -3), (0, 0)],
)
def test_words_and_whole_numbers(given: object, expected: int) -> None:
    assert priority.parse(given) == expected


@pytest.mark.parametrize("given", ["asap", True, 1.5, 1001, "", None, "١"])
def test_anything_else_says_what_to_write(given: object) -> None:
    with pytest.raises(UsageError, match="low, normal, high, urgent or a whole number"):
        priority.parse(given)


class _Server:
    def __init__(self, name: str, slots: int) -> None:
        self.name, self.slots, self.healthy = name, slots, True

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def object_info(self, classes: object = None) -> dict[str, Any]:
        return {}


def _order(waiters: list[tuple[str, int]], *, slots: int = 1) -> list[str]:
    """Hold every slot, queue `waiters` (name, priority) in order, then free the slots one
    at a time: the order in which the waiters got one."""

    async def main() -> list[str]:
        pool = ServerPool([_Server("a", slots)])  # type: ignore[list-item]
        await pool.start()
        got: list[str] = []
        release = asyncio.Event()

        async def hold() -> None:
            async with pool.lease():
                await release.wait()

        async def wait(name: str, prio: int) -> None:
            async with pool.lease(priority=prio):
                got.append(name)
                await asyncio.sleep(0)

        holders = [asyncio.create_task(hold()) for _ in range(slots)]
        await asyncio.sleep(0)
        tasks = []
        for name, prio in waiters:
            tasks.append(asyncio.create_task(wait(name, prio)))
            await asyncio.sleep(0)  # arrive in this order
        release.set()
        await asyncio.gather(*holders, *tasks)
        await pool.close()
        return got

    return asyncio.run(main())


def test_a_freed_slot_goes_to_the_highest_priority_then_first_come() -> None:
    waiters = [("n1", 0), ("low", -10), ("n2", 0), ("urgent", 20), ("high", 10)]
    assert _order(waiters) == ["urgent", "high", "n1", "n2", "low"]


def test_several_free_slots_serve_the_first_in_line_at_once() -> None:
    waiters = [("n1", 0), ("n2", 0), ("h1", 10), ("h2", 10)]
    assert _order(waiters, slots=2) == ["h1", "h2", "n1", "n2"]


def test_without_contention_a_lease_is_immediate_whatever_its_priority() -> None:
    async def main() -> str:
        pool = ServerPool([_Server("a", 2)])  # type: ignore[list-item]
        await pool.start()
        async with pool.lease(priority=-10) as one, pool.lease(priority=-1000) as two:
            assert pool.in_flight["a"] == 2
            name = one.name + two.name
        await pool.close()
        return name

    assert asyncio.run(main()) == "aa"


SPEC = (
    "version: 1\nproject: {id: p}\n%sscenes:\n  - id: a\n    shots:\n      - {id: s01, action: x}\n"
)


@pytest.mark.parametrize(
    ("line", "expected"), [("", 0), ("priority: high\n", 10), ("priority: -5\n", -5)]
)
def test_a_specs_priority(tmp_path, line: str, expected: int) -> None:
    from bridge.spec.validate import load_spec

    path = tmp_path / "p.yaml"
    path.write_text(SPEC % line)
    assert load_spec(str(path)).priority == expected


def test_a_wrong_spec_priority_is_a_positioned_error(tmp_path) -> None:
    from bridge.errors import SpecErrors
    from bridge.spec.validate import load_spec

    path = tmp_path / "p.yaml"
    path.write_text(SPEC % "priority: asap\n")
    with pytest.raises(SpecErrors) as caught:
        load_spec(str(path))
    (error,) = caught.value.errors
    assert error.where is not None
    assert (error.where.line, error.where.column) == (3, 11)
    assert "low, normal, high, urgent, or a whole number" in error.message


def test_bridge_run_priority_is_checked_before_anything_runs(tmp_path) -> None:
    from bridge.cli import main

    path = tmp_path / "p.yaml"
    path.write_text(SPEC % "")
    assert main(["run", str(path), "--priority", "asap", "--backend", "preview"]) == 2
