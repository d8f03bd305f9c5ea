"""`make bench`: timings that matter, as medians over repeated runs, on this machine.

    python -m tests.bench [compile] [...]

Each benchmark runs in a fresh subprocess where peak memory matters, so the figures are
those a user would see from a command, not from a warmed-up test process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

BENCHES: dict[str, Callable[[argparse.Namespace], dict[str, object]]] = {}


def bench(
    fn: Callable[[argparse.Namespace], dict[str, object]],
) -> Callable[..., dict[str, object]]:
    BENCHES[fn.__name__.removeprefix("bench_")] = fn
    return fn


def big_spec(shots: int, scenes: int = 100) -> dict[str, object]:
    """A realistic large production: LoRA characters, continue_from chains, overrides."""
    per_scene = shots // scenes
    characters = {
        f"c{i}": {
            "name": f"Character {i}",
            "design_prompt": f"character {i}, distinctive outfit {i}",
            "lora": {"file": f"char_{i}_v1.safetensors", "strength": 0.8},
        }
        for i in range(8)
    }
    scene_list = []
    for s in range(scenes):
        shot_list = []
        for k in range(per_scene):
            shot: dict[str, object] = {
                "id": f"s{k:03d}",
                "action": f"scene {s} shot {k}: the characters move through the set",
                "camera": "slow pan left" if k % 2 else "static wide",
                "duration": "2s",
            }
            if k % 3 == 1:
                shot["continue_from"] = f"s{k - 1:03d}"
            if k % 10 == 9:
                shot["preset"] = "ultra"
                shot["params"] = {"steps": 40}
            shot_list.append(shot)
        scene_list.append(
            {
                "id": f"scene{s:03d}",
                "title": f"Scene {s}",
                "visual_description": f"set {s}, evening light",
                "characters": [f"c{s % 8}", f"c{(s + 1) % 8}"],
                "shots": shot_list,
            }
        )
    return {
        "version": 1,
        "project": {"id": "bench", "title": "Bench", "style": "anime", "negative": "lowres"},
        "defaults": {"preset": "high", "fps": 24},
        "characters": characters,
        "scenes": scene_list,
    }


def median_of(samples: list[float]) -> str:
    return f"{statistics.median(samples):.3f} s (min {min(samples):.3f}, n={len(samples)})"


_COMPILE_CHILD = """
import resource, sys, time
t = time.perf_counter()
from bridge.compile import compile_plan
from bridge.spec.validate import load_spec
plan = compile_plan(load_spec(sys.argv[1]))
elapsed = time.perf_counter() - t
print(elapsed, len(plan), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@bench
def bench_compile(args: argparse.Namespace) -> dict[str, object]:
    """validate + compile of a generated 10,000-shot spec (goal: < 2 s median, < 300 MB)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.yaml"
        path.write_text(yaml.safe_dump(big_spec(args.shots), sort_keys=False))
        times, peaks, jobs = [], [], 0
        for _ in range(args.repeat):
            out = subprocess.run(
                [sys.executable, "-c", _COMPILE_CHILD, str(path)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            times.append(float(out[0]))
            jobs = int(out[1])
            peaks.append(int(out[2]) / 1024)
        return {
            "shots": args.shots,
            "jobs": jobs,
            "spec_bytes": path.stat().st_size,
            "validate+compile median": median_of(times),
            "peak RSS (whole process) MB": round(statistics.median(peaks), 1),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("which", nargs="*", choices=[*BENCHES, []], metavar="BENCH")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--shots", type=int, default=10_000)
    args = parser.parse_args(argv)
    for name in args.which or list(BENCHES):
        started = time.perf_counter()
        figures = BENCHES[name](args)
        figures["bench wall"] = f"{time.perf_counter() - started:.1f} s"
        print(f"== {name}: {BENCHES[name].__doc__}")
        print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
