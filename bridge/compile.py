"""Spec → Plan: jobs with resolved ComfyUI prompts, expectations and content hashes.

Pure: no network, no database, and no file reads beyond hashing start images. The same
spec always compiles to the same graph, the same workflows and the same hashes.

A job's hash covers everything that determines its output: the template's own hash, the
parameters injected into it, the LoRAs, what it must produce, its start image's bytes (or
the hash of the job that makes that image), and the hashes of its inputs. Because
injection is deterministic, hashing those inputs is the same as hashing the workflow, and
far cheaper than serialising every workflow.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import networkx as nx

from bridge import gcpause, lengths
from bridge.hashing import HASH_VERSION, derive_seed, digest, file_digest
from bridge.plan import Job, JobKind, Media, Plan, Quality, SeedBinding, StartImage
from bridge.presets import PRESETS
from bridge.spec.model import Scene, Shot, Spec
from bridge.templates import Template, inject


@dataclass
class _Draft:
    id: str
    kind: JobKind
    scene: str | None
    shot: str | None
    expect: Media
    deps: list[str] = field(default_factory=list)
    template: Template | None = None
    params: dict[str, Any] = field(default_factory=dict)
    loras: tuple[tuple[str, float], ...] = ()
    start: StartImage | None = None
    seed: int | None = None
    quality: Quality = field(default_factory=Quality)
    meta: dict[str, Any] = field(default_factory=dict)


def compile_plan(spec: Spec) -> Plan:
    with gcpause.paused():
        return _compile(spec)


def _compile(spec: Spec) -> Plan:
    drafts: dict[str, _Draft] = {}
    project = spec.project.id
    scene_jobs: list[str] = []
    for scene in spec.scenes:
        chosen, trim = lengths.for_scene(scene, spec.templates)
        renders = [
            _shot_jobs(spec, scene, shot, drafts, length)
            for shot, length in zip(scene.shots, chosen, strict=True)
        ]
        if spec.assemble:
            scene_jobs.append(_assemble_scene(spec, scene, renders, drafts, trim))
    for d in drafts.values():
        if d.kind is JobKind.FRAME:
            src = drafts[d.deps[0]].expect
            d.expect = Media("image", src.width, src.height)
    if spec.assemble and scene_jobs:
        first = drafts[scene_jobs[0]].expect
        fps = first.fps or 24.0
        seconds = sum(drafts[j].expect.seconds or 0.0 for j in scene_jobs)
        drafts[f"assemble:{project}"] = _Draft(
            id=f"assemble:{project}",
            kind=JobKind.ASSEMBLE,
            scene=None,
            shot=None,
            expect=Media("video", first.width, first.height, fps, round(seconds * fps), 1),
            deps=scene_jobs,
            meta={"project": project, "title": spec.project.title, "inputs": scene_jobs},
        )

    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_nodes_from(drafts)
    graph.add_edges_from((dep, d.id) for d in drafts.values() for dep in d.deps)
    order = _order(drafts)
    hashes: dict[str, str] = {}
    template_hashes = {
        name: digest(
            {
                "workflow": t.workflow,
                "bind": {k: [asdict(b) for b in v] for k, v in t.bind.items()},
                "lora": asdict(t.lora) if t.lora else None,
                "output": t.output,
            }
        )
        for name, t in spec.templates.items()
    }
    for job_id in order:
        job = _finish(spec, drafts[job_id], hashes, template_hashes)
        hashes[job_id] = job.hash
        graph.nodes[job_id]["job"] = job
    return Plan(
        project=project,
        graph=graph,
        order=order,
        meta={"spec": spec.file, "revision": spec.revision, "title": spec.project.title},
    )


def _order(drafts: Mapping[str, _Draft]) -> tuple[str, ...]:
    """Dependencies first, ties in the order jobs were drafted (the spec's order): Kahn's
    algorithm on positions, several times faster than networkx's keyed sort on 20,000 jobs."""
    ids = list(drafts)
    position = {job_id: i for i, job_id in enumerate(ids)}
    waiting = [len(drafts[job_id].deps) for job_id in ids]
    needed_by: list[list[int]] = [[] for _ in ids]
    for i, job_id in enumerate(ids):
        for dep in drafts[job_id].deps:
            needed_by[position[dep]].append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(ids[i])
        for j in needed_by[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(ids):
        raise ValueError("the plan's dependencies loop; the validator should have refused it")
    return tuple(order)


def _shot_jobs(
    spec: Spec, scene: Scene, shot: Shot, drafts: dict[str, _Draft], length: lengths.Length
) -> str:
    """Add the render job of a shot, with the keyframe and frame jobs it needs."""
    preset = PRESETS[shot.preset]
    p = shot.params
    template = spec.templates[shot.template]
    asked = shot.frames or preset.frames
    frames, fps = length.frames, length.fps
    context = int(p.get("context", preset.context))
    width, height = int(p.get("width", preset.width)), int(p.get("height", preset.height))
    characters = [spec.characters[c] for c in shot.characters]
    lora_scale = preset.lora_scale * float(p.get("lora_scale", 1.0))
    loras = tuple(
        (c.lora.file, round(c.lora.strength * lora_scale, 4)) for c in characters if c.lora
    )
    prompt = shot.prompt or _join(
        spec.project.style,
        scene.visual_description,
        *(c.design_prompt for c in characters),
        *(w for c in characters for w in c.trigger_words),
        shot.action,
        shot.camera,
    )
    negative = _join(spec.project.negative, shot.negative)
    seed = shot.seed if shot.seed is not None else derive_seed(spec.project.id, scene.id, shot.id)
    sampling = {
        "steps": int(p.get("steps", preset.steps)),
        "cfg": float(p.get("cfg", preset.cfg)),
        "sampler": p.get("sampler", preset.sampler),
        "scheduler": p.get("scheduler", preset.scheduler),
        "denoise": float(p.get("denoise", preset.denoise)),
    }
    meta = {
        "project": spec.project.id,
        "project_title": spec.project.title,
        "scene_title": scene.title,
        "action": shot.action,
        "camera": shot.camera,
        "characters": [c.name for c in characters],
        "preset": shot.preset,
        "seed": seed,
        "prompt": prompt,
        "negative": negative,
        "seconds": round(frames / fps, 4),
    }
    render_id = f"render:{shot.key}"
    render = _Draft(
        id=render_id,
        kind=JobKind.RENDER,
        scene=scene.id,
        shot=shot.id,
        expect=Media("video", width, height, fps, frames, template.frames_tolerance),
        template=template,
        params={
            "prompt": prompt,
            "negative": negative,
            "seed": seed,
            **sampling,
            "width": width,
            "height": height,
            "frames": frames,
            "fps": fps,
            "seconds": round(frames / fps, 4),
            "context": context,
        },
        loras=loras,
        seed=seed,
        quality=_quality(shot, template),
        meta={**meta, "template": template.name},
    )
    if abs(asked / shot.fps - frames / fps) > 1e-6:
        # The model cannot make the length asked: plan, manifest and report say so.
        render.meta["requested"] = {
            "frames": asked,
            "fps": shot.fps,
            "seconds": round(asked / shot.fps, 4),
        }
    start = template.bind.get("start_image")
    if start:
        node, input_name = start[0].node, start[0].input
        if shot.start_image:
            render.start = StartImage(node, input_name, file=str(spec.folder / shot.start_image))
        elif shot.continue_from:
            source = "/".join(shot.continue_from)
            frame_id = f"frame:{source}"
            if frame_id not in drafts:  # its size is filled in once every render exists
                drafts[frame_id] = _Draft(
                    id=frame_id,
                    kind=JobKind.FRAME,
                    scene=shot.continue_from[0],
                    shot=shot.continue_from[1],
                    expect=Media("image", 0, 0),
                    deps=[f"render:{source}"],
                )
            render.start = StartImage(node, input_name, job=frame_id)
            render.deps.append(frame_id)
        else:
            key_template = spec.templates[shot.keyframe]
            key_id = f"keyframe:{shot.key}"
            drafts[key_id] = _Draft(
                id=key_id,
                kind=JobKind.KEYFRAME,
                scene=scene.id,
                shot=shot.id,
                expect=Media("image", width, height),
                template=key_template,
                params={
                    "prompt": prompt,
                    "negative": negative,
                    "seed": seed,
                    **sampling,
                    "width": width,
                    "height": height,
                },
                loras=loras,
                seed=seed,
                quality=_quality(shot, key_template),
                meta={**meta, "template": key_template.name},
            )
            render.start = StartImage(node, input_name, job=key_id)
            render.deps.append(key_id)
    render.deps.extend(f"render:{a}/{b}" for a, b in shot.after)
    drafts[render_id] = render
    return render_id


def _quality(shot: Shot, template: Template) -> Quality:
    judged = not template.still
    return Quality(
        threshold=shot.quality_threshold,
        retries=shot.quality_retries,
        detect_black=judged,
        detect_frozen=judged,
    )


def _assemble_scene(
    spec: Spec, scene: Scene, renders: list[str], drafts: dict[str, _Draft], trim: int
) -> str:
    """`trim`: frames over the scene's frame_count that its shots' lengths could not avoid,
    cut from the end of the joined scene."""
    first = drafts[renders[0]].expect
    seconds = sum(drafts[r].expect.seconds or 0.0 for r in renders)
    joined = round(seconds * scene.fps)
    job_id = f"assemble:{scene.id}"
    meta: dict[str, Any] = {"project": spec.project.id, "title": scene.title, "inputs": renders}
    if scene.frame_count:
        meta["requested"] = {"frames": scene.frame_count, "fps": scene.fps}
        meta["joined_frames"] = joined
        meta["trim_frames"] = trim
    drafts[job_id] = _Draft(
        id=job_id,
        kind=JobKind.ASSEMBLE,
        scene=scene.id,
        shot=None,
        expect=Media("video", first.width, first.height, scene.fps, joined - trim, 1),
        deps=list(renders),
        params={"trim_frames": trim} if trim else {},
        meta=meta,
    )
    return job_id


def _finish(
    spec: Spec, d: _Draft, hashes: Mapping[str, str], template_hashes: Mapping[str, str]
) -> Job:
    template = d.template
    start: Any = None
    if d.start is not None:
        start = file_digest(d.start.file) if d.start.file else hashes[d.start.job or ""]
    job_hash = digest(
        {
            "v": HASH_VERSION,
            "kind": d.kind.value,
            "template": template_hashes[template.name] if template else None,
            "params": d.params,
            "loras": d.loras,
            "expect": _media_key(d.expect),
            "start": start,
            "deps": [hashes[dep] for dep in d.deps],
        }
    )
    workflow: dict[str, Any] = {}
    if template is not None:
        prefix = f"bridge/{spec.project.id}/{d.scene}/{d.shot}/{d.kind.value}-{job_hash[:12]}"
        workflow = inject(template, {**d.params, "filename_prefix": prefix}, d.loras)
    return Job(
        id=d.id,
        kind=d.kind,
        scene=d.scene,
        shot=d.shot,
        template=template.name if template else None,
        workflow=workflow,
        expect=d.expect,
        hash=job_hash,
        deps=tuple(d.deps),
        start_image=d.start,
        output_node=template.output if template else None,
        seed=d.seed,
        seed_bindings=tuple(
            SeedBinding(b.node, b.input, b.mod) for b in template.bind.get("seed", ())
        )
        if template
        else (),
        quality=d.quality,
        meta=d.meta,
    )


def _media_key(m: Media) -> tuple[Any, ...]:
    return (m.kind, m.width, m.height, m.fps, m.frames, m.frame_tolerance)


def _join(*parts: str) -> str:
    return ", ".join(p.strip() for p in parts if p and p.strip())
