"""`make bench`: timings that matter, as medians over repeated runs, on this machine.

    python -m tests.bench [compile] [...]

Each benchmark runs in a fresh subprocess where peak memory matters, so the figures are
those a user would see from a command, not from a warmed-up test process.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
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


def episode_spec(shots: int, per_scene: int = 100) -> dict[str, object]:
    """A production shaped like specs/episode-1.yaml, scaled up: two LoRA characters (one
    with trigger words), sdxl-keyframe + framepack-i2v, continue_from chains inside and
    across scenes, `after` orderings, frame_count scenes, preset and params overrides."""
    characters = {
        "mei": {
            "name": "Mei",
            "design_prompt": "mei, 1girl, short black hair, red ribbon, yukata",
            "lora": {"file": "characters/mei_character_v1.safetensors", "strength": 0.85},
            "traits": {"age": 16},
        },
        "haru": {
            "name": "Haru",
            "design_prompt": "haru, 1boy, messy brown hair, blue jinbei",
            "trigger_words": ["haru_v2"],
            "lora": {"file": "haru_character_v2.safetensors", "strength": 0.7},
            "traits": {"age": 17},
        },
    }
    scene_list: list[dict[str, object]] = []
    for s in range(max(1, shots // per_scene)):
        shot_list: list[dict[str, object]] = []
        for k in range(per_scene):
            shot: dict[str, object] = {
                "id": f"s{k + 1:03d}",
                "action": f"scene {s} shot {k}: Mei and Haru walk between the stalls",
                "camera": ("tracking shot", "medium shot", "crane down")[k % 3],
                "duration": ("2s", "3s", "48f")[k % 3],
            }
            if k % 4:
                shot["continue_from"] = f"s{k:03d}"
            elif k == 0 and s:
                shot["continue_from"] = f"scene{s - 1:03d}/s{per_scene:03d}"
            if k % 10 == 7:
                shot["after"] = [f"s{k - 6:03d}"]
            if k % 25 == 24:
                shot["preset"] = "ultra"
                shot["params"] = {"steps": 40}
            if k % 5 == 2:
                shot["characters"] = ["haru"]
            shot_list.append(shot)
        scene: dict[str, object] = {
            "id": f"scene{s:03d}",
            "title": f"Scene {s}",
            "description": "Mei and Haru at the festival",
            "visual_description": f"festival street {s} at dusk, paper lanterns",
            "characters": ["mei", "haru"],
            "shots": shot_list,
        }
        if s % 3 == 0:
            scene["preset"] = "draft"
        scene_list.append(scene)
    return {
        "version": 1,
        "project": {
            "id": "lantern-festival",
            "title": "Lantern Festival",
            "style": "anime key visual, soft cel shading, warm evening light",
            "negative": "lowres, watermark, text, extra fingers",
        },
        "defaults": {
            "preset": "high",
            "fps": 24,
            "motion": "framepack-i2v",
            "keyframe": "sdxl-keyframe",
        },
        "characters": characters,
        "scenes": scene_list,
    }


def _process_times(
    command: list[str], repeat: int, env: dict[str, str]
) -> tuple[list[float], list[float]]:
    """Wall time and peak RSS (MB) of whole processes, interpreter start included."""
    times, peaks = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        times.append(time.perf_counter() - started)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(command)} exited {proc.returncode}")
        peaks.append(usage.ru_maxrss / 1024)
    return times, peaks


@bench
def bench_episode(args: argparse.Namespace) -> dict[str, object]:
    """`bridge validate` and `bridge plan --format json` of a 10,000-shot episode-shaped spec,
    whole processes (goal: plan < 2 s median, validate < 1 s, peak < 300 MB)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "episode.yaml"
        path.write_text(yaml.safe_dump(episode_spec(args.shots), sort_keys=False))
        env = {**os.environ, "OUTPUT_PATH": str(Path(tmp) / "out")}
        figures: dict[str, object] = {"shots": args.shots, "spec_bytes": path.stat().st_size}
        for name, command in (
            ("validate", [sys.executable, "-m", "bridge", "validate", str(path)]),
            ("plan", [sys.executable, "-m", "bridge", "plan", "--format", "json", str(path)]),
        ):
            times, peaks = _process_times(command, args.repeat, env)
            figures[f"{name} median"] = median_of(times)
            figures[f"{name} peak RSS MB"] = round(max(peaks), 1)
        return figures


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


def _start_sims(count: int, job_seconds: float) -> tuple[list[subprocess.Popen], list[str]]:
    procs, urls = [], []
    for _ in range(count):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.sim.comfyui", "--job-seconds", str(job_seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = proc.stdout.readline().strip()  # type: ignore[union-attr]
        procs.append(proc)
        urls.append(line.removeprefix("listening on "))
    return procs, urls


def _spans(url: str, since_ms: int) -> list[tuple[float, float]]:
    """A server's executions since `since_ms` (start, end in seconds), from /history."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/history?max_items=100000") as resp:
        history = json.load(resp)
    spans = []
    for entry in history.values():
        stamps = [m[1]["timestamp"] for m in entry["status"]["messages"] if "timestamp" in m[1]]
        if stamps and min(stamps) >= since_ms:
            spans.append((min(stamps) / 1000, max(stamps) / 1000))
    return sorted(spans)


def _busy_seconds(urls: list[str], since_ms: int) -> float:
    """Sum over servers of execution time (execution_start to the end)."""
    return sum(end - start for url in urls for start, end in _spans(url, since_ms))


def _idle_seconds(urls: list[str], since_ms: int) -> list[float]:
    """Each server's time between one execution's end and the next one's start: what the
    scheduling left idle (a model switch's delay included), apart from the start and end."""
    idle = []
    for url in urls:
        spans = _spans(url, since_ms)
        idle.append(sum(max(0.0, b[0] - a[1]) for a, b in itertools.pairwise(spans)))
    return idle


def _small_spec(folder: Path, jobs: int, *, assemble: bool = False) -> Path:
    """Tiny core-smoke shots (64x64, 2 frames), ten to a scene."""
    scenes = []
    for start in range(0, jobs, 10):
        shots = "\n".join(
            f"      - {{id: s{i:03d}, action: shot {i}, params: {{width: 64, height: 64}}}}"
            for i in range(start, min(jobs, start + 10))
        )
        scenes.append(f"  - id: c{start // 10:03d}\n    shots:\n{shots}\n")
    path = folder / "util.yaml"
    path.write_text(
        "version: 1\nproject: {id: util}\n"
        "defaults: {preset: draft, fps: 12, motion: core-smoke, duration: 2f}\n"
        f"outputs: {{assemble: {str(assemble).lower()}, report: false}}\n"
        "scenes:\n" + "".join(scenes)
    )
    return path


@bench
def bench_utilisation(args: argparse.Namespace) -> dict[str, object]:
    """3 simulated servers, 300 jobs of 0.2 s: bridge vs a naive submit-wait-download loop
    per server. Utilisation = sum of job time / (servers x makespan); goal 0.97."""
    import asyncio
    import uuid

    from bridge.backends.base import Attempt
    from bridge.backends.comfyui import ComfyUIBackend
    from bridge.compile import compile_plan
    from bridge.runner import Runner
    from bridge.settings import Settings
    from bridge.spec.validate import load_spec

    servers, jobs, seconds = 3, args.jobs, 0.2
    procs, urls = _start_sims(servers, seconds)
    figures: dict[str, object] = {"servers": servers, "jobs": jobs, "job seconds": seconds}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            spec = load_spec(_small_spec(folder, jobs))
            plan = compile_plan(spec)

            async def with_bridge() -> float:
                settings = Settings(
                    comfyui_urls=tuple(urls),
                    output_path=folder / "out",
                    database_url=f"sqlite:///{folder / 'b.db'}",
                    backend="comfyui",
                    max_concurrent_jobs=2 * servers,
                )
                runner = Runner(settings)
                await runner.backend()
                started = time.time()
                report = await runner.run(spec, plan)
                await runner.close()
                assert report.ok, report.errors
                return time.time() - started

            async def naive(seed_offset: int) -> float:
                backends = [ComfyUIBackend(u, slots=1) for u in urls]
                for b in backends:
                    await b.start()
                renders = list(plan.jobs())

                async def loop(b: ComfyUIBackend, share: list) -> None:
                    for job in share:
                        wf = {k: dict(v, inputs=dict(v["inputs"])) for k, v in job.workflow.items()}
                        wf["1"]["inputs"]["color"] = (
                            wf["1"]["inputs"]["color"] + seed_offset
                        ) % 2**24
                        await b.execute(
                            Attempt(job, str(uuid.uuid4()), folder / "naive", workflow=wf),
                            lambda p: None,
                        )

                started = time.time()
                await asyncio.gather(
                    *(loop(b, renders[i::servers]) for i, b in enumerate(backends))
                )
                elapsed = time.time() - started
                for b in backends:
                    await b.close()
                return elapsed

            for name, fn in (("bridge", with_bridge), ("naive", lambda: naive(7))):
                since = int(time.time() * 1000)
                makespan = asyncio.run(fn())
                busy = _busy_seconds(urls, since)
                figures[f"{name} makespan s"] = round(makespan, 2)
                figures[f"{name} utilisation"] = round(busy / (servers * makespan), 3)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
    return figures


def _family_spec(folder: Path, jobs: int, families: int, name: str, priority: str = "") -> Path:
    """core-smoke shots whose expensive node (EmptyImage: size, length, colour) is one of
    `families`, written interleaved A, B, C, D, A, ... as a spec author would."""
    shots = "\n".join(
        f"      - {{id: s{i:04d}, action: shot {i}, seed: {i % families + 1},"
        " params: {width: 64, height: 64}}"
        for i in range(jobs)
    )
    path = folder / f"{name}.yaml"
    path.write_text(
        f"version: 1\nproject: {{id: {name}}}\n"
        + (f"priority: {priority}\n" if priority else "")
        + "defaults: {preset: draft, fps: 12, motion: core-smoke, duration: 2f}\n"
        "outputs: {assemble: false, report: false}\n"
        f"scenes:\n  - id: all\n    shots:\n{shots}\n"
    )
    return path


class _Farm:
    """A fresh PostgreSQL database, simulated servers and `bridge worker` processes."""

    def __init__(self, servers: int, workers: int, job_s: float, switch_s: float, **env: str):
        import uuid

        import psycopg

        self.db = f"bridge_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(_PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.db}"')
        self.url = f"postgresql://postgres@127.0.0.1:5432/{self.db}"
        self.tmp = tempfile.TemporaryDirectory()
        self.folder = Path(self.tmp.name)
        self.sims: list[subprocess.Popen] = []
        self.urls: list[str] = []
        for _ in range(servers):
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "tests.sim.comfyui", "--job-seconds", str(job_s)),
                    *("--switch-seconds", str(switch_s)),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            self.sims.append(proc)
            self.urls.append(proc.stdout.readline().strip().removeprefix("listening on "))  # type: ignore[union-attr]
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "COMFYUI_"))},
            "DATABASE_URL": self.url,
            "COMFYUI_URL": ",".join(self.urls),
            "OUTPUT_PATH": str(self.folder / "out"),
            "MAX_CONCURRENT_JOBS": str(2 * servers),
            "BRIDGE_LEASE_SECONDS": "30",
            "LOG_LEVEL": "WARNING",
            **env,
        }
        self.workers = [
            subprocess.Popen(
                [sys.executable, "-m", "bridge", "worker", "--name", f"w{i}"],
                env=self.env,
                stdout=subprocess.DEVNULL,
            )
            for i in range(workers)
        ]

    def serving(self, timeout: float = 60.0) -> None:
        """Wait until every worker is registered (set up and taking jobs), then a second
        more for its start to settle: three workers starting at once on this two-core host
        took up to 3.6 s, so a fixed pause let a run start while they still set up."""
        import psycopg

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ended = [proc.returncode for proc in self.workers if proc.poll() is not None]
            if ended:
                raise RuntimeError(f"a worker exited with {ended[0]} as the farm started")
            with contextlib.suppress(psycopg.Error):  # the tables may not exist yet
                if len(self.query("SELECT 1 FROM workers")) >= len(self.workers):
                    time.sleep(1.0)
                    return
            time.sleep(0.05)
        raise TimeoutError(f"{len(self.workers)} workers did not all start in {timeout:.0f} s")

    def workers_cpu(self) -> float:
        """CPU seconds the worker processes and their ffprobes have used so far."""
        return sum(_cpu_seconds(proc.pid, children=True) for proc in self.workers)

    def submit(self, spec: Path, *extra: str) -> int:
        out = subprocess.run(
            [sys.executable, "-m", "bridge", "submit", str(spec), *extra],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.strip())

    def query(self, sql: str, *params: object) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url) as conn:
            return list(conn.execute(sql, params).fetchall())

    def wait(self, run_id: int, timeout: float = 3600) -> float:
        """The run's makespan in seconds, from submit to its last job's end."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.query(
                "SELECT status, EXTRACT(EPOCH FROM finished_at - started_at) FROM runs "
                "WHERE id = %s",
                run_id,
            )[0]
            if row[0] != "running":
                assert row[0] == "succeeded", row
                return float(row[1])
            time.sleep(0.5)
        raise TimeoutError(run_id)

    def transactions(self) -> int:
        """Transactions in the farm's database so far, as PostgreSQL counts them: committed
        and rolled back (a read in a transaction of its own ends in a rollback; one in
        autocommit counts as committed)."""
        import psycopg

        time.sleep(1.5)  # a backend reports its counts at most once a second
        with psycopg.connect(_PG_ADMIN) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                (self.db,),
            ).fetchone()
        return int(row[0]) if row else 0

    def sim(self, key: str) -> list:
        import urllib.request

        out = []
        for url in self.urls:
            with urllib.request.urlopen(f"{url}/_sim") as resp:
                out.append(json.load(resp)[key])
        return out

    def close(self) -> None:
        import psycopg

        for proc in self.workers + self.sims:
            proc.terminate()
        for proc in self.workers + self.sims:
            proc.wait()
        with psycopg.connect(_PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        self.tmp.cleanup()


_PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User and system CPU of a live process, with its reaped children's if asked."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11 : 15 if children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def _postgres_cpu() -> float:
    """CPU seconds of the whole PostgreSQL cluster so far: the postmaster with its reaped
    backends, and the backends alive now."""
    import psycopg

    with psycopg.connect(_PG_ADMIN) as conn:  # its backend's parent, read while it lives
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        master = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
    total = _cpu_seconds(master, children=True)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == master:
                total += _cpu_seconds(int(stat.parent.name))
    return total


def _postgres_answers() -> bool:
    import psycopg

    try:
        psycopg.connect(_PG_ADMIN, connect_timeout=2).close()
    except psycopg.Error:
        return False
    return True


@bench
def bench_workers(args: argparse.Namespace) -> dict[str, object]:
    """`bridge worker`s on PostgreSQL, 6 simulated servers (2 slots each), jobs in 4 model
    families written interleaved; job and switch times scaled by --scale (1.0: 1 s jobs,
    2 s switches); medians of --farm-repeat rounds. Utilisation = sum of job time /
    (makespan x servers), switch time not counted as work; switches as counted by the
    servers; a job's mean execution time on the servers (1 s: the simulator spends its own
    ffmpeg inside it, as a GPU's time does not stretch with this host's load) and the most
    time a server spent idle between two prompts;
    CPU of the worker processes (their ffprobes included) and of PostgreSQL over the run,
    which on one host is taken from the servers; the transactions per job in the farm's
    database, committed or rolled back (the queue's and read-only ones included:
    PostgreSQL's count)."""
    servers, families, jobs = 6, 4, args.jobs
    job_s, switch_s = 1.0 * args.scale, 2.0 * args.scale
    figures: dict[str, object] = {"servers": servers, "jobs": jobs, "job s": job_s}
    figures["switch s"] = switch_s
    cases = [
        ("3 workers, affinity", 3, "1"),
        ("3 workers, no affinity", 3, "0"),
        ("1 worker, affinity", 1, "1"),
    ]
    rounds: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in cases}
    for r in range(args.farm_repeat):
        for label, workers, affinity in cases[r % len(cases) :] + cases[: r % len(cases)]:
            farm = _Farm(servers, workers, job_s, switch_s, BRIDGE_AFFINITY=affinity)
            try:
                farm.serving()
                since = int(time.time() * 1000)
                cpu, database, commits = farm.workers_cpu(), _postgres_cpu(), farm.transactions()
                run_id = farm.submit(_family_spec(farm.folder, jobs, families, "fam"))
                makespan = farm.wait(run_id)
                cpu, database = farm.workers_cpu() - cpu, _postgres_cpu() - database
                commits = farm.transactions() - commits
                busy = _busy_seconds(farm.urls, since)
                rounds[label].append(
                    {
                        "makespan s": makespan,
                        "utilisation": busy / (servers * makespan),
                        "execution s per job": busy / jobs,
                        "idle between prompts s, most of a server": max(
                            _idle_seconds(farm.urls, since)
                        ),
                        "switches": sum(farm.sim("switches")),
                        "workers CPU s": cpu,
                        "PostgreSQL CPU s": database,
                        "transactions per job": commits / jobs,
                    }
                )
            finally:
                farm.close()
    for label, results in rounds.items():
        figures.update(_medians(f"{label}:", results, list(results[0])))
    farm = _Farm(servers, 3, job_s, switch_s)
    try:
        farm.serving()
        normal = farm.submit(_family_spec(farm.folder, 500, families, "normal"))
        while not farm.query(
            "SELECT 1 FROM jobs WHERE run_id = %s AND state = 'succeeded'", normal
        ):
            time.sleep(0.2)
        spec = _family_spec(farm.folder, 1, 1, "urgent")
        started = time.time()
        high = farm.submit(spec, "--priority", "high")
        while True:
            row = farm.query(
                "SELECT EXTRACT(EPOCH FROM submitted_at) FROM jobs WHERE run_id = %s", high
            )
            if row and row[0][0] is not None:
                figures["high priority: submit to first prompt s"] = round(
                    float(row[0][0]) - started, 2
                )
                queued = farm.query(
                    "SELECT EXTRACT(EPOCH FROM j.submitted_at - r.started_at) FROM jobs j "
                    "JOIN runs r ON r.id = j.run_id WHERE r.id = %s",
                    high,
                )
                figures["high priority: run recorded to first prompt s"] = round(
                    float(queued[0][0]), 2
                )
                break
            time.sleep(0.05)
    finally:
        farm.close()
    return figures


@bench
def bench_rerun(args: argparse.Namespace) -> dict[str, object]:
    """`bridge run` of an unchanged 1,000-shot spec after a full run: submits nothing
    (goal < 3 s median). The first run renders on the preview backend."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = _small_spec(folder, args.rerun_shots, assemble=True)
        env = {**os.environ, "OUTPUT_PATH": str(folder / "out"), "BRIDGE_BACKEND": "preview"}
        command = [sys.executable, "-m", "bridge", "run", str(path)]
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        first = time.perf_counter() - started
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
            times.append(time.perf_counter() - started)
            assert "cached" in out.stdout, out.stdout
            assert "succeeded" not in out.stdout, out.stdout
        return {
            "shots": args.rerun_shots,
            "first run (preview renders) s": round(first, 1),
            "unchanged re-run median": median_of(times),
        }


def _daemon(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", *args], env=env, stdout=subprocess.PIPE, text=True
    )
    return proc, proc.stdout.readline().strip()  # type: ignore[union-attr]


@bench
def bench_frontdoors(args: argparse.Namespace) -> dict[str, object]:
    """Watch: drop-to-run-started latency (goal < 1 s median). API: GET /api/status
    requests per second while 3 runs render."""
    import asyncio
    import urllib.request

    import aiohttp

    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {**os.environ, "OUTPUT_PATH": str(folder / "out"), "BRIDGE_BACKEND": "preview"}
        drop = folder / "drop"
        drop.mkdir()
        proc, _ = _daemon(["watch", str(drop)], env)
        latencies = []
        for i in range(args.repeat):
            spec = _small_spec(folder, 2).read_text().replace("id: util", f"id: lat{i}")
            started = time.perf_counter()
            (drop / f"lat{i}.yaml").write_text(spec)  # written in place, like cp
            while True:
                line = proc.stdout.readline()  # type: ignore[union-attr]
                if line.startswith(f"running lat{i}.yaml"):
                    latencies.append(time.perf_counter() - started)
                    break
        proc.terminate()
        proc.wait()
        figures["drop-to-run-started median"] = median_of(latencies)

        proc, line = _daemon(["serve", "--port", "0"], env)
        url = line.removeprefix("listening on ")
        try:
            for k in range(3):
                body = _small_spec(folder, 60).read_text().replace("id: util", f"id: api{k}")
                request = urllib.request.Request(f"{url}/api/specs", data=body.encode())
                with urllib.request.urlopen(request) as resp:
                    json.load(resp)

            async def hammer(seconds: float = 5.0, clients: int = 16) -> int:
                done = 0
                deadline = time.perf_counter() + seconds
                async with aiohttp.ClientSession() as session:

                    async def client() -> None:
                        nonlocal done
                        while time.perf_counter() < deadline:
                            async with session.get(f"{url}/api/status/1") as resp:
                                await resp.read()
                                done += 1

                    await asyncio.gather(*(client() for _ in range(clients)))
                return done

            count = asyncio.run(hammer())
            figures["GET /api/status req/s under 3 runs"] = round(count / 5.0)
        finally:
            proc.terminate()
            proc.wait()
    return figures


# -- direct: the direction agents against the chat-completions double (issue 12) -------------

_DIRECT_CHILD = """
import asyncio, json, sys, time
from bridge.direct.direct import direct_spec
from bridge.settings import resolve
import os
t = time.perf_counter()
report = asyncio.run(direct_spec(sys.argv[1], resolve({}, os.environ)))
print(json.dumps({"seconds": time.perf_counter() - t, "calls": report.calls}))
"""

_PLAN_CHILD = """
import sys, time
t = time.perf_counter()
from bridge.compile import compile_plan
from bridge.direct.direct import status
from bridge.spec.validate import load_spec
plan = compile_plan(load_spec(sys.argv[1]))
if sys.argv[2] == "directed":
    status(sys.argv[1])
print(time.perf_counter() - t)
"""


def directed_spec(scenes: int) -> dict[str, object]:
    """Scenes only, every one directed: two shots each at the draft preset's length."""
    return {
        "version": 1,
        "project": {"id": "directed", "style": "anime key visual"},
        "defaults": {"direct": True, "preset": "draft"},
        "characters": {"mei": {"name": "Mei", "design_prompt": "mei, 1girl"}},
        "scenes": [
            {
                "id": f"sc{i:03d}",
                "description": f"Scene {i}: Mei crosses the garden",
                "visual_description": f"moonlit garden, lantern {i}",
                "characters": ["mei"],
                "frame_count": 96,
            }
            for i in range(scenes)
        ],
    }


@bench
def bench_direct(args: argparse.Namespace) -> dict[str, object]:
    """200 directed scenes against the chat double at 0.2 s a call, concurrency 4 (goal: wall
    <= 1.2 x calls x 0.2 s / 4); then a fresh lock: 0 calls, < 0.2 s added to plan."""
    import socket

    from bridge.direct.merge import merge_direction
    from bridge.spec.load import load_file

    latency, concurrency = 0.2, 4
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sim = subprocess.Popen(
        [sys.executable, "-m", "tests.sim.llm", "--port", str(port), "--latency", str(latency)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    env = {
        **os.environ,
        "BRIDGE_LLM_URL": f"http://127.0.0.1:{port}",
        "BRIDGE_LLM_MODEL": "tiny",
        "BRIDGE_LLM_CONCURRENCY": str(concurrency),
    }
    try:
        _wait_port(port)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "directed.yaml"
            path.write_text(yaml.safe_dump(directed_spec(200), sort_keys=False))
            first = json.loads(_child(_DIRECT_CHILD, [str(path)], env))
            goal = 1.2 * first["calls"] * latency / concurrency
            fresh = json.loads(_child(_DIRECT_CHILD, [str(path)], env))
            plain = Path(tmp) / "plain.yaml"
            merged = merge_direction(load_file(path), path).data
            plain.write_text(yaml.safe_dump(merged, sort_keys=False))
            directed_t, plain_t = [], []
            for _ in range(args.repeat):  # interleaved, so load from other processes hits both
                directed_t.append(float(_child(_PLAN_CHILD, [str(path), "directed"], env)))
                plain_t.append(float(_child(_PLAN_CHILD, [str(plain), "plain"], env)))
    finally:
        sim.terminate()
        sim.wait()
    added = statistics.median(directed_t) - statistics.median(plain_t)
    return {
        "scenes": 200,
        "calls": first["calls"],
        "direction wall": f"{first['seconds']:.2f} s (goal <= {goal:.2f} s)",
        "fresh lock calls": fresh["calls"],
        "fresh lock direct wall": f"{fresh['seconds']:.3f} s",
        "plan with direction": median_of(directed_t),
        "plan of the same spec written by hand": median_of(plain_t),
        "added by direction": f"{added:.3f} s median, {min(directed_t) - min(plain_t):.3f} s "
        "min (goal < 0.2 s)",
    }


def _child(code: str, argv: list[str], env: dict[str, str]) -> str:
    return subprocess.run(
        [sys.executable, "-c", code, *argv], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def _wait_port(port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the LLM double did not listen on {port}")


# -- comfyui: bridge against a real ComfyUI server (issue 14) -------------------------------

COMFYUI_URL_ENV = "BRIDGE_BENCH_COMFYUI_URL"
_REAL_JOBS, _REAL_FRAMES, _REAL_FPS = 40, 120, 24
_REAL_SIZE = (320, 240)


_MAKE_DATABASE = "import sys; from bridge.db.store import Store; Store(sys.argv[1]).close()"


def _current_output(folder: Path) -> Path:
    """One output folder for every round, its database made beforehand: a user's runs after
    the first open a current database, and that is the start-up measured."""
    output = folder / "out"
    output.mkdir()
    subprocess.run(
        [sys.executable, "-c", _MAKE_DATABASE, f"sqlite:///{output / 'bridge.db'}"], check=True
    )
    return output


def _real_env(url: str, output: Path, **extra: str) -> dict[str, str]:
    """`bridge run`'s environment against the real server."""
    return {
        **os.environ,
        "COMFYUI_URL": url,
        "BRIDGE_BACKEND": "comfyui",
        "OUTPUT_PATH": str(output),
        **extra,
    }


def _medians(name: str, results: list[dict[str, float]], keys: list[str]) -> dict[str, str]:
    """Each figure's median over the rounds, with every round's value."""
    out = {}
    for key in keys:
        values = [res[key] for res in results]
        out[f"{name} {key}"] = (
            f"{statistics.median(values):.3f} ({', '.join(f'{v:.3f}' for v in values)})"
        )
    return out


def _real_workflow(color: int) -> dict[str, object]:
    """EmptyImage 320x240 x 120 -> CreateVideo 24 fps -> SaveVideo h264: bridge's core-smoke
    template as `bridge run` binds it for the bench's spec."""
    width, height = _REAL_SIZE
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {
                "width": width,
                "height": height,
                "batch_size": _REAL_FRAMES,
                "color": color % 2**24,
            },
        },
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": float(_REAL_FPS)}},
        "3": {
            "class_type": "SaveVideo",
            "inputs": {
                "video": ["2", 0],
                "filename_prefix": "bench/real",
                "format": "mp4",
                "codec": "h264",
            },
        },
    }


def _real_spec(folder: Path, project: str, jobs: int = _REAL_JOBS) -> Path:
    """The same 40 jobs as a bridge spec: core-smoke shots, assembly and report off."""
    width, height = _REAL_SIZE
    shots = "\n".join(
        f"      - {{id: s{i:03d}, action: shot {i}, params: {{width: {width}, height: {height}}}}}"
        for i in range(jobs)
    )
    path = folder / f"{project}.yaml"
    path.write_text(
        f"version: 1\nproject: {{id: {project}}}\n"
        f"defaults: {{preset: draft, fps: {_REAL_FPS}, motion: core-smoke, "
        f"duration: {_REAL_FRAMES}f}}\n"
        "outputs: {assemble: false, report: false}\n"
        f"scenes:\n  - id: c000\n    shots:\n{shots}\n"
    )
    return path


async def _baseline_client(
    url: str, folder: Path, workflows: list[dict[str, object]], in_flight: int | None = None
) -> list[str]:
    """A plain aiohttp client: post the prompts in order (all at once, or `in_flight` at a
    time), and download each output as soon as its prompt's `executing: null` arrives.
    Returns the prompt ids, in submission order."""
    import asyncio
    import uuid

    import aiohttp

    client_id = uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=True)
    done: dict[str, asyncio.Future[None]] = {}
    limit = asyncio.Semaphore(in_flight or len(workflows))
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{url}/ws?clientId={client_id}", max_msg_size=0) as ws,
    ):

        async def listen() -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                message = json.loads(msg.data)
                data = message.get("data") or {}
                if message.get("type") == "executing" and data.get("node") is None:
                    future = done.get(data.get("prompt_id"))
                    if future is not None and not future.done():
                        future.set_result(None)

        async def one(i: int) -> str:
            async with limit:
                prompt_id = str(uuid.uuid4())
                done[prompt_id] = asyncio.get_running_loop().create_future()
                body = {
                    "prompt": workflows[i],
                    "client_id": client_id,
                    "prompt_id": prompt_id,
                }
                async with session.post(f"{url}/prompt", json=body) as resp:
                    assert resp.status == 200, await resp.text()
                await done[prompt_id]
                async with session.get(f"{url}/history/{prompt_id}") as resp:
                    entry = (await resp.json())[prompt_id]
                for node in entry["outputs"].values():
                    for item in node.get("images", []):
                        params = {k: item[k] for k in ("filename", "subfolder", "type")}
                        async with session.get(f"{url}/view", params=params) as resp:
                            (folder / f"{prompt_id}.mp4").write_bytes(await resp.read())
                return prompt_id

        listener = asyncio.create_task(listen())
        try:
            return list(await asyncio.gather(*(one(i) for i in range(len(workflows)))))
        finally:
            listener.cancel()


def _turn(names: list[str], r: int) -> list[str]:
    return names[r % len(names) :] + names[: r % len(names)]


def _bridge_run(spec: Path, env: dict[str, str]) -> float:
    """`bridge run SPEC` as a user starts it; returns its CPU seconds, children included
    (ffprobe, ffmpeg): what it takes from a ComfyUI on the same machine."""
    import resource

    def spent() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    before = spent()
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "run", str(spec)], env=env, capture_output=True
    )
    if done.returncode != 0:
        raise SystemExit(f"bridge run exited {done.returncode}: {done.stderr[-2000:]!r}")
    return spent() - before


def _executions(
    url: str, since_ms: int, until_ms: int
) -> tuple[list[tuple[float, float]], float | None]:
    """(execution_start, execution_success) in ms of every prompt the server ran in the
    window, from its own /history, in order; and when the first of them was posted (the
    server's `create_time`, in ms), if it says."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/history?max_items=100000") as resp:
        history = json.load(resp)
    spans, posted = [], []
    for entry in history.values():
        stamps = {m[0]: m[1].get("timestamp") for m in entry["status"]["messages"]}
        start, end = stamps.get("execution_start"), stamps.get("execution_success")
        if start is not None and end is not None and since_ms <= start <= until_ms:
            spans.append((float(start), float(end)))
            created = entry["prompt"][3].get("create_time")
            if created is not None:
                posted.append(float(created))
    return sorted(spans), min(posted, default=None)


def _figures(
    spans: list[tuple[float, float]], since_ms: float, until_ms: float, first_post: float | None
) -> dict[str, float]:
    gaps = [max(0.0, b[0] - a[1]) for a, b in itertools.pairwise(spans)]
    return {
        "makespan": (until_ms - since_ms) / 1000,
        "busy": sum(e - s for s, e in spans) / 1000,
        "first post": (first_post - since_ms) / 1000 if first_post else float("nan"),
        "startup": (spans[0][0] - since_ms) / 1000 if spans else float("nan"),
        "tail": (until_ms - spans[-1][1]) / 1000 if spans else float("nan"),
        "gap median ms": statistics.median(gaps) if gaps else float("nan"),
        "gaps total": sum(gaps) / 1000,
        "prompts": len(spans),
    }


@bench
def bench_comfyui(args: argparse.Namespace) -> dict[str, object]:
    """40 core-smoke jobs (320x240 x 120 frames, h264) on the real ComfyUI at
    $BRIDGE_BENCH_COMFYUI_URL: a submit-all client, a 3-in-flight client and `bridge run`
    (MAX_CONCURRENT_JOBS=3), medians of --real-repeat rounds. Goals: bridge makespan <=
    1.05 x submit-all's, its server time <= 1.05 x the 3-in-flight client's, start-up <
    0.5 s, median gap < 5 ms. Start-up is from just before the process starts to the
    first execution on the server; `first post` to the first prompt's arrival (its
    create_time), the figure `make bench startup` measures against the simulator."""
    import asyncio
    import random
    import urllib.request

    url = os.environ.get(COMFYUI_URL_ENV, "").rstrip("/")
    if not url:
        return {"skipped": f"set {COMFYUI_URL_ENV} to a ComfyUI server to run this bench"}
    with urllib.request.urlopen(f"{url}/system_stats") as resp:
        version = json.load(resp)["system"].get("comfyui_version", "?")
    rounds: dict[str, list[dict[str, float]]] = {"submit-all": [], "3 in flight": [], "bridge": []}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        output = _current_output(folder)
        for r in range(args.real_repeat):
            for name in _turn(list(rounds), r):  # who goes first rotates: load drifts
                salt = random.randrange(2**24)  # distinct colours: nothing is cached
                since = time.time() * 1000
                if name == "bridge":
                    project = f"real{r}x{salt}"
                    env = _real_env(url, output, MAX_CONCURRENT_JOBS="3")
                    cpu = _bridge_run(_real_spec(folder, project), env)
                else:
                    in_flight = 3 if name == "3 in flight" else None
                    workflows = [_real_workflow(salt + i) for i in range(_REAL_JOBS)]
                    asyncio.run(_baseline_client(url, folder / f"c{r}", workflows, in_flight))
                until = time.time() * 1000
                spans, first_post = _executions(url, int(since), int(until))
                assert len(spans) == _REAL_JOBS, f"{name}: {len(spans)} prompts ran"
                rounds[name].append(_figures(spans, since, until, first_post))
                if name == "bridge":
                    rounds[name][-1]["CPU s (with children)"] = cpu
    figures: dict[str, object] = {
        "server": f"ComfyUI {version} at {url}",
        "load average before/after": f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f}",
    }
    for name, results in rounds.items():
        figures.update(_medians(name, results, list(results[0])))
    med = {
        n: {k: statistics.median(x[k] for x in res) for k in res[0]} for n, res in rounds.items()
    }
    figures["bridge / submit-all makespan"] = round(
        med["bridge"]["makespan"] / med["submit-all"]["makespan"], 3
    )
    figures["bridge / 3-in-flight server time"] = round(
        med["bridge"]["busy"] / med["3 in flight"]["busy"], 3
    )
    return figures


# -- startup: `bridge run` to its first POST against the simulator (issue 14) ---------------

# `bridge run` with marks on stderr as each step of the way to the first POST ends, for the
# breakdown. A step's module is patched when it is first imported, so the order of imports
# (what -X importtime shows between two marks) is the command's own.
_MARKED_RUN = """
import importlib.abc, importlib.util, os, sys, time
def mark(what):
    os.write(2, f"bench-mark {time.time():.6f} {time.process_time():.6f} {what}\\n".encode())
mark("interpreter and site")
def after(fn, what):
    def wrapped(*a, **k):
        out = fn(*a, **k)
        mark(what)
        return out
    return wrapped
def after_async(fn, what):
    async def wrapped(*a, **k):
        out = await fn(*a, **k)
        mark(what)
        return out
    return wrapped
def before_async(fn, what):
    async def wrapped(*a, **k):
        mark(what)
        return await fn(*a, **k)
    return wrapped
def patch_store(m):
    m.Store.__init__ = after(m.Store.__init__, "database opened")
def patch_validate(m):
    m.load_spec = after(m.load_spec, "spec loaded and validated")
def patch_compile(m):
    m.compile_plan = after(m.compile_plan, "plan compiled")
def patch_freshness(m):
    m.reasons = after(m.reasons, "freshness read (beside the preflight)")
def patch_runner(m):
    m.Runner.backend = after_async(m.Runner.backend, "servers answered /system_stats")
    m.Runner._preflight = after_async(m.Runner._preflight, "preflight (/object_info)")
def patch_record(m):
    m.Recorder.start = after(m.Recorder.start, "run and job rows written")
    m.Recorder.submitting = after_async(m.Recorder.submitting, "first job row committed")
def patch_comfyui(m):
    m.ComfyUIBackend._submit = before_async(m.ComfyUIBackend._submit, "POST /prompt sent")
PATCHES = {
    "bridge.db.store": patch_store, "bridge.spec.validate": patch_validate,
    "bridge.compile": patch_compile, "bridge.freshness": patch_freshness,
    "bridge.runner": patch_runner, "bridge.record": patch_record,
    "bridge.backends.comfyui": patch_comfyui,
}
class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            PATCHES.pop(name)(module)
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, Finder())
import bridge.cli
mark("bridge.cli imported")
sys.argv = ["bridge", *sys.argv[1:]]
bridge.cli.run()
"""


def _sim_posts(url: str) -> list[float]:
    import urllib.request

    with urllib.request.urlopen(f"{url}/_sim") as resp:
        return list(json.load(resp)["posted_at"])


def _startup_breakdown(
    command: list[str], env: dict[str, str], url: str, cwd: str
) -> tuple[dict[str, str], list[str]]:
    """One marked run under -X importtime: when each step ended after the process started,
    with the import time spent by then; and the import time before the POST by package
    (self times summed over each top-level package: where the imports go)."""
    started = time.time()
    out = subprocess.run(command, env=env, capture_output=True, text=True, cwd=cwd)
    if out.returncode != 0:
        raise SystemExit(f"marked run exited {out.returncode}: {out.stderr[-2000:]}")
    arrived = min(t for t in _sim_posts(url) if t >= started)
    steps: dict[str, str] = {}
    packages: dict[str, int] = {}  # self time in us before the POST, by top-level package
    posted = False
    for line in out.stderr.splitlines():
        if posted:
            break
        if line.startswith("bench-mark "):
            _, stamp, cpu, what = line.split(" ", 3)
            spent = sum(packages.values()) / 1e6
            steps[what] = (
                f"{float(stamp) - started:.3f} s (CPU {float(cpu):.3f} s, "
                f"imports so far {spent:.3f} s)"
            )
            posted = what == "POST /prompt sent"
        elif line.startswith("import time:"):
            own, _, name = line.removeprefix("import time:").split("|")
            if own.strip().isdigit():
                package = name.strip().split(".")[0]
                packages[package] = packages.get(package, 0) + int(own)
    steps["POST arrived at the simulator"] = f"{arrived - started:.3f} s"
    costly = sorted(packages.items(), key=lambda item: -item[1])[:15]
    return steps, [f"{name} {us / 1000:.0f} ms" for name, us in costly]


@bench
def bench_startup(args: argparse.Namespace) -> dict[str, object]:
    """`bridge run` of a 3-shot core-smoke spec (assembly and report off) against a simulated
    ComfyUI, OUTPUT_PATH holding the current database of an earlier run: median time from
    just before the process starts to the simulator receiving its first POST /prompt
    (goal < 0.5 s), as `python -m bridge` and as the `bridge` script, run from a folder
    outside the repository (so PYTHONPATH can point them at another checkout to compare);
    its CPU time to that POST; then where the time goes."""
    procs, urls = _start_sims(1, 0.1)
    url = urls[0]
    load_before = os.getloadavg()
    figures: dict[str, object] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            env = {
                **{
                    k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "COMFYUI_"))
                },
                "COMFYUI_URL": url,
                "BRIDGE_BACKEND": "comfyui",
                "MAX_CONCURRENT_JOBS": "3",
                "OUTPUT_PATH": str(folder / "out"),
                "DATABASE_URL": "",
            }
            script = Path(sys.executable).with_name("bridge")
            commands = {
                "python -m bridge run": [sys.executable, "-m", "bridge", "run"],
                "bridge run": [str(script), "run"],
            }
            spec = _real_spec(folder, "first", jobs=3)
            subprocess.run(
                [*commands["python -m bridge run"], str(spec)],
                env=env,
                check=True,
                capture_output=True,
                cwd=tmp,
            )  # the first run: the database exists after
            times: dict[str, list[float]] = {name: [] for name in commands}
            cpu: list[float] = []  # the process's own CPU time to its first POST: less load-bound
            for r in range(max(7, args.repeat)):
                for name, command in commands.items():  # interleaved: load hits both alike
                    spec = _real_spec(folder, f"p{r}x{len(times[name])}{name[0]}", jobs=3)
                    started = time.time()
                    subprocess.run(
                        [*command, str(spec)], env=env, check=True, capture_output=True, cwd=tmp
                    )
                    arrived = min(t for t in _sim_posts(url) if t >= started)
                    times[name].append(arrived - started)
                spec = _real_spec(folder, f"p{r}cpu", jobs=3)
                marked = subprocess.run(
                    [sys.executable, "-c", _MARKED_RUN, "run", str(spec)],
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd=tmp,
                )
                line = next(
                    x for x in marked.stderr.splitlines() if x.endswith("POST /prompt sent")
                )
                cpu.append(float(line.split()[2]))
            for name, samples in times.items():
                figures[f"{name}: first POST median"] = median_of(samples)
            figures["CPU time of the process to its first POST, median"] = median_of(cpu)
            spec = _real_spec(folder, "marked", jobs=3)
            steps, costly = _startup_breakdown(
                [sys.executable, "-X", "importtime", "-c", _MARKED_RUN, "run", str(spec)],
                env,
                url,
                tmp,
            )
            figures["breakdown (one run, under -X importtime)"] = steps
            figures["import time before the POST by package"] = costly
            bare = [_process_times([sys.executable, "-c", "pass"], 1, env)[0][0] for _ in range(7)]
            figures["python -c pass median"] = median_of(bare)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
    figures["load average before/after"] = f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f}"
    return figures


# -- comfyui_affinity: cache families on a real ComfyUI (issue 13) -------------------------

_FAMILY_JOBS, _FAMILY_FRAMES = 20, 48
# EmptyImage 512x512 x 48 -> 2x lanczos upscale (the expensive prefix, a family per colour)
# -> a small crop (the shot's size) -> h264: core nodes only.
_FAMILY_WORKFLOW = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 512, "height": 512, "batch_size": _FAMILY_FRAMES, "color": 0},
    },
    "2": {
        "class_type": "ImageScaleBy",
        "inputs": {"image": ["1", 0], "upscale_method": "lanczos", "scale_by": 2.0},
    },
    "3": {
        "class_type": "ImageCrop",
        "inputs": {"image": ["2", 0], "width": 64, "height": 64, "x": 0, "y": 0},
    },
    "4": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": 24.0}},
    "5": {
        "class_type": "SaveVideo",
        "inputs": {
            "video": ["4", 0],
            "filename_prefix": "bench/family",
            "format": "mp4",
            "codec": "h264",
        },
    },
}


def _family_real_spec(folder: Path, project: str, salt: int) -> Path:
    """Two families (EmptyImage colours salt+1, salt+2) written interleaved A, B, A, B; each
    shot crops its own size out of its family's upscaled frames (a user template)."""
    (folder / "family.json").write_text(json.dumps(_FAMILY_WORKFLOW))
    shots = "\n".join(
        f"      - {{id: s{i:02d}, seed: {salt + i % 2 + 1}, "
        f"params: {{width: {64 + 2 * (i // 2)}, height: 64}}}}"
        for i in range(_FAMILY_JOBS)
    )
    path = folder / f"{project}.yaml"
    path.write_text(
        f"version: 1\nproject: {{id: {project}}}\n"
        "templates:\n  family: {workflow: family.json, still: true, size_multiple: 2, bind: "
        "{width: 3.width, height: 3.height, frames: 1.batch_size, "
        "seed: {to: 1.color, mod: 16777216}, fps: 4.fps, filename_prefix: 5.filename_prefix}}\n"
        f"defaults: {{preset: draft, fps: 24, motion: family, duration: {_FAMILY_FRAMES}f}}\n"
        "outputs: {assemble: false, report: false}\n"
        f"scenes:\n  - id: all\n    shots:\n{shots}\n"
    )
    return path


@bench
def bench_comfyui_affinity(args: argparse.Namespace) -> dict[str, object]:
    """20 jobs in two families sharing an expensive prefix (EmptyImage 512x512 x 48 -> 2x
    lanczos), a cheap crop each, written interleaved A, B, A, B, on the real ComfyUI at
    $BRIDGE_BENCH_COMFYUI_URL: a client posting the same prompts in spec order vs `bridge
    run` (default MAX_CONCURRENT_JOBS), medians of --real-repeat rounds. Goal: bridge's
    makespan <= 0.25 x the in-order client's."""
    import asyncio
    import random

    from bridge.compile import compile_plan
    from bridge.spec.validate import load_spec

    url = os.environ.get(COMFYUI_URL_ENV, "").rstrip("/")
    if not url:
        return {"skipped": f"set {COMFYUI_URL_ENV} to a ComfyUI server to run this bench"}
    rounds: dict[str, list[dict[str, float]]] = {"spec order": [], "bridge": []}
    farm = None
    if _postgres_answers():  # one `bridge worker` on the same server, PostgreSQL's queue
        farm = _Farm(0, 1, 0, 0, COMFYUI_URL=url, MAX_CONCURRENT_JOBS="3")
        rounds["1 worker"] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        if farm is not None:
            stack.callback(farm.close)
            farm.serving()
        load_before = os.getloadavg()
        folder = Path(tmp)
        output = _current_output(folder)
        for r in range(args.real_repeat):
            for name in _turn(list(rounds), r):  # who goes first rotates: load drifts
                salt = random.randrange(2**24 - 4)  # new colours: nothing is cached
                spec = _family_real_spec(folder, f"fam{r}x{salt}", salt)
                since = time.time() * 1000
                if name == "bridge":
                    cpu = _bridge_run(spec, _real_env(url, output))
                elif name == "1 worker":
                    assert farm is not None
                    run_id = farm.submit(spec)
                    farm.wait(run_id)
                    (end,) = farm.query(
                        "SELECT EXTRACT(EPOCH FROM finished_at) FROM runs WHERE id = %s", run_id
                    )[0]
                else:
                    plan = compile_plan(load_spec(spec))
                    workflows = [dict(j.workflow) for j in plan.jobs() if j.kind.remote]
                    since = time.time() * 1000  # compiling is not the client's work
                    asyncio.run(_baseline_client(url, folder / f"c{r}", workflows))
                until = float(end) * 1000 if name == "1 worker" else time.time() * 1000
                spans, first_post = _executions(url, int(since), int(until))
                assert len(spans) == _FAMILY_JOBS, f"{name}: {len(spans)} prompts ran"
                rounds[name].append(_figures(spans, since, until, first_post))
                if name == "bridge":
                    rounds[name][-1]["CPU s (with children)"] = cpu
    figures: dict[str, object] = {
        "server": url,
        "load average before/after": f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f}",
    }
    keys = ("makespan", "busy", "startup", "tail", "CPU s (with children)")
    for name, results in rounds.items():
        figures.update(_medians(name, results, [k for k in keys if k in results[0]]))
    if farm is None:
        figures["1 worker"] = "skipped: no PostgreSQL at 127.0.0.1:5432"
    else:
        figures["1 worker / spec-order makespan"] = round(
            statistics.median(x["makespan"] for x in rounds["1 worker"])
            / statistics.median(x["makespan"] for x in rounds["spec order"]),
            3,
        )
    figures["bridge / spec-order makespan"] = round(
        statistics.median(x["makespan"] for x in rounds["bridge"])
        / statistics.median(x["makespan"] for x in rounds["spec order"]),
        3,
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("which", nargs="*", choices=[*BENCHES, []], metavar="BENCH")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--shots", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rerun-shots", type=int, default=1000)
    parser.add_argument("--scale", type=float, default=1.0, help="workers: job/switch times")
    parser.add_argument("--real-repeat", type=int, default=3)
    parser.add_argument("--farm-repeat", type=int, default=1, help="workers: rounds per case")
    args = parser.parse_args(argv)
    default = [n for n in BENCHES if not n.startswith("comfyui") or os.environ.get(COMFYUI_URL_ENV)]
    for name in args.which or default:
        started = time.perf_counter()
        figures = BENCHES[name](args)
        figures["bench wall"] = f"{time.perf_counter() - started:.1f} s"
        print(f"== {name}: {BENCHES[name].__doc__}")
        print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
