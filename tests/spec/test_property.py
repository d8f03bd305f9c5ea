"""Any text at all yields a compiled plan or spec errors, never another exception."""

from __future__ import annotations

import copy
import shutil
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.cli import main
from bridge.compile import compile_plan
from bridge.errors import SpecErrors
from bridge.spec.load import load_bytes
from bridge.spec.validate import validate

SPEC_KEYS = [
    "version",
    "project",
    "id",
    "scenes",
    "shots",
    "characters",
    "continue_from",
    "after",
    "duration",
    "seed",
    "preset",
    "template",
    "frame_count",
    "fps",
    "lora",
    "file",
    "name",
    "start_image",
    "params",
    "width",
    "steps",
    "shot_list",
    "defaults",
    "motion",
    "keyframe",
]
ATOMS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 300),
    st.floats(allow_nan=False, width=32),
    st.sampled_from(
        [
            "s01",
            "s02",
            "a",
            "a/s01",
            "5s",
            "48f",
            "high",
            "ultra",
            "core-smoke",
            "mei",
            "x.safetensors",
            "../x",
            "/etc/passwd",
            "",
        ]
    ),
    st.text(string.printable, max_size=8),
)
VALUES = st.recursive(
    ATOMS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(SPEC_KEYS), inner, max_size=5),
    ),
    max_leaves=25,
)


def check(raw: bytes, folder: Path) -> None:
    """A plan or SpecErrors with messages; any other exception fails the test."""
    try:
        doc = load_bytes(raw, str(folder / "spec.yaml"))
        compile_plan(validate(doc))
    except SpecErrors as exc:
        errors = exc.errors
    else:
        return
    assert errors
    assert all(error.message for error in errors)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200))
def test_arbitrary_bytes(tmp_path: Path, raw: bytes) -> None:
    check(raw, tmp_path)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=300))
def test_arbitrary_text(tmp_path: Path, text: str) -> None:
    check(text.encode(), tmp_path)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.fixed_dictionaries(
        {"version": st.sampled_from([1, 1, 1, 2, "1"]), "project": VALUES, "scenes": VALUES},
        optional={"characters": VALUES, "defaults": VALUES, "templates": VALUES},
    )
)
def test_spec_shaped_documents(tmp_path: Path, data: dict) -> None:
    check(yaml.safe_dump(data).encode(), tmp_path)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.fixed_dictionaries(
            {"id": st.sampled_from(["s01", "s02", "s03", "s04"])},
            optional={
                "continue_from": st.sampled_from(["s01", "s02", "s03", "s04", "b/s01", "zz"]),
                "after": st.lists(st.sampled_from(["s01", "s02", "s03", "b/s01"]), max_size=2),
                "duration": st.sampled_from(["1s", "2s", "12f", 7, "0s"]),
                "start_image": st.sampled_from(["img.png", "../img.png", "nope.png"]),
            },
        ),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from([None, 24, 48, 120]),
)
def test_well_formed_shot_graphs(tmp_path: Path, shots: list, frame_count: int | None) -> None:
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    scene_a: dict = {"id": "a", "shots": shots}
    if frame_count:
        scene_a["frame_count"] = frame_count
    data = {
        "version": 1,
        "project": {"id": "p"},
        "scenes": [scene_a, {"id": "b", "shots": [{"id": "s01"}]}],
    }
    check(yaml.safe_dump(data).encode(), tmp_path)


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "specs").glob("*.yaml"))
FILES = Path(__file__).resolve().parent.parent / "cases" / "bad" / "files"
NASTY = st.sampled_from(
    [
        0,
        -1,
        10_000,
        2**64,
        0.5,
        float("nan"),
        float("inf"),
        "0s",
        "0f",
        "200s",
        "0.01s",
        "../x.safetensors",
        "C:/x.safetensors",
        "a\\b.safetensors",
        "files/not_an_image.png",
        "files/huge.png",
        "files/start.png",
        "",
        "   ",
        {"stp": 2},
        {"strength": 3},
        {"node": "1", "strength": 3},
        [],
        {},
        None,
    ]
)


def _with_template(data: dict) -> dict:
    """An example plus a user template, so mutations reach template entries too."""
    return {
        **data,
        "templates": {
            "mine": {
                "workflow": "files/wan_api.json",
                "bind": {
                    "seed": "3.seed",
                    "prompt": "6.text",
                    "filename_prefix": "9.filename_prefix",
                },
                "kind": "image",
                "frames": {"step": 1},
                "lora": {"node": "3", "strength": "cfg", "through": {"0": "model"}},
            }
        },
    }


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.extend(_paths(value, (*prefix, i)))
    return out


@st.composite
def mutated_examples(draw: st.DrawFn) -> dict:
    """An example spec with one to three values replaced, keys added or keys removed."""
    data = _with_template(yaml.safe_load(draw(st.sampled_from(EXAMPLES)).read_text()))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(data)[1:]))
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        value = copy.deepcopy(draw(st.one_of(NASTY, VALUES)))  # sampled values are shared
        if action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "add" and isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(st.sampled_from(SPEC_KEYS))] = value
        else:
            parent[path[-1]] = value
    return data


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutated_examples())
def test_validate_of_mutated_examples_exits_0_or_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: dict
) -> None:
    """`bridge validate` on any mutation of the examples: a verdict, never an internal error."""
    if not (tmp_path / "files").exists():
        shutil.copytree(FILES, tmp_path / "files")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data, allow_unicode=True))
    code = main(["validate", str(spec)])
    captured = capsys.readouterr()
    assert code in (0, 1), captured.err
    assert ("ok " in captured.out) == (code == 0)
