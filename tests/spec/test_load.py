from __future__ import annotations

import pytest

from bridge.errors import SpecErrors
from bridge.spec.load import MAX_DEPTH, load_bytes, load_text


def errors_of(text: str | bytes) -> list[str]:
    raw = text if isinstance(text, bytes) else text.encode()
    with pytest.raises(SpecErrors) as info:
        load_bytes(raw, "s.yaml")
    return [str(e) for e in info.value.errors]


def test_positions_are_one_based_and_cover_keys_and_values() -> None:
    doc = load_text("a: 1\nb:\n  - x\n  - {c: 2}\n", "s.yaml")
    assert doc.data == {"a": 1, "b": ["x", {"c": 2}]}
    assert doc.positions["/a"] == (1, 4)
    assert doc.positions["/b/1/c"] == (4, 9)
    assert doc.key_positions["/b/1/c"] == (4, 6)


def test_merge_keys_are_overridden_by_explicit_keys() -> None:
    doc = load_text("base: &b {fps: 24, seed: 1}\nshot:\n  <<: *b\n  seed: 7\n")
    assert doc.data["shot"] == {"fps": 24, "seed": 7}
    assert doc.positions["/shot/seed"] == (4, 9)


def test_timestamps_stay_text() -> None:
    assert load_text("when: 2024-01-01\n").data == {"when": "2024-01-01"}


def test_duplicate_key_names_both_lines() -> None:
    assert errors_of("a: 1\nb: 2\na: 3\n") == [
        "s.yaml:3:1: duplicate key 'a' (first defined at line 1)"
    ]


def test_syntax_error_has_position() -> None:
    (msg,) = errors_of("a: [1,\n")
    assert msg.startswith("s.yaml:2:1: YAML syntax: did not find expected node content")


def test_tab_indentation_is_a_syntax_error() -> None:
    (msg,) = errors_of("a:\n\tb: 1\n")
    assert msg.startswith("s.yaml:2:1: YAML syntax:")


def test_non_utf8_bytes_point_at_the_byte() -> None:
    assert errors_of(b"a: 1\nb: caf\xe9\n") == [
        "s.yaml:2:7: not UTF-8 text (byte 0xe9); save the file as UTF-8"
    ]


def test_bom_is_accepted() -> None:
    assert load_bytes("\ufeffa: 1\n".encode()).data == {"a": 1}


def test_alias_bomb_is_refused_without_expanding() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(8):
        prev, cur = chr(97 + i), chr(98 + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    (msg,) = errors_of("\n".join(lines) + "\n")
    assert msg.startswith("s.yaml:7:4: aliases expand to more than 1,000,000 values")


def test_recursive_alias_is_refused() -> None:
    assert errors_of("x: &a [*a]\n") == [
        "s.yaml:1:4: an alias refers to the collection that contains it"
    ]


def test_depth_cap() -> None:
    text = "a:\n" + "".join("  " * i + "- \n" for i in range(1, MAX_DEPTH + 5))
    (msg,) = errors_of(text)
    assert f"nesting deeper than {MAX_DEPTH} levels" in msg


def test_empty_file() -> None:
    assert errors_of("") == ["s.yaml: the file is empty; a spec starts with 'version: 1'"]
