"""A worker sets up its jobs a few at a time, in the order the queue handed them out."""

from __future__ import annotations

import asyncio

from bridge.worker import _Setup


def test_jobs_are_set_up_two_at_a_time_in_arrival_order() -> None:
    async def scenario() -> list[str]:
        setup = _Setup(2)
        began: list[str] = []

        async def job(name: str) -> None:
            await setup.begin((1, name))
            began.append(name)

        tasks = [asyncio.create_task(job(n)) for n in ("a", "b", "c", "d")]
        await asyncio.sleep(0.01)
        assert began == ["a", "b"]  # c and d wait for a setup to end
        setup.end((1, "b"))
        setup.end((1, "b"))  # a job's setup ends once: a second end frees nothing
        await asyncio.sleep(0.01)
        assert began == ["a", "b", "c"]
        setup.end((1, "x"))  # a job that never began (cancelled while waiting) frees nothing
        await asyncio.sleep(0.01)
        assert began == ["a", "b", "c"]
        setup.end((1, "a"))
        await asyncio.gather(*tasks)
        return began

    assert asyncio.run(scenario()) == ["a", "b", "c", "d"]
