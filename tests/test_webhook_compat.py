"""Webhooks as the old Content Generation Bridge's clients and handlers see them, and
deliveries that outlive the run: real `bridge serve` / `bridge run` processes, real HTTP."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema
import pytest
from aiohttp import web

from bridge.db.store import Store
from bridge.record import RunReport, run_finished
from bridge.states import JobState
from tests.conftest import process_env
from tests.test_front_doors import call, start, stop, wait_for

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "schemas" / "webhook.schema.json").read_text())
pytestmark = pytest.mark.slow


class Receiver:
    """An aiohttp server in a thread; `answer` decides each reply from the request count."""

    def __init__(self, answer: Callable[[int, dict], web.Response]) -> None:
        self.answer = answer
        self.bodies: list[dict] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True).start()
        self._ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook"

    async def _handle(self, request: web.Request) -> web.Response:
        data = await request.json()
        self.bodies.append(data)
        return self.answer(len(self.bodies), data)

    async def _main(self) -> None:
        app = web.Application()
        app.router.add_post("/webhook", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def close(self) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)


class OldHandler:
    """The old system's README handler, exactly: `completed` → read `job_id`, success;
    anything else → `data.get("error", "Unknown error")`, failure; answers received."""

    def __init__(self) -> None:
        self.succeeded: list[object] = []
        self.failed: list[str] = []

    def __call__(self, _count: int, data: dict) -> web.Response:
        if data["status"] == "completed":
            self.succeeded.append(data["job_id"])
        else:
            self.failed.append(data.get("error", "Unknown error"))
        return web.json_response({"status": "received"})


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[str]:
    proc, first = start(["serve", "--port", "0"], process_env(tmp_path, BRIDGE_BACKEND="preview"))
    assert first.startswith("listening on "), first
    yield first.removeprefix("listening on ")
    stop(proc)


def curl(url: str, body: dict) -> tuple[int, dict]:
    """The old README's request exactly: `curl -X POST URL -d '<json>'` (no content type)."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    out = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", "-X", "POST", url, "-d", json.dumps(body)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    text, _, code = out.rpartition("\n")
    return int(code), json.loads(text)


def finished(api: str, run_id: int) -> bool:
    return call(f"{api}/api/status/{run_id}", token=None)[1]["status"] != "running"


def test_the_old_handler_reads_success_from_a_real_serve(serve: str) -> None:
    handler = OldHandler()
    receiver = Receiver(handler)
    try:
        spec = (ROOT / "specs" / "smoke.yaml").read_bytes()
        status, body = call(f"{serve}/api/specs", "POST", spec, token=None)
        assert status == 202
        wait_for(lambda: finished(serve, body["run_id"]))

        old_body = {"priority": "high", "quality_preset": "ultra", "notify_webhook": receiver.url}
        status, body = curl(f"{serve}/api/generate/scene/dusk", old_body)
        assert status == 202, body
        scene_run = body["job_id"]
        wait_for(lambda: finished(serve, scene_run), 120)
        wait_for(lambda: len(receiver.bodies) >= 1, 30)

        project_body = {"priority": "normal", "quality_preset": "high"}
        project_body["notify_webhook"] = receiver.url
        status, body = curl(f"{serve}/api/generate/project/smoke", project_body)
        assert status == 202, body
        project_run = body["job_id"]
        wait_for(lambda: finished(serve, project_run), 120)
        wait_for(lambda: len(receiver.bodies) >= 2, 30)
    finally:
        receiver.close()
    # Only the run-level notice reaches notify_webhook, and the old handler reads success.
    assert handler.failed == []
    assert handler.succeeded == [scene_run, project_run]
    assert [b["event"] for b in receiver.bodies] == ["run_finished", "run_finished"]
    for notice in receiver.bodies:
        jsonschema.validate(notice, SCHEMA)
        assert notice["run_status"] == "succeeded"


def report(states: dict[str, JobState], errors: dict[str, str], *, detached: bool = False):
    return RunReport(
        run_id=7,
        project="p",
        states=states,
        errors=errors,
        manifest=None,
        preview=False,
        backend="x",
        detached=detached,
    )


@pytest.mark.parametrize(
    ("states", "errors", "detached", "status", "run_status"),
    [
        ({"a": JobState.SUCCEEDED, "b": JobState.CACHED}, {}, False, "completed", "succeeded"),
        ({"a": JobState.FAILED, "b": JobState.SKIPPED}, {"a": "boom"}, False, "failed", "failed"),
        ({"a": JobState.CANCELLED}, {}, False, "failed", "cancelled"),
        ({"a": JobState.CANCELLED}, {}, True, "failed", "detached"),
    ],
)
def test_run_notice_matches_its_schema_and_the_old_handler(
    states: dict[str, JobState],
    errors: dict[str, str],
    detached: bool,
    status: str,
    run_status: str,
) -> None:
    notice = {"event": "run_finished"} | run_finished(
        7, "p", report(states, errors, detached=detached), Path("/m.json")
    )
    jsonschema.validate(notice, SCHEMA)
    handler = OldHandler()
    handler(1, notice)
    assert (notice["status"], notice["run_status"]) == (status, run_status)
    if status == "completed":
        assert handler.succeeded == [7]
    else:
        assert handler.failed
        assert handler.failed[0] != "Unknown error"
        assert "boom" in handler.failed[0] or not errors


def test_schema_refuses_a_failure_without_its_error() -> None:
    notice = {"event": "run_finished"} | run_finished(
        7, "p", report({"a": JobState.FAILED}, {"a": "x"}), Path("/m.json")
    )
    del notice["error"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(notice, SCHEMA)


# -- at exit: outstanding deliveries finish, bounded, and end recorded --------------------


def run_with_hook(tmp_path: Path, url: str, **env: str) -> list[tuple[str, dict]]:
    spec = tmp_path / "smoke.yaml"
    spec.write_text(
        (ROOT / "specs" / "smoke.yaml").read_text() + f"webhooks:\n  - {{url: '{url}'}}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "run", str(spec)],
        cwd=ROOT,
        env=process_env(tmp_path, BRIDGE_BACKEND="preview", **env),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    store = Store(f"sqlite:///{tmp_path / 'out' / 'bridge.db'}")
    try:
        run_id = store.runs(limit=1)[0].id
        assert run_id is not None
        return [
            (e.kind, e.data or {}) for e in store.events(run_id) if e.kind.startswith("webhook_")
        ]
    finally:
        store.close()


def test_a_retry_due_after_the_old_five_seconds_is_delivered_and_recorded(
    tmp_path: Path,
) -> None:
    def flaky(count: int, _data: dict) -> web.Response:
        return web.json_response({}, status=500 if count <= 2 else 200)

    receiver = Receiver(flaky)
    try:  # retries 3 s then 6 s after the first try: the third lands ~9 s after the run
        events = run_with_hook(tmp_path, receiver.url, BRIDGE_WEBHOOK_RETRY="3")
    finally:
        receiver.close()
    assert len(receiver.bodies) == 3
    assert [kind for kind, _ in events] == ["webhook_delivered"]
    assert events[0][1]["attempt"] == 3


def test_a_hook_that_never_answers_is_recorded_failed_at_the_drain_limit(
    tmp_path: Path,
) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the backlog; nothing ever answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        events = run_with_hook(tmp_path, url, BRIDGE_WEBHOOK_DRAIN="2")
    finally:
        silent.close()
    assert [kind for kind, _ in events] == ["webhook_failed"]
    assert "BRIDGE_WEBHOOK_DRAIN" in events[0][1]["error"]
