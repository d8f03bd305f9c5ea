"""schemas/ at the top of the repository is the published copy editors and tools point at;
bridge/schemas/ is what the package loads. Every packaged schema must be published as is."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGED = sorted(p for p in (ROOT / "bridge" / "schemas").iterdir() if p.is_file())


def test_the_package_ships_the_spec_schema() -> None:
    assert "spec.schema.json" in {p.name for p in PACKAGED}


@pytest.mark.parametrize("packaged", PACKAGED, ids=[p.name for p in PACKAGED])
def test_published_copy_is_byte_equal(packaged: Path) -> None:
    published = ROOT / "schemas" / packaged.name
    assert published.exists(), f"publish it: make schemas (copies {packaged.name} to schemas/)"
    assert published.read_bytes() == packaged.read_bytes(), (
        f"schemas/{packaged.name} differs from bridge/schemas/{packaged.name}; edit the packaged "
        "one and run `make schemas`"
    )
