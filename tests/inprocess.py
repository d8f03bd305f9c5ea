"""Front doors in the test process, for tests about what they answer rather than about
the process (test_front_doors and test_processes keep one process-level test of each):
the REST API served from a thread, which plain blocking HTTP clients call as they call
the process, and the CLI through cli.main."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from bridge.api import Api
from bridge.runner import Runner
from bridge.settings import resolve


@contextmanager
def api_in_thread(tmp_path: Path, environ: Mapping[str, str]) -> Iterator[str]:
    """Settings from `environ` as `bridge serve` reads them, outputs under tmp_path;
    yields the base URL and stops the server (and its runs) on exit."""
    env = {"OUTPUT_PATH": str(tmp_path / "out"), **environ}
    settings = resolve({}, env)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    url: list[str] = []
    failed: list[BaseException] = []
    stop = asyncio.Event()

    async def serve() -> None:
        runner = Runner(settings, environ=env)
        app_runner = web.AppRunner(
            Api(runner, settings.api_token).app(),
            handle_signals=False,
            access_log=None,
            auto_decompress=False,
        )
        try:
            await app_runner.setup()
            site = web.TCPSite(app_runner, "127.0.0.1", 0)
            await site.start()
            url.append(f"http://127.0.0.1:{app_runner.addresses[0][1]}")
            ready.set()
            await stop.wait()
        finally:
            await app_runner.cleanup()
            await runner.close()

    def main() -> None:
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:
            failed.append(exc)
        finally:
            ready.set()
            loop.close()

    thread = threading.Thread(target=main, name="api under test", daemon=True)
    thread.start()
    ready.wait(60)
    if failed or not url:
        raise RuntimeError(f"the API did not start: {failed}")
    try:
        yield url[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        assert not thread.is_alive(), "the API did not stop"
        if failed:
            raise failed[0]


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def bridge_main(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    """`bridge ARGS` through cli.main in this process, with what it printed (the settings
    come from os.environ, as for the command; patch it with monkeypatch)."""
    from bridge.cli import main

    capsys.readouterr()
    code = main(list(args))
    printed = capsys.readouterr()
    return Result(code, printed.out, printed.err)
