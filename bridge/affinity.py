"""Cache signatures: which expensive node outputs a job shares with what a server ran last.

ComfyUI reuses a node's output only when the prompt it ran just before had the same node
with the same inputs. A node's content hash is computed bottom-up from its class and inputs
(an input linked to another node counts as that node's hash), so two workflows share a hash
exactly where ComfyUI's cache would hit. Only the expensive nodes are kept, weighted by what
a switch costs (a checkpoint load dwarfs a text encode); the overlap of two signatures is
the weight the second job would find already loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.hashing import digest

# Relative cost of (re)computing a node's output: model loads first, then LoRA patching and
# text encoding, and for the core-smoke family the big image ops.
WEIGHTS: Mapping[str, float] = {
    "CheckpointLoaderSimple": 10.0,
    "CheckpointLoader": 10.0,
    "UNETLoader": 10.0,
    "DownloadAndLoadFramePackModel": 10.0,
    "LoadFramePackModel": 10.0,
    "CLIPLoader": 5.0,
    "DualCLIPLoader": 5.0,
    "CLIPVisionLoader": 3.0,
    "VAELoader": 3.0,
    "LoraLoader": 4.0,
    "LoraLoaderModelOnly": 4.0,
    "CLIPTextEncode": 1.0,
    "EmptyImage": 3.0,
    "ImageScale": 3.0,
    "ImageScaleBy": 3.0,
    "ImageUpscaleWithModel": 3.0,
}

Signature = dict[str, float]  # node content hash -> weight

# A node this costly or more is a model (or an image op) a server reloads: missing it is a
# switch. Text encodes weigh less: every shot has its own prompt, and re-encoding it is cheap.
HEAVY = 3.0


def signature(workflow: Mapping[str, Any]) -> Signature:
    """The content hashes of the workflow's expensive nodes, with their weights."""
    hashes: dict[str, str] = {}

    def node_hash(nid: str, trail: frozenset[str] = frozenset()) -> str:
        if nid in hashes:
            return hashes[nid]
        node = workflow[nid]
        inputs = {}
        for key, value in (node.get("inputs") or {}).items():
            linked = (
                isinstance(value, list)
                and len(value) == 2
                and str(value[0]) in workflow
                and str(value[0]) not in trail
            )
            inputs[key] = [node_hash(str(value[0]), trail | {nid}), value[1]] if linked else value
        hashes[nid] = digest([node.get("class_type"), inputs])
        return hashes[nid]

    out: Signature = {}
    for nid, node in workflow.items():
        weight = WEIGHTS.get(str(node.get("class_type")))
        if weight is not None:
            out[node_hash(nid)] = weight
    return out


def overlap(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """The weight of the expensive outputs `b` would find already computed after `a`."""
    return sum(w for h, w in b.items() if h in a)


def heavy(sig: Mapping[str, float]) -> Signature:
    """The models and big image ops of a signature, without its text encodes."""
    return {h: w for h, w in sig.items() if w >= HEAVY}


def switches(last: Mapping[str, float], sig: Mapping[str, float]) -> bool:
    """Whether a server that last ran `last` must reload a model for `sig`."""
    return any(h not in last for h in heavy(sig))


def family(sig: Mapping[str, float]) -> str:
    """A stable key for grouping jobs that share their models (not their prompts)."""
    return digest(sorted(heavy(sig)))[:16]


def job_family(workflow: Mapping[str, Any]) -> str:
    """The family of a job's workflow: the heavy nodes it would find loaded after another
    of its family. Light ones (a text encoding) differ shot by shot and split no family."""
    return family(signature(workflow))
