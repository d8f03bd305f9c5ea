"""A fault-injecting TCP proxy for tests: loopback only, seeded, bounded.

A seeded RNG draws each fault: pass through, reset (RST) after a random number of bytes
from the server, stall for a while at such an offset, or blackhole there (forward nothing
more either way, keep both sockets open: a half-open link). Faults are drawn once per
connection, or, with `path`, per HTTP request for that path (`/view`: every download may
be cut at a random byte of its response). At most `max_faults` strike and at most
`max_connections` are served at once, so a run through it always ends.

Run as a process: `python -m tests.sim.proxy --target URL --seed 1 --reset 0.3` prints
`listening on URL`; on SIGTERM it prints its counts as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import signal
import socket
import struct
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"


@dataclass
class Faults:
    reset: float = 0.0  # probability that a stream is reset (RST) at its offset
    stall: float = 0.0  # ... that it stalls for stall_seconds there, then carries on
    blackhole: float = 0.0  # ... that it goes silent there for good
    min_offset: int = 0  # where a fault strikes, in bytes of the server's stream
    max_offset: int = 256 * 1024
    stall_seconds: float = 2.0
    max_faults: int = 10
    # With a path, faults are drawn per HTTP request for it (`/view`: downloads), the
    # offset counted from the start of its response; without, once per connection.
    path: str | None = None


@dataclass
class _Link:
    """One proxied connection: the fault armed on it and where it strikes."""

    fate: str = "pass"
    strike_at: int = 0  # absolute offset in the server-to-client stream
    sent: int = 0
    silent: asyncio.Event = field(default_factory=asyncio.Event)  # blackholed both ways


@dataclass
class Proxy:
    target_port: int
    faults: Faults
    seed: int = 0
    max_connections: int = 64
    counts: dict[str, int] = field(
        default_factory=lambda: {
            "connections": 0,
            "reset": 0,
            "stall": 0,
            "blackhole": 0,
            "bytes": 0,  # forwarded from the server to clients
        }
    )

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self.max_connections)
        self._request = (
            re.compile(
                rb"^(GET|HEAD) (/api)?" + re.escape(self.faults.path.encode()) + rb"[?/ ]", re.M
            )
            if self.faults.path
            else None
        )
        self.url = ""

    async def start(self, port: int = 0) -> str:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, port)
        self.url = f"http://{LOOPBACK}:{self._server.sockets[0].getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _arm(self, link: _Link) -> None:
        """Draw the next fault for `link`, starting from where its stream is now."""
        f = self.faults
        roll = self.rng.random()
        offset = self.rng.randrange(f.min_offset, max(f.min_offset + 1, f.max_offset))
        link.fate, link.strike_at = "pass", 0
        harmed = self.counts["reset"] + self.counts["stall"] + self.counts["blackhole"]
        if harmed >= f.max_faults:
            return
        for kind, p in (("reset", f.reset), ("stall", f.stall), ("blackhole", f.blackhole)):
            if roll < p:
                link.fate, link.strike_at = kind, link.sent + offset
                return
            roll -= p

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            async with self._slots:
                self.counts["connections"] += 1
                await self._serve(client_r, client_w)
        finally:
            self._tasks.discard(task)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        link = _Link()
        if self._request is None:
            self._arm(link)
        try:
            up_r, up_w = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            _reset(client_w)
            return
        upstream = asyncio.create_task(self._upstream(client_r, up_w, link))
        try:
            await self._downstream(up_r, client_w, link)
            if link.fate == "blackhole":
                await upstream  # hold both sockets open until the client gives up
        finally:
            upstream.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await upstream
            if link.fate == "reset":
                _reset(client_w)
            else:
                client_w.close()
            up_w.close()

    async def _upstream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(16 * 1024):
                if link.silent.is_set():
                    continue  # swallowed: the link is dead but nobody told the client
                if self._request is not None:  # a new request: the last response is over
                    if self._request.search(data):
                        self._arm(link)
                    else:
                        link.fate = "pass"
                writer.write(data)
                await writer.drain()
        if not link.silent.is_set():
            writer.close()  # the client is done: let the server see it

    async def _downstream(
        self, up_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, link: _Link
    ) -> None:
        with contextlib.suppress(OSError):
            while chunk := await up_r.read(16 * 1024):
                if link.fate != "pass" and link.sent + len(chunk) >= link.strike_at:
                    head = link.strike_at - link.sent
                    await self._forward(client_w, chunk[:head], link)
                    fate, link.fate = link.fate, "pass"
                    self.counts[fate] += 1
                    if fate == "blackhole":
                        link.silent.set()
                    if fate != "stall":
                        link.fate = fate  # tells _serve how to end
                        return
                    await asyncio.sleep(self.faults.stall_seconds)
                    chunk = chunk[head:]
                await self._forward(client_w, chunk, link)

    async def _forward(self, client_w: asyncio.StreamWriter, data: bytes, link: _Link) -> None:
        link.sent += len(data)
        self.counts["bytes"] += len(data)
        client_w.write(data)
        await client_w.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, as a dropped NAT entry or a crashed peer does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _serve_forever(target: str, faults: Faults, seed: int, port: int) -> None:
    parts = urlsplit(target)
    if parts.hostname not in (LOOPBACK, "localhost"):
        raise SystemExit("the proxy only forwards to loopback")
    proxy = Proxy(parts.port or 80, faults, seed)
    print(f"listening on {await proxy.start(port)}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await proxy.stop()
    print(json.dumps(proxy.counts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="fault-injecting TCP proxy for bridge's tests")
    parser.add_argument("--target", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reset", type=float, default=0.0)
    parser.add_argument("--stall", type=float, default=0.0)
    parser.add_argument("--blackhole", type=float, default=0.0)
    parser.add_argument("--min-offset", type=int, default=0)
    parser.add_argument("--max-offset", type=int, default=256 * 1024)
    parser.add_argument("--stall-seconds", type=float, default=2.0)
    parser.add_argument("--max-faults", type=int, default=10)
    parser.add_argument("--path", help="draw faults per request for this path, e.g. /view")
    a = parser.parse_args()
    faults = Faults(
        a.reset,
        a.stall,
        a.blackhole,
        a.min_offset,
        a.max_offset,
        a.stall_seconds,
        a.max_faults,
        a.path,
    )
    asyncio.run(_serve_forever(a.target, faults, a.seed, a.port))


if __name__ == "__main__":
    main()
