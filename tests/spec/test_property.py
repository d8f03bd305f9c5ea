"""Any text at all yields a compiled plan or spec errors, never another exception."""

from __future__ import annotations

import string
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
