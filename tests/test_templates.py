from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.errors import Location, SpecErrors
from bridge.templates import bundled, frames_for, inject, load_user_template


def test_bundled_templates_load_and_bind_filename_prefix() -> None:
    templates = bundled()
    assert set(templates) == {"core-smoke", "sdxl-keyframe", "framepack-i2v", "wan-i2v"}
    for t in templates.values():
        assert t.output in t.workflow
        assert "filename_prefix" in t.bind
    assert templates["sdxl-keyframe"].kind == "image"
    assert templates["wan-i2v"].needs_start_image
    assert not templates["core-smoke"].needs_start_image


def test_core_smoke_uses_only_nodes_seen_on_a_stock_server() -> None:
    names = Path(__file__).parent / "fixtures" / "comfyui" / "object_info_all_class_names.txt"
    stock = set(names.read_text().split())
    assert bundled()["core-smoke"].class_types <= stock
    assert bundled()["wan-i2v"].class_types <= stock


def test_inject_binds_values_and_leaves_the_template_untouched() -> None:
    t = bundled()["core-smoke"]
    before = json.dumps(t.workflow, sort_keys=True)
    wf = inject(t, {"width": 320, "height": 240, "frames": 12, "fps": 12.0, "seed": 2**24 + 7})
    assert wf["1"]["inputs"] == {"width": 320, "height": 240, "batch_size": 12, "color": 7}
    assert wf["2"]["inputs"]["fps"] == 12.0
    assert json.dumps(t.workflow, sort_keys=True) == before


def test_lora_loader_is_bypassed_without_loras() -> None:
    wf = inject(bundled()["sdxl-keyframe"], {})
    assert "10" not in wf
    assert wf["3"]["inputs"]["model"] == ["4", 0]
    assert wf["6"]["inputs"]["clip"] == ["4", 1]


def test_lora_loaders_chain_for_several_characters() -> None:
    wf = inject(bundled()["sdxl-keyframe"], {}, (("a.safetensors", 0.8), ("b.safetensors", 0.5)))
    first, second = wf["10"]["inputs"], wf["11"]["inputs"]
    assert (first["lora_name"], first["strength_model"], first["model"]) == (
        "a.safetensors",
        0.8,
        ["4", 0],
    )
    assert (second["lora_name"], second["strength_clip"], second["clip"]) == (
        "b.safetensors",
        0.5,
        ["10", 1],
    )
    assert wf["3"]["inputs"]["model"] == ["11", 0]
    assert wf["7"]["inputs"]["clip"] == ["11", 1]


def test_framepack_lora_select_chains_through_prev_lora_or_disappears() -> None:
    t = bundled()["framepack-i2v"]
    none = inject(t, {})
    assert "2" not in none
    assert "lora" not in none["1"]["inputs"]
    two = inject(t, {}, (("a.safetensors", 1.0), ("b.safetensors", 0.5)))
    assert two["16"]["inputs"]["prev_lora"] == ["2", 0]
    assert two["1"]["inputs"]["lora"] == ["16", 0]


@pytest.mark.parametrize(
    ("name", "frames", "context", "expected"),
    [
        ("core-smoke", 48, 9, 48),
        ("wan-i2v", 120, 9, 121),
        ("wan-i2v", 81, 9, 81),
        ("wan-i2v", 1, 9, 5),
        ("framepack-i2v", 150, 9, 145),
        ("framepack-i2v", 150, 13, 157),
    ],
)
def test_frames_for_rounds_to_what_the_model_makes(
    name: str, frames: int, context: int, expected: int
) -> None:
    assert frames_for(bundled()[name], frames, context) == expected


def _user(tmp_path: Path, workflow: object, **entry: object) -> object:
    (tmp_path / "wf.json").write_text(json.dumps(workflow))
    return load_user_template(
        "mine",
        {"workflow": "wf.json", **entry},
        tmp_path,
        lambda pointer: Location("s.yaml", 1, 1, pointer),
    )


def test_user_template_binding_to_a_link_is_refused(tmp_path: Path) -> None:
    wf = {
        "1": {"class_type": "A", "inputs": {"x": ["2", 0], "prefix": "p"}},
        "2": {"class_type": "B", "inputs": {}},
    }
    with pytest.raises(SpecErrors) as info:
        _user(tmp_path, wf, bind={"seed": "1.x", "filename_prefix": "1.prefix"})
    assert [e.message for e in info.value.errors] == [
        "'1.x' is a link from node '2'; bind a widget value instead"
    ]


def test_user_template_unknown_parameter_and_bad_json(tmp_path: Path) -> None:
    wf = {"1": {"class_type": "A", "inputs": {"prefix": "p"}}}
    with pytest.raises(SpecErrors) as info:
        _user(tmp_path, wf, bind={"sead": "1.prefix"})
    messages = [e.message for e in info.value.errors]
    assert any(m.startswith("unknown parameter 'sead' (parameters: prompt,") for m in messages)
    (tmp_path / "wf.json").write_text("{nope")
    with pytest.raises(SpecErrors) as info:
        load_user_template(
            "m",
            {"workflow": "wf.json", "bind": {}},
            tmp_path,
            lambda p: Location("s.yaml", 1, 1, p),
        )
    assert "is not readable JSON" in info.value.errors[0].message


def test_user_template_workflow_outside_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecErrors) as info:
        load_user_template(
            "m",
            {"workflow": "../x.json", "bind": {}},
            tmp_path / "sub",
            lambda p: Location("s.yaml", 1, 1, p),
        )
    assert info.value.errors[0].message == "'../x.json' is outside the spec's folder"
