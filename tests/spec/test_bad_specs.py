"""Golden error text: each tests/cases/bad/NAME.yaml must fail with exactly NAME.expected.

To review a changed message, run with BRIDGE_REGOLD=1, which rewrites the .expected files,
and read the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bridge.errors import SpecErrors
from bridge.spec.validate import load_spec

CASES = Path(__file__).resolve().parent.parent / "cases" / "bad"
SPECS = sorted(CASES.glob("*.yaml"))
REGOLD = bool(os.environ.get("BRIDGE_REGOLD"))  # read before the autouse fixture clears it


def test_there_are_many_distinct_cases() -> None:
    assert len(SPECS) >= 40


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_bad_spec_reports_expected_errors(spec: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CASES)
    with pytest.raises(SpecErrors) as info:
        load_spec(spec.name)
    got = "\n".join(str(e) for e in info.value.errors) + "\n"
    expected = spec.with_suffix(".expected")
    if REGOLD or not expected.exists():
        expected.write_text(got)
        pytest.fail(f"wrote {expected.name}; review it and run again")
    assert got == expected.read_text()
    for error in info.value.errors:
        assert error.where is not None
        assert error.where.file == spec.name
