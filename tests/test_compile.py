from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bridge.compile import compile_plan
from bridge.plan import JobKind, Quality, SeedBinding
from bridge.spec.validate import load_spec

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"


def plan_of(path: Path):
    return compile_plan(load_spec(path))


def test_moonlit_garden_graph_matches_the_seed() -> None:
    plan = plan_of(SPECS / "moonlit-garden.yaml")
    assert list(plan.order) == [
        "keyframe:garden/s01",
        "render:garden/s01",
        "frame:garden/s01",
        "render:garden/s02",
        "assemble:garden",
        "assemble:moonlit-garden",
    ]
    render = plan.job("render:garden/s01")
    inputs = render.workflow["12"]["inputs"]
    assert (inputs["seed"], inputs["steps"], inputs["guidance_scale"]) == (1234, 28, 7.0)
    assert render.workflow["8"]["inputs"]["width"] == 704
    assert render.workflow["2"]["inputs"]["lora"] == "mei_character_v1.safetensors"
    assert render.workflow["2"]["inputs"]["strength"] == 0.85
    prompt = render.workflow["4"]["inputs"]["text"]
    assert prompt.startswith("anime key visual")
    assert "mei_v1" in prompt
    assert render.expect.width == 704
    assert render.expect.fps == 30
    key = plan.job("keyframe:garden/s01").workflow
    assert key["3"]["inputs"]["sampler_name"] == "dpmpp_2m"
    assert key["3"]["inputs"]["scheduler"] == "karras"
    assert plan.job("render:garden/s02").start_image.job == "frame:garden/s01"
    assert plan.job("frame:garden/s01").expect.width == 704


def test_same_spec_compiles_to_identical_bytes(tmp_path: Path) -> None:
    def dump(path: Path) -> str:
        plan = plan_of(path)
        return json.dumps([(j.id, j.hash, j.workflow) for j in plan.jobs()], sort_keys=True)

    first = dump(SPECS / "episode-1.yaml")
    shutil.copy(SPECS / "episode-1.yaml", tmp_path / "episode-1.yaml")
    assert dump(tmp_path / "episode-1.yaml") == first  # hashes do not depend on the folder


def test_unset_seeds_are_derived_from_ids_and_differ() -> None:
    plan = plan_of(SPECS / "smoke.yaml")
    seeds = [j.meta["seed"] for j in plan.jobs() if j.kind is JobKind.RENDER]
    assert len(set(seeds)) == len(seeds)
    assert seeds == [
        j.meta["seed"] for j in plan_of(SPECS / "smoke.yaml").jobs() if j.kind is JobKind.RENDER
    ]


def _hashes(path: Path) -> dict[str, str]:
    return {j.id: j.hash for j in plan_of(path).jobs()}


def test_changing_one_prompt_changes_that_shot_and_what_depends_on_it(tmp_path: Path) -> None:
    text = (SPECS / "moonlit-garden.yaml").read_text()
    spec = tmp_path / "m.yaml"
    spec.write_text(text)
    before = _hashes(spec)
    spec.write_text(text.replace("close-up, Mei looks up", "close-up, Mei smiles"))
    after = _hashes(spec)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"render:garden/s02", "assemble:garden", "assemble:moonlit-garden"}


def test_start_image_bytes_are_part_of_the_hash(tmp_path: Path) -> None:
    png = (ROOT / "tests" / "cases" / "bad" / "files" / "start.png").read_bytes()
    (tmp_path / "start.png").write_bytes(png)
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "version: 1\nproject: {id: p}\n"
        "scenes: [{id: a, shots: [{id: s01, start_image: start.png, duration: 1s}]}]\n"
    )
    before = _hashes(spec)["render:a/s01"]
    (tmp_path / "start.png").write_bytes(png + b"trailing bytes change the file, not the header")
    assert _hashes(spec)["render:a/s01"] != before


def test_filename_prefix_names_project_scene_shot_and_hash() -> None:
    plan = plan_of(SPECS / "smoke.yaml")
    job = next(j for j in plan.jobs() if j.kind is JobKind.RENDER)
    prefix = job.workflow[job.output_node]["inputs"]["filename_prefix"]
    assert prefix == f"bridge/{plan.project}/{job.scene}/{job.shot}/render-{job.hash[:12]}"


@pytest.mark.parametrize("name", ["moonlit-garden", "episode-1", "smoke"])
def test_examples_compile_and_every_job_has_its_own_hash(name: str) -> None:
    """Distinct jobs never share a cache key (one would reuse the other's output)."""
    plan = plan_of(SPECS / f"{name}.yaml")
    hashes = [j.hash for j in plan.jobs()]
    assert len(plan) > 1
    assert len(set(hashes)) == len(hashes)


STILL_SPEC = """\
version: 1
project: {id: p}
templates:
  card: {workflow: card.json, still: true, bind: {width: 1.width, height: 1.height,
    frames: 1.batch_size, seed: {to: 1.color, mod: 16777216}, fps: 2.fps,
    filename_prefix: 3.filename_prefix}}
defaults: {preset: draft, fps: 12, motion: core-smoke, duration: 1s, quality: {threshold: 0}}
scenes:
  - id: a
    shots: [{id: s01, template: card}, {id: s02, quality: {threshold: 0.5, retries: 2}}]
"""


def test_the_runner_gets_typed_seed_and_quality_settings(tmp_path: Path) -> None:
    shutil.copy(ROOT / "bridge" / "templates" / "core-smoke.json", tmp_path / "card.json")
    (tmp_path / "spec.yaml").write_text(STILL_SPEC)
    plan = plan_of(tmp_path / "spec.yaml")
    card, smoke = plan.job("render:a/s01"), plan.job("render:a/s02")
    assert card.quality == Quality(threshold=0.0, retries=0)  # 0 is off, not "the default"
    assert card.seed_bindings == (SeedBinding("1", "color", 16777216),)
    assert card.workflow["1"]["inputs"]["color"] == card.seed % 16777216
    assert smoke.quality == Quality(0.5, 2, detect_black=False, detect_frozen=False)
    assembly = plan.job("assemble:a")
    assert assembly.quality == Quality()
    assert assembly.seed_bindings == ()


def test_a_model_template_gets_the_soft_checks_and_the_default_threshold() -> None:
    plan = plan_of(SPECS / "moonlit-garden.yaml")
    for job_id in ("keyframe:garden/s01", "render:garden/s01"):
        quality = plan.job(job_id).quality
        assert quality.threshold is None  # QUALITY_THRESHOLD decides at run time
        assert (quality.detect_black, quality.detect_frozen) == (True, True)
    assert plan.job("render:garden/s01").seed == 1234
    assert plan.job("frame:garden/s01").quality == Quality()
