"""Issue 11 item 5: requested vs rendered length, and a scene's frame_count kept when its
template cannot render the shots' lengths exactly (compiled, planned, and rendered)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.compile import compile_plan
from bridge.console import plan_summary, plan_text
from bridge.lengths import Length, fit, options
from bridge.spec.validate import load_spec
from bridge.templates import bundled
from tests.conftest import process_env

ROOT = Path(__file__).resolve().parent.parent
FRAMEPACK = bundled()["framepack-i2v"]


def spec(tmp_path: Path, scene: str, shots: str, motion: str = "framepack-i2v") -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(
        "version: 1\nproject: {id: p}\n"
        f"defaults: {{preset: high, motion: {motion}, fps: 24}}\n"
        f"scenes:\n  - id: a\n{scene}    shots:\n{shots}"
    )
    return path


def test_a_three_second_framepack_shot_renders_73_frames_and_says_so(tmp_path: Path) -> None:
    path = spec(tmp_path, "", "      - {id: s01, action: x, duration: 3s}\n")
    plan = compile_plan(load_spec(path))
    render = plan.job("render:a/s01")
    assert (render.expect.frames, render.expect.fps) == (73, 30)
    assert render.meta["requested"] == {"frames": 72, "fps": 24, "seconds": 3.0}
    text = plan_text(plan_summary(plan))
    assert "asked 3 s (72 frames at 24 fps), renders 2.43 s" in text


def test_a_length_the_template_makes_exactly_is_not_flagged(tmp_path: Path) -> None:
    shots = "      - {id: s01, action: x, duration: 12f}\n"
    path = spec(tmp_path, "", shots, motion="core-smoke")
    plan = compile_plan(load_spec(path))
    assert "requested" not in plan.job("render:a/s01").meta
    assert "!" not in plan_text(plan_summary(plan))


def test_a_scene_frame_count_is_kept_by_spreading_over_its_shots(tmp_path: Path) -> None:
    """120 frames at 24 fps over two shots: nearest lengths join to 117 frames; one shot is
    rounded up instead and the assembly trims the rest, so the scene is 120 frames."""
    shots = "      - {id: s01, action: x}\n      - {id: s02, action: y}\n"
    path = spec(tmp_path, "    frame_count: 120\n", shots)
    plan = compile_plan(load_spec(path))
    renders = [plan.job(f"render:a/s0{i}").expect for i in (1, 2)]
    joined = round(sum(r.seconds for r in renders) * 24)
    assert joined >= 120
    assert sorted(r.frames for r in renders) == [73, 109]  # one up, one down
    scene = plan.job("assemble:a")
    assert scene.expect.frames == 120
    assert scene.meta["trim_frames"] == joined - 120
    assert plan.job("assemble:p").expect.frames == 120
    assert "frame_count 120 kept" in plan_text(plan_summary(plan))


def test_fit_prefers_an_exact_join_over_trimming() -> None:
    # Lengths of 1, 2 or 3 units: 5 units join exactly as 2 + 3 or 3 + 2.
    choices = ((Length(2, 1), Length(3, 1)), (Length(2, 1), Length(3, 1)))
    chosen, trim = fit(5, 1, choices)
    assert (sum(c.frames for c in chosen), trim) == (5, 0)
    chosen, trim = fit(7, 1, choices)  # 6 is the most: nothing longer, nothing to trim
    assert (sum(c.frames for c in chosen), trim) == (6, 0)


def test_fit_trims_the_least() -> None:
    three = (*[options(FRAMEPACK, f, 24, 9) for f in (72, 72)], options(FRAMEPACK, 48, 24, 13))
    chosen, trim = fit(192, 24, three)
    total = round(sum(c.seconds for c in chosen) * 24)
    assert total - trim == 192
    every = [
        round((a.seconds + b.seconds + c.seconds) * 24)
        for a in three[0]
        for b in three[1]
        for c in three[2]
    ]
    assert total == min(t for t in every if t >= 192)


@pytest.mark.slow
def test_the_rendered_scene_has_its_frame_count(tmp_path: Path) -> None:
    """A real `bridge run` (preview backend): scene.mp4 is frame_count frames long, and the
    manifest records requested vs rendered."""
    shots = "      - {id: s01, action: x}\n      - {id: s02, action: y}\n"
    path = spec(tmp_path, "    frame_count: 120\n", shots)
    path.write_text(path.read_text().replace("preset: high", "preset: draft"))
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "run", str(path)],
        cwd=ROOT,
        env=process_env(tmp_path, BRIDGE_BACKEND="preview"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "out" / "p" / "manifest.json").read_text())
    jobs = {j["id"]: j for j in manifest["jobs"]}
    assert jobs["render:a/s01"]["meta"]["requested"]["frames"] == 60
    scene = jobs["assemble:a"]
    assert scene["meta"]["requested"]["frames"] == 120
    assert scene["outputs"][0]["probe"]["frames"] == 120
    page = next((tmp_path / "out" / "p").rglob("report.html")).read_text()
    assert "asked 2.5 s (60 frames at 24 fps), renders 2.43 s" in page
    assert f"the last {scene['meta']['trim_frames']} are trimmed" in page
