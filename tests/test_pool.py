"""The pool's slot accounting: a slot is held until outputs are safe, yet a server whose
leased prompts have all finished executing is sent the next one, so its queue never runs
dry while a download is in progress."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from bridge.backends.base import Attempt, Outcome, ProgressFn
from bridge.backends.pool import ServerPool


class Server:
    def __init__(self, name: str, slots: int) -> None:
        self.name = name
        self.slots = slots
        self.healthy = True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def object_info(self, classes: object = None) -> Mapping[str, Any]:
        return {}

    async def execute(self, attempt: Attempt, progress: ProgressFn) -> Outcome:
        raise NotImplementedError

    async def cancel(self, attempt: Attempt) -> None:
        return None


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_rendered_prompt_frees_its_server_for_the_next_but_keeps_its_slot() -> None:
    pool = ServerPool([Server("a", 1)])
    executed, downloaded = asyncio.Event(), asyncio.Event()
    leased: list[str] = []

    async def job(name: str, *, renders: asyncio.Event | None = None) -> None:
        async with pool.lease():
            leased.append(name)
            if renders is not None:
                await renders.wait()
                pool.rendered()  # outputs now downloading
                await downloaded.wait()
            else:
                await asyncio.Event().wait()  # executes until cancelled

    first = asyncio.create_task(job("first", renders=executed))
    await settle()
    second = asyncio.create_task(job("second"))
    third = asyncio.create_task(job("third"))
    await settle()
    assert leased == ["first"]  # one slot, its prompt still executing
    executed.set()
    await settle()
    assert leased == ["first", "second"]  # the queue must not run dry while first downloads
    assert pool.in_flight["a"] == 2  # first still holds its slot
    assert "third" not in leased  # second is executing: the server is not dry
    downloaded.set()
    await first
    await settle()
    assert leased == ["first", "second"]
    assert pool.in_flight["a"] == 1
    for task in (second, third):
        task.cancel()
    await asyncio.gather(second, third, return_exceptions=True)
    await settle()
    assert pool.in_flight["a"] == 0
    assert pool.executing["a"] == 0


async def test_a_lease_that_never_renders_gives_everything_back() -> None:
    pool = ServerPool([Server("a", 2)])
    async with pool.lease():
        pool.rendered()
        pool.rendered()  # once per lease, whatever the backend calls
        assert pool.executing["a"] == 0
    async with pool.lease():
        pass
    assert pool.in_flight["a"] == 0
    assert pool.executing["a"] == 0
