"""Cache signatures, priorities and the order ready jobs are handed out in (no processes)."""

from __future__ import annotations

import copy
from pathlib import Path

from bridge import affinity, queue
from bridge import priority as priorities
from bridge.compile import compile_plan
from bridge.spec.validate import load_spec
from bridge.templates import bundled


def keyframe_workflow(ckpt: str = "sd_xl_base_1.0.safetensors", text: str = "a cat") -> dict:
    workflow = copy.deepcopy(dict(bundled()["sdxl-keyframe"].workflow))
    workflow["4"]["inputs"]["ckpt_name"] = ckpt
    workflow["6"]["inputs"]["text"] = text
    return workflow


def test_jobs_sharing_a_checkpoint_overlap_by_its_weight_not_by_their_prompts() -> None:
    a = affinity.signature(keyframe_workflow(text="a cat"))
    b = affinity.signature(keyframe_workflow(text="a dog"))
    shared = affinity.overlap(a, b)
    assert shared >= affinity.WEIGHTS["CheckpointLoaderSimple"]
    assert shared < sum(b.values())  # the positive prompt's encoding differs
    assert affinity.overlap(b, b) == sum(b.values())


def test_a_changed_upstream_input_changes_every_hash_below_it() -> None:
    a = affinity.signature(keyframe_workflow(ckpt="one.safetensors"))
    b = affinity.signature(keyframe_workflow(ckpt="two.safetensors"))
    assert affinity.overlap(a, b) == 0  # the LoRA and encoders hang off the checkpoint
    assert affinity.family(a) != affinity.family(b)


def test_queue_priority_orders_levels_then_takes_turns_then_ages() -> None:
    high, normal = priorities.parse("high"), priorities.parse("normal")
    assert queue.queue_priority(high, 10_000) > queue.queue_priority(normal, 0)
    # two normal runs: the second's first job comes before the first's second job
    assert queue.queue_priority(normal, 0) > queue.queue_priority(normal, 1)
    # a waiting job aged one level beats every fresh job of its old level
    aged = queue.queue_priority(normal, 10_000) + queue.LEVEL
    assert aged > queue.queue_priority(normal, 0)
    assert aged < queue.queue_priority(high, 10_000)  # one level, not a jump past `high`


def test_a_family_is_its_models_not_its_prompts() -> None:
    cat = affinity.signature(keyframe_workflow(text="a cat"))
    dog = affinity.signature(keyframe_workflow(text="a dog"))
    other = affinity.signature(keyframe_workflow(ckpt="two.safetensors"))
    assert affinity.family(cat) == affinity.family(dog)
    assert not affinity.switches(cat, dog)  # re-encoding a prompt is not a model switch
    assert affinity.family(cat) != affinity.family(other)
    assert affinity.switches(cat, other)
    assert affinity.switches({}, cat)  # a server that ran nothing loads everything


def family_plan(tmp_path: Path, jobs: int, families: int):
    shots = "\n".join(
        f"      - {{id: s{i}, action: shot {i}, seed: {i % families + 1},"
        " params: {width: 64, height: 64}}"
        for i in range(jobs)
    )
    spec_file = tmp_path / "f.yaml"
    spec_file.write_text(
        "version: 1\nproject: {id: f}\n"
        "defaults: {preset: draft, fps: 12, motion: core-smoke, duration: 2f}\n"
        "outputs: {assemble: false}\n"
        f"scenes:\n  - id: a\n    shots:\n{shots}\n"
    )
    return compile_plan(load_spec(spec_file))


def test_ready_jobs_of_one_family_are_handed_out_back_to_back(tmp_path: Path) -> None:
    plan = family_plan(tmp_path, 6, 2)
    jobs = list(plan.jobs())
    grouped = [j.shot for j in queue.ordered(jobs, plan, group=True)]
    assert grouped == ["s0", "s2", "s4", "s1", "s3", "s5"]
    assert [j.shot for j in queue.ordered(jobs, plan, group=False)] == [f"s{i}" for i in range(6)]


def test_a_job_family_is_its_heavy_nodes_so_prompts_do_not_split_it() -> None:
    cat, dog = keyframe_workflow(text="a cat"), keyframe_workflow(text="a dog")
    assert affinity.job_family(cat) == affinity.job_family(dog)
    assert affinity.job_family(cat) != affinity.job_family(keyframe_workflow(ckpt="two"))


def test_with_several_servers_each_gets_a_stretch_of_one_family_in_turn(tmp_path: Path) -> None:
    plan = family_plan(tmp_path, 12, 2)  # s0 s2 ... s10 one family, s1 s3 ... s11 the other
    jobs = list(plan.jobs())
    order = [j.shot for j in queue.ordered(jobs, plan, group=True, lanes=3)]
    # grouped: s0 s2 s4 s6 | s8 s10 s1 s3 | s5 s7 s9 s11, then taken in turns
    assert order[:3] == ["s0", "s8", "s5"]
    assert order[3:6] == ["s2", "s10", "s7"]
    assert sorted(order) == sorted(j.shot for j in jobs)
    assert queue.ordered(jobs, plan, group=True, lanes=1) == queue.ordered(jobs, plan, group=True)
