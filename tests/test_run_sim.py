"""End to end on the simulator: the runner, the client, the pool and the store together.

Each fault the simulator can inject has its test: what the user sees (the job's error),
what the server saw (prompts posted, interrupted, deleted) and what was recorded.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bridge.compile import compile_plan
from bridge.db.store import Store
from bridge.errors import PreflightError
from bridge.runner import Runner, RunReport, Selection
from bridge.scheduler import JobState, Policy
from bridge.settings import Settings
from bridge.spec.validate import load_spec
from tests.conftest import smoke_spec
from tests.sim.comfyui import Simulator

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "specs" / "smoke.yaml"
MANIFEST_SCHEMA = json.loads((ROOT / "schemas" / "manifest.schema.json").read_text())


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(job_seconds=0.05)
    await s.start()
    yield s
    await s.stop()


def settings_for(tmp_path: Path, *urls: str, **kw: Any) -> Settings:
    return Settings(
        comfyui_urls=urls,
        output_path=tmp_path / "out",
        database_url=f"sqlite:///{tmp_path / 'bridge.db'}",
        backend="comfyui",
        **kw,
    )


async def run(
    settings: Settings,
    spec_path: Path = SMOKE,
    *,
    policy: Policy | None = None,
    selection: Selection | None = None,
) -> RunReport:
    spec = load_spec(spec_path)
    plan = (selection or Selection()).narrow(compile_plan(spec))
    runner = Runner(
        settings, policy=policy or Policy(max_remote=3, timeout=30, retries=3, backoff=0.05)
    )
    try:
        return await runner.run(spec, plan, selection)
    finally:
        await runner.close()


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for what the simulator hears after bridge returns, without a fixed sleep."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def event_log(settings: Settings, run_id: int) -> list[tuple[str, str | None, dict[str, Any]]]:
    """The run's event log as (kind, job, data), read back from the job store."""
    store = Store(settings.database)
    try:
        return [(e.kind, e.job_id, e.data or {}) for e in store.events(run_id)]
    finally:
        store.close()


def job_rows(settings: Settings, run_id: int) -> dict[str, str]:
    store = Store(settings.database)
    try:
        return {j.job_id: j.state for j in store.jobs(run_id)}
    finally:
        store.close()


def spec_file(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


async def test_smoke_spec_renders_checks_records_and_reruns_for_free(
    sim: Simulator, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, sim.url)
    report = await run(settings)
    assert report.ok, report.errors
    assert report.counts() == {"succeeded": 7}
    assert len(sim.posted) == 4
    assert len(set(sim.posted)) == 4
    manifest = json.loads(report.manifest.read_text())
    jsonschema.validate(manifest, MANIFEST_SCHEMA)
    assert manifest["run"]["preview"] is False
    jobs = {j["id"]: j for j in manifest["jobs"]}
    shot = jobs["render:dusk/s02"]
    assert shot["outputs"][0]["probe"]["width"] == 320
    assert shot["outputs"][0]["quality"]["passed"] is True
    assert (report.manifest.parent / shot["outputs"][0]["workflow"]).is_file()
    scene = jobs["assemble:dusk"]["outputs"][0]
    assert scene["probe"]["frames"] == 24  # two 1 s shots at 12 fps, the small one padded

    again = await run(settings)
    assert again.counts() == {"cached": 7}
    assert len(sim.posted) == 4  # nothing submitted


async def test_preflight_asks_only_for_the_node_classes_the_plan_uses(
    sim: Simulator, tmp_path: Path
) -> None:
    report = await run(settings_for(tmp_path, sim.url), SMOKE)
    assert report.ok, report.errors
    assert "*" not in sim.object_info_asked  # the slow call that scans every model folder
    assert sorted(sim.object_info_asked) == ["CreateVideo", "EmptyImage", "SaveVideo"]


async def test_three_servers_share_the_work(tmp_path: Path) -> None:
    sims = [Simulator(job_seconds=0.1) for _ in range(3)]
    urls = [await s.start() for s in sims]
    path = spec_file(
        tmp_path,
        smoke_spec("wide", 9),
    )
    try:
        report = await run(settings_for(tmp_path, *urls), path, policy=Policy(max_remote=6))
    finally:
        for s in sims:
            await s.stop()
    assert report.ok, report.errors
    # the first six fill every server's two slots; the last three go wherever a slot frees
    # first, which depends on the machine's load
    assert sum(len(s.posted) for s in sims) == 9
    assert all(len(s.posted) >= 2 for s in sims), [len(s.posted) for s in sims]


async def test_validation_error_fails_that_job_with_the_nodes_message(
    sim: Simulator, tmp_path: Path
) -> None:
    workflow = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 12, "color": 0},
        },
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 12.0}},
        "3": {
            "class_type": "SaveVideo",
            "inputs": {"video": ["2", 0], "filename_prefix": "x", "format": "mkv", "codec": "auto"},
        },
    }
    (tmp_path / "bad_api.json").write_text(json.dumps(workflow))
    path = spec_file(
        tmp_path,
        "version: 1\nproject: {id: p}\n"
        "templates:\n  bad: {workflow: bad_api.json, bind: {filename_prefix: 3.filename_prefix}}\n"
        "defaults: {preset: draft, fps: 12, motion: core-smoke, duration: 1s}\n"
        "scenes:\n  - id: a\n    shots: [{id: s01, template: bad}, {id: s02}]\n",
    )
    with pytest.raises(PreflightError, match=r"SaveVideo.format: 'mkv' is not available"):
        await run(settings_for(tmp_path, sim.url), path)
    assert sim.posted == []  # preflight stops the run before anything is queued


async def test_execution_error_fails_at_once_and_skips_dependents(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.error_nodes = {"CreateVideo"}
    settings = settings_for(tmp_path, sim.url)
    report = await run(settings, SMOKE)
    assert not report.ok
    error = report.errors["render:dawn/s01"]
    assert "node 2 (CreateVideo) failed: RuntimeError: simulated failure in CreateVideo" in error
    assert report.states["assemble:dawn"] is JobState.SKIPPED
    assert len(sim.posted) == 4  # no retries for a permanent error

    log = event_log(settings, report.run_id)
    assert [kind for kind, _, _ in log if kind.startswith("run_")] == [
        "run_started",
        "run_finished",
    ]
    failed = {job: data for kind, job, data in log if kind == "job_failed"}
    assert sorted(failed) == sorted(j for j in report.states if j.startswith("render:"))
    assert len(failed) == 4
    for job, data in failed.items():
        assert data == {
            "error": report.errors[job],
            "kind": "permanent",
            "attempt": 1,
            "final": True,
        }
    assert log[-1] == ("run_finished", None, {"status": "failed", "failed": 4, "skipped": 3})
    rows = job_rows(settings, report.run_id)
    assert rows == {j: s.value for j, s in report.states.items()}


async def test_http_500_is_retried(sim: Simulator, tmp_path: Path) -> None:
    sim.fail_posts = 2
    settings = settings_for(tmp_path, sim.url)
    report = await run(settings, SMOKE)
    assert report.ok, report.errors
    assert len(sim.posted) == 4
    log = event_log(settings, report.run_id)
    retried = [(job, data) for kind, job, data in log if kind == "job_failed"]
    assert len(retried) == 2
    for job, data in retried:
        assert (data["kind"], data["final"]) == ("transient", False)
        assert "HTTP 500" in data["error"]
        later = [k for k, j, _ in log[log.index(("job_failed", job, data)) :] if j == job]
        assert later[-1] == "job_succeeded"
    assert sum(1 for kind, _, _ in log if kind == "job_succeeded") == 7
    assert set(job_rows(settings, report.run_id).values()) == {"succeeded"}


async def test_server_restart_mid_job_resubmits_the_lost_prompt(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.job_seconds = 0.6
    settings = settings_for(tmp_path, sim.url)
    task = asyncio.create_task(run(settings, SMOKE, selection=Selection(only=("dawn/s01",))))
    while not sim.posted:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    await sim.restart(down_for=0.3)
    report = await task
    assert report.ok, report.errors
    assert len(sim.executed) == 1  # the first never finished; the resubmission did


async def test_dropped_socket_falls_back_to_history(sim: Simulator, tmp_path: Path) -> None:
    sim.drop_socket_after = 2
    sim.job_seconds = 0.3
    report = await run(
        settings_for(tmp_path, sim.url), SMOKE, selection=Selection(only=("dawn/s01",))
    )
    assert report.ok, report.errors
    assert sim.posted == sim.executed


async def test_missing_output_fails_with_a_clear_message(sim: Simulator, tmp_path: Path) -> None:
    sim.missing_outputs = True
    report = await run(
        settings_for(tmp_path, sim.url), SMOKE, selection=Selection(only=("dawn/s01",))
    )
    assert "does not have it (HTTP 404)" in report.errors["render:dawn/s01"]


async def test_corrupt_output_fails_its_check(sim: Simulator, tmp_path: Path) -> None:
    sim.corrupt_outputs = True
    report = await run(
        settings_for(tmp_path, sim.url), SMOKE, selection=Selection(only=("dawn/s01",))
    )
    assert "not a readable video or image" in report.errors["render:dawn/s01"]


async def test_black_clip_fails_its_gate_and_passes_with_a_new_seed(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.black_prompts = 1
    (tmp_path / "start.png").write_bytes(
        (ROOT / "tests" / "cases" / "bad" / "files" / "start.png").read_bytes()
    )
    path = spec_file(
        tmp_path,
        "version: 1\nproject: {id: p}\n"
        "defaults: {preset: draft, fps: 16, motion: wan-i2v, duration: 1s, quality: {retries: 1}}\n"
        "scenes:\n  - id: a\n    shots: [{id: s01, seed: 5, start_image: start.png}]\n",
    )
    report = await run(settings_for(tmp_path, sim.url), path)
    assert report.ok, report.errors
    assert len(sim.posted) == 2
    result = report.results["render:a/s01"]
    assert result.attempts == 2
    assert result.meta["seed"] != 5
    workflow = json.loads(result.files[0].workflow.read_text())
    assert workflow["12"]["inputs"]["seed"] == result.meta["seed"]
    log = event_log(settings_for(tmp_path, sim.url), report.run_id)
    job_events = [(kind, data) for kind, job, data in log if job == "render:a/s01"]
    assert [kind for kind, _ in job_events] == ["quality_failed", "job_succeeded"]
    assert "black" in job_events[0][1]["reason"]
    assert job_events[0][1]["reseed"] == 0


async def test_timeout_interrupts_the_prompt(sim: Simulator, tmp_path: Path) -> None:
    sim.job_seconds = 3.0
    settings = settings_for(tmp_path, sim.url)
    report = await run(
        settings,
        SMOKE,
        policy=Policy(max_remote=1, timeout=0.5, retries=0),
        selection=Selection(only=("dawn/s01",)),
    )
    assert "WORKFLOW_TIMEOUT" in report.errors["render:dawn/s01"]
    await eventually(lambda: sim.interrupted == sim.posted[:1])
    failed = [(job, data) for kind, job, data in event_log(settings, report.run_id)]
    assert (
        "render:dawn/s01",
        {
            "error": report.errors["render:dawn/s01"],
            "kind": "timeout",
            "attempt": 1,
            "final": True,
        },
    ) in failed
    assert job_rows(settings, report.run_id)["render:dawn/s01"] == "failed"


async def test_cancelling_a_run_deletes_and_interrupts_what_it_queued(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.job_seconds = 2.0
    settings = settings_for(tmp_path, sim.url)
    task = asyncio.create_task(run(settings, SMOKE))
    while len(sim.posted) < 3 or sim.running is None:  # the first one started on a busy host
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: len(sim.interrupted) + len(sim.deleted) == 3)
    # The running prompt is interrupted and each queued one deleted, or, when the server
    # started it between bridge's requests (ComfyUI moves on the moment one is interrupted),
    # interrupted in its turn: none of the three runs to its end.
    assert sim.interrupted[0] == sim.posted[0]
    assert sorted(sim.interrupted + sim.deleted) == sorted(sim.posted[:3])
    assert len(sim.posted) == 3
    assert not [p for p in sim.posted if sim.history.get(p, {}).get("status", {}).get("completed")]

    store = Store(settings.database)
    try:
        (record,) = store.runs()
    finally:
        store.close()
    assert record.status == "cancelled"
    rows = job_rows(settings, record.id)
    assert set(rows.values()) == {"cancelled"}  # those never started too: nothing pending
    log = event_log(settings, record.id)
    cancelled = [
        job for kind, job, data in log if kind == "job_failed" and data["kind"] == "cancelled"
    ]
    assert len(cancelled) == 3  # the three it had queued
    assert all(job.startswith("render:") for job in cancelled)
    assert log[-1][:2] == ("run_finished", None)
    assert log[-1][2] == {"status": "cancelled", "cancelled": 7}


CHAIN = """\
version: 1
project: {id: chain, title: Chain}
defaults: {preset: draft, fps: 16, motion: wan-i2v, duration: 1s}
characters:
  mei: {name: Mei, design_prompt: "mei, 1girl"}
scenes:
  - id: a
    characters: [mei]
    shots:
      - {id: s01, start_image: start.png, action: walks}
      - {id: s02, continue_from: s01, action: turns}
      - {id: s03, continue_from: s02, action: waves}
  - id: b
    shots:
      - {id: s01, continue_from: a/s03, action: "the sky"}
"""


def chain_spec(tmp_path: Path, text: str = CHAIN) -> Path:
    import subprocess

    start = tmp_path / "start.png"
    if not start.exists():
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=s=64x48",
                "-frames:v",
                "1",
                str(start),
            ],
            check=True,
        )
    return spec_file(tmp_path, text, "chain.yaml")


async def test_continue_from_chain_uploads_each_last_frame_and_assembles(
    sim: Simulator, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, sim.url)
    report = await run(settings, chain_spec(tmp_path))
    assert report.ok, report.errors
    # the start image and the last frames of a/s01, a/s02 and a/s03 went to the server
    assert len(sim.uploads) == 4
    s02 = json.loads(report.results["render:a/s02"].files[0].workflow.read_text())
    frame = report.results["frame:a/s01"].main
    assert s02["8"]["inputs"]["image"].startswith("bridge/")
    from bridge.hashing import file_digest

    assert s02["8"]["inputs"]["image"] == f"bridge/{file_digest(frame)[:16]}.png"
    scene = report.results["assemble:a"].files[0].probe
    shots = [report.results[f"render:a/s0{i}"].files[0].probe for i in (1, 2, 3)]
    assert (
        abs(scene["frames"] / scene["fps"] - sum(s["frames"] / s["fps"] for s in shots))
        <= 1 / scene["fps"]
    )
    project = report.results["assemble:chain"].files[0].probe
    assert (
        project["frames"] == scene["frames"] + report.results["assemble:b"].files[0].probe["frames"]
    )


async def test_changing_one_prompt_rerenders_exactly_what_depends_on_it(
    sim: Simulator, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, sim.url)
    path = chain_spec(tmp_path)
    await run(settings, path)
    posted = len(sim.posted)
    path.write_text(CHAIN.replace("action: turns", "action: turns back"))
    from bridge import freshness

    plan = compile_plan(load_spec(path))
    store = Store(settings.database)
    try:
        found = freshness.reasons(store, plan, settings.output_path, load_spec(path).templates)
    finally:
        store.close()
    rerun = {j for j, r in found.items() if r.runs}
    assert rerun == {
        "render:a/s02",
        "frame:a/s02",
        "render:a/s03",
        "frame:a/s03",
        "render:b/s01",
        "assemble:a",
        "assemble:b",
        "assemble:chain",
    }
    changed = freshness.ReasonKind.CHANGED
    assert found["render:a/s02"] == freshness.Reason(changed, params=("prompt",))
    assert found["frame:a/s02"] == freshness.Reason(changed, inputs=("render:a/s02",))
    assert found["render:a/s03"] == freshness.Reason(changed, inputs=("frame:a/s02",))
    reasons = freshness.as_text(found)
    assert reasons["render:a/s02"] == "changed prompt"
    assert reasons["frame:a/s02"] == "changed input render:a/s02"
    assert reasons["assemble:a"] == "changed input render:a/s02, input render:a/s03"
    report = await run(settings, path)
    assert report.ok, report.errors
    assert {j for j, s in report.states.items() if s is JobState.SUCCEEDED} == rerun
    assert len(sim.posted) == posted + 3  # a/s02, a/s03 and b/s01


async def test_deleted_output_is_rendered_again(sim: Simulator, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, sim.url)
    first = await run(settings, SMOKE, selection=Selection(only=("dawn/s01",)))
    first.results["render:dawn/s01"].main.unlink()
    second = await run(settings, SMOKE, selection=Selection(only=("dawn/s01",)))
    assert second.states["render:dawn/s01"] is JobState.SUCCEEDED
    assert len(sim.posted) == 2


@pytest.mark.parametrize("still", [True, False])
async def test_a_still_user_template_is_not_failed_as_frozen(
    sim: Simulator, tmp_path: Path, still: bool
) -> None:
    (tmp_path / "card.json").write_bytes(
        (ROOT / "bridge" / "templates" / "core-smoke.json").read_bytes()
    )
    path = spec_file(
        tmp_path,
        "version: 1\nproject: {id: p}\n"
        f"templates:\n  card: {{workflow: card.json, still: {str(still).lower()}, bind: "
        "{width: 1.width, height: 1.height, frames: 1.batch_size, "
        "seed: {to: 1.color, mod: 16777216}, fps: 2.fps, filename_prefix: 3.filename_prefix}}\n"
        "defaults: {preset: draft, fps: 12, motion: card, duration: 1s}\n"
        "scenes:\n  - id: a\n    shots: [{id: s01}]\n",
    )
    report = await run(settings_for(tmp_path, sim.url), path)
    if still:
        assert report.ok, report.errors
    else:  # the same solid colour clip from a template that claims motion
        assert "frozen" in report.errors["render:a/s01"]


@pytest.mark.parametrize(("quality", "ok"), [("{threshold: 0}", True), ("{}", False)])
async def test_quality_threshold_zero_switches_the_gate_off(
    sim: Simulator, tmp_path: Path, quality: str, ok: bool
) -> None:
    sim.black_prompts = 1
    (tmp_path / "start.png").write_bytes(
        (ROOT / "tests" / "cases" / "bad" / "files" / "start.png").read_bytes()
    )
    path = spec_file(
        tmp_path,
        "version: 1\nproject: {id: p}\n"
        "defaults: {preset: draft, fps: 16, motion: wan-i2v, duration: 1s, "
        f"quality: {quality}}}\n"
        "scenes:\n  - id: a\n    shots: [{id: s01, seed: 5, start_image: start.png}]\n",
    )
    report = await run(settings_for(tmp_path, sim.url, quality_threshold=0.7), path)
    assert report.ok is ok, report.errors
    assert len(sim.posted) == 1  # no retries asked for: the black clip is kept or failed


@pytest.mark.parametrize(("affinity", "switches"), [(True, 2), (False, 8)])
async def test_interleaved_families_render_back_to_back(
    sim: Simulator, tmp_path: Path, affinity: bool, switches: int
) -> None:
    """Shots written A, B, A, B whose EmptyImage (the expensive node) is one of two: the
    server sees each family once, not a change of expensive nodes at every prompt."""
    shots = "\n".join(
        f"      - {{id: s{i}, seed: {i % 2 + 1}, params: {{width: 64, height: 64}}}}"
        for i in range(8)
    )
    path = spec_file(
        tmp_path,
        "version: 1\nproject: {id: fam}\n"
        "defaults: {preset: draft, fps: 12, motion: core-smoke, duration: 2f}\n"
        f"scenes:\n  - id: a\n    shots:\n{shots}\n",
    )
    report = await run(settings_for(tmp_path, sim.url, affinity=affinity), path)
    assert report.ok, report.errors
    assert len(sim.executed) == 8
    assert sim.switches == switches
