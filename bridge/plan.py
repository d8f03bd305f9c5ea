"""The compiled plan: jobs as plain frozen data on a networkx graph.

Edges point from a job to the jobs that need its output:

    keyframe:garden/s01 ──▶ render:garden/s01 ──▶ frame:garden/s01 ──▶ render:garden/s02
                                   │                                          │
                                   └──────────────▶ assemble:garden ◀─────────┘
                                                          │
                                                          ▼
                                               assemble:moonlit-garden
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any, Literal

import networkx as nx


class JobKind(StrEnum):
    KEYFRAME = "keyframe"  # a still, txt2img with the characters' LoRAs, to start a video from
    RENDER = "render"  # a video shot on a ComfyUI template
    FRAME = "frame"  # the last frame of a rendered shot, for the next shot's continue_from
    ASSEMBLE = "assemble"  # a scene from its shots, or the project from its scenes

    @property
    def remote(self) -> bool:
        """Whether a render backend runs this kind; the others are local ffmpeg work."""
        return self in (JobKind.KEYFRAME, JobKind.RENDER)


@dataclass(frozen=True, slots=True)
class Media:
    """What an output must be; probes check files against it."""

    kind: Literal["video", "image"]
    width: int
    height: int
    fps: float | None = None
    frames: int | None = None
    frame_tolerance: int = 0  # FramePack's section-based length is only approximate

    @property
    def seconds(self) -> float | None:
        if self.fps and self.frames:
            return self.frames / self.fps
        return None


@dataclass(frozen=True, slots=True)
class StartImage:
    """Where a job's start frame comes from, and which workflow input receives its name.

    Exactly one of `file` (a spec-relative image, already resolved inside the spec folder)
    and `job` (an upstream keyframe or frame job) is set.
    """

    node: str
    input: str
    file: str | None = None
    job: str | None = None


@dataclass(frozen=True, slots=True)
class SeedBinding:
    """A workflow input the seed is bound to; a quality retry writes a new seed there."""

    node: str
    input: str
    mod: int | None = None  # the input's range, for nodes whose seed is e.g. a colour


@dataclass(frozen=True, slots=True)
class Quality:
    """How a job's main output is judged, decided by the compiler.

    `threshold` None means the QUALITY_THRESHOLD setting; 0 switches the score gate off.
    The soft checks (a black or a frozen picture) judge what a model made, so they are off
    for frames and assemblies, whose inputs were checked already, and for templates that
    are still by design.
    """

    threshold: float | None = None
    retries: int = 0  # renders again with a new seed when the checks fail
    detect_black: bool = False
    detect_frozen: bool = False


@dataclass(frozen=True)
class Job:
    id: str  # "render:garden/s02", unique in the plan
    kind: JobKind
    scene: str | None
    shot: str | None
    template: str | None  # None for local jobs
    workflow: Mapping[str, Any] = field(hash=False, compare=False)  # ComfyUI API prompt
    expect: Media | None
    hash: str  # content hash: the cache key over everything that determines the output
    deps: tuple[str, ...] = ()
    start_image: StartImage | None = None
    output_node: str | None = None  # the workflow node whose output is this job's result
    seed: int | None = None
    seed_bindings: tuple[SeedBinding, ...] = ()
    quality: Quality = Quality()
    # what the job is about, for people: manifest, preview cards; nothing decides on it
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Plan:
    project: str
    graph: nx.DiGraph[str] = field(hash=False, compare=False)
    order: tuple[str, ...] = ()  # a deterministic topological order
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def job(self, job_id: str) -> Job:
        return self._jobs[job_id]

    @cached_property
    def _jobs(self) -> dict[str, Job]:
        """The jobs by id: a plan's graph is complete when the plan is made, and a NodeView
        lookup per call costs more than the rest of `bridge plan`'s bookkeeping."""
        return {job_id: data["job"] for job_id, data in self.graph.nodes(data=True)}

    def jobs(self) -> Iterator[Job]:
        for job_id in self.order:
            yield self.job(job_id)

    def __len__(self) -> int:
        return len(self.order)
