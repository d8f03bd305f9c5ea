"""A Store whose PostgreSQL is down at start, then comes and goes: it says so once per
change, reconnects by itself, and keeps what was written. The outage is a TCP proxy in
front of the real PostgreSQL, stopped and started again on the same port."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from bridge.db.models import Project
from bridge.db.schema import HEAD, current_revision
from bridge.db.store import Store
from tests.sim.proxy import Faults, Proxy

pytestmark = pytest.mark.postgres


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _add_project(store: Store) -> None:
    with store.session() as s:
        s.add(Project(id="kept"))
        s.commit()


def _has_project(store: Store) -> bool:
    with store.session() as s:
        return s.get(Project, "kept") is not None


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "bridge.db.store"]


async def test_down_at_start_then_gone_for_a_while(
    pg_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.db.store")
    port = _free_port()
    store = Store(f"postgresql://postgres@127.0.0.1:{port}/{pg_name}", connect=False)
    proxy = Proxy(5432, Faults())
    try:
        assert not store.check()
        assert not store.check()
        waiting = asyncio.create_task(store.wait_available(first_delay=0.05, max_delay=0.2))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await proxy.start(port)
        await asyncio.wait_for(waiting, timeout=30)
        assert store.available
        # The database is reached through the proxy on this loop: blocking calls go to a thread.
        assert await asyncio.to_thread(current_revision, store.engine) == HEAD
        await asyncio.to_thread(_add_project, store)

        await proxy.stop()
        assert not await asyncio.to_thread(store.check)
        assert not await asyncio.to_thread(store.check)
        proxy = Proxy(5432, Faults())
        await proxy.start(port)
        assert await asyncio.to_thread(store.check)
        assert await asyncio.to_thread(_has_project, store)
    finally:
        await asyncio.to_thread(store.close)
        await proxy.stop()
    lines = _lines(caplog)
    assert [line.split(" (")[0].split(" is ")[1] for line in lines] == [
        "unavailable",
        "available again",
        "unavailable",
        "available again",
    ], lines
    assert all("Traceback" not in line for line in lines)
