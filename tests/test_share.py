"""A worker's share of the farm's jobs in hand (bridge.share), without a database."""

from __future__ import annotations

import asyncio

import pytest

from bridge import share


class Farm:
    """The live workers as the queue's heartbeats count them."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.counted = 0

    async def live(self) -> int:
        self.counted += 1
        return self.workers


async def fill(s: share.Share, stopping: bool = False) -> int:
    """Take jobs while there is room; how many were taken."""
    taken = 0
    while True:
        try:
            async with asyncio.timeout(0.05):
                if not await s.room(lambda: stopping):
                    return taken
        except TimeoutError:
            return taken
        s.taken()
        taken += 1


def test_each_of_three_workers_holds_a_third_of_the_farm_s_jobs() -> None:
    async def main() -> None:
        s = share.Share(24, Farm(3).live, fixed=False)
        assert await fill(s) == 8
        s.ended()  # one job ends: room for one more, at once
        assert await fill(s) == 1

    asyncio.run(main())


def test_a_worker_alone_holds_them_all_and_one_that_set_its_own_number_keeps_it() -> None:
    async def main() -> None:
        assert await fill(share.Share(24, Farm(1).live, fixed=False)) == 24
        assert await fill(share.Share(5, Farm(3).live, fixed=True)) == 5

    asyncio.run(main())


def test_a_worker_gone_raises_the_others_share(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(share, "REFRESH", 0.02)
    monkeypatch.setattr(share, "POLL", 0.01)

    async def main() -> None:
        farm = Farm(3)
        s = share.Share(24, farm.live, fixed=False)
        assert await fill(s) == 8
        farm.workers = 2  # its heartbeat ran out
        assert await fill(s) == 4

    asyncio.run(main())


def test_a_stopping_worker_takes_no_more_jobs() -> None:
    async def main() -> None:
        s = share.Share(24, Farm(3).live, fixed=False)
        assert await fill(s, stopping=True) == 0
        assert s.held == 0

    asyncio.run(main())


def test_the_workers_are_counted_again_only_now_and_then() -> None:
    async def main() -> None:
        farm = Farm(1)
        s = share.Share(24, farm.live, fixed=False)
        assert await fill(s) == 24
        assert farm.counted == 1

    asyncio.run(main())
