"""`bridge run` through a proxy that resets and stalls connections to a simulator process:
every job rendered exactly once, every output byte for byte the simulator's file."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.backends.comfyui import ComfyUIBackend
from bridge.errors import TransientBackendError
from tests.conftest import process_env, simulator, smoke_spec, start_listening
from tests.sim.comfyui import Simulator
from tests.sim.proxy import Faults, Proxy

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
SHOTS = 10


@pytest.fixture
def sim() -> Iterator[str]:
    with simulator("--job-seconds", "0.2") as url:
        yield url


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def _server_files(sim: str, prompt_id: str) -> list[bytes]:
    """The prompt's output files, fetched from the simulator directly (not via the proxy)."""
    entry = json.loads(_get(f"{sim}/history/{prompt_id}"))[prompt_id]
    files = []
    for ui in entry["outputs"].values():
        for value in ui.values():
            for item in value if isinstance(value, list) else []:
                if isinstance(item, dict) and "filename" in item:
                    query = urllib.parse.urlencode(
                        {k: item.get(k, "") for k in ("filename", "subfolder", "type")}
                    )
                    files.append(_get(f"{sim}/view?{query}"))
    return files


# Downloads cut at random bytes of their responses (the reproduction), and, once,
# whole connections cut or stalled wherever they are, the socket and POST /prompt too.
FAULTS = {
    "downloads": ["--path", "/view", "--reset", "0.5", "--stall", "0.1", "--max-offset", "2500"],
    "connections": [
        "--reset",
        "0.6",
        "--stall",
        "0.1",
        "--min-offset",
        "1000",
        "--max-offset",
        "20000",
        "--max-faults",
        "2",  # fewer than a GET's three tries: the preflight's /object_info gets through
    ],
}


@pytest.mark.parametrize(
    ("faults", "seed"),
    [("downloads", 1), ("connections", 1)],
)
def test_resets_and_stalls_render_each_job_once_with_intact_outputs(
    sim: str, tmp_path: Path, faults: str, seed: int
) -> None:
    proxy, url = start_listening(
        "tests.sim.proxy",
        "--target",
        sim,
        "--seed",
        str(seed),
        "--stall-seconds",
        "1",
        "--max-faults",
        "12",
        *FAULTS[faults],
    )
    spec = tmp_path / "net.yaml"
    spec.write_text(smoke_spec("net", SHOTS))
    env = process_env(tmp_path, COMFYUI_URL=url, MAX_CONCURRENT_JOBS="3", LOG_LEVEL="INFO")
    run = subprocess.run(
        [sys.executable, "-m", "bridge", "run", str(spec)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    proxy.send_signal(signal.SIGTERM)
    out, _ = proxy.communicate(timeout=10)
    counts = json.loads(out.strip().splitlines()[-1])
    assert run.returncode == 0, run.stderr[-3000:]
    assert counts["reset"] > 0, str(counts)  # the faults did happen

    state = json.loads(_get(f"{sim}/_sim"))
    assert len(state["posted"]) == len(set(state["posted"])) == SHOTS, run.stderr[-3000:]
    assert len(state["executed"]) == SHOTS
    if faults == "downloads":
        assert "downloading it again" in run.stderr  # downloads were cut, and retried
    manifest = json.loads((tmp_path / "out" / "net" / "manifest.json").read_text())
    rendered = [j for j in manifest["jobs"] if j.get("prompt_id")]
    assert sorted(j["prompt_id"] for j in rendered) == sorted(state["posted"])
    for job in rendered:
        ours = [(tmp_path / "out" / "net" / o["path"]).read_bytes() for o in job["outputs"]]
        theirs = _server_files(sim, job["prompt_id"])
        assert [hashlib.sha256(b).hexdigest() for b in ours] == [
            hashlib.sha256(b).hexdigest() for b in theirs
        ], job["id"]


async def test_a_download_cut_short_resumes_with_range(tmp_path: Path) -> None:
    sim = Simulator()
    await sim.start()
    assert sim.output_dir is not None
    data = bytes(range(256)) * 4096  # 1 MiB
    (sim.output_dir / "big_00001_.mp4").write_bytes(data)
    port = int(sim.url.rsplit(":", 1)[1])
    proxy = Proxy(port, Faults(reset=1.0, min_offset=300_000, max_offset=600_000, max_faults=1))
    backend = ComfyUIBackend(await proxy.start())
    try:
        await backend.start()
        item = {"filename": "big_00001_.mp4", "subfolder": "", "type": "output"}
        target = tmp_path / "out.mp4"
        with pytest.raises(TransientBackendError, match="downloading"):
            await backend.download(item, target)
        kept = (tmp_path / ".out.mp4.part").stat().st_size
        assert 0 < kept < len(data)
        await backend.download(item, target)
        assert target.read_bytes() == data
        assert not (tmp_path / ".out.mp4.part").exists()
        assert proxy.counts["reset"] == 1
        assert proxy.counts["bytes"] < 1.2 * len(data)  # the rest, not the whole file again
    finally:
        await backend.close()
        await proxy.stop()
        await sim.stop()
