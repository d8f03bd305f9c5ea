from __future__ import annotations

from pathlib import Path

from bridge import manifest
from bridge.compile import compile_plan
from bridge.manifest import JobResult, OutputFile
from bridge.spec.validate import load_spec

SPECS = Path(__file__).resolve().parent.parent / "specs"


def _paths(root: Path, *files: Path) -> list[str | None]:
    plan = compile_plan(load_spec(SPECS / "moonlit-garden.yaml"))
    job = plan.order[0]
    result = JobResult(files=tuple(OutputFile(path=f, sha256="", bytes=0) for f in files))
    built = manifest.build(
        plan, root=root, run={}, states={job: "succeeded"}, results={job: result}, errors={}
    )
    entry = next(j for j in built["jobs"] if j["id"] == job)
    return [out["path"] for out in entry["outputs"]]


def test_output_paths_are_relative_to_the_root_however_it_is_spelled(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "shots").mkdir(parents=True)
    (real / "shots" / "b.mp4").write_bytes(b"")
    link = tmp_path / "link"
    link.symlink_to(real)
    outside = tmp_path / "elsewhere.mp4"
    assert _paths(
        link,
        link / "shots" / "a.mp4",  # spelled under the root as given
        real / "shots" / "b.mp4",  # under the root resolved
        link / "shots" / ".." / "shots" / "b.mp4",  # resolved first
        outside,
    ) == ["shots/a.mp4", "shots/b.mp4", "shots/b.mp4", str(outside)]
