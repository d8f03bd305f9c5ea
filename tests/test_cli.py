"""The CLI as a user meets it: exit codes and the three error formats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bridge.cli import main

ROOT = Path(__file__).resolve().parent.parent
BAD = ROOT / "tests" / "cases" / "bad"


def test_validate_ok_and_spec_error_exit_codes(capsys) -> None:
    assert main(["validate", str(ROOT / "specs" / "smoke.yaml")]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["validate", str(BAD / "many_errors.yaml")]) == 1
    err = capsys.readouterr().err
    assert "many_errors.yaml:2:21: project.titel: unknown key 'titel'" in err


def test_validate_reports_every_file(capsys) -> None:
    code = main(["validate", str(ROOT / "specs" / "smoke.yaml"), str(BAD / "cycle.yaml")])
    assert code == 1
    captured = capsys.readouterr()
    assert "smoke.yaml" in captured.out
    assert "dependency cycle" in captured.err


def test_validate_json_and_github_formats(capsys) -> None:
    assert main(["validate", "--format", "json", str(BAD / "unknown_preset.yaml")]) == 1
    (report,) = json.loads(capsys.readouterr().out)
    (error,) = report["errors"]
    assert (error["line"], error["column"], error["pointer"]) == (3, 20, "/defaults/preset")
    assert main(["validate", "--format", "github", str(BAD / "unknown_preset.yaml")]) == 1
    line = capsys.readouterr().out.strip()
    assert line.startswith("::error file=")
    assert ",line=3,col=20," in line


def test_a_missing_spec_is_a_spec_error_and_a_bad_command_a_usage_error(capsys) -> None:
    assert main(["validate", "/no/such/spec.yaml"]) == 1
    assert "/no/such/spec.yaml: no such file" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_plan_formats(capsys) -> None:
    spec = str(ROOT / "specs" / "moonlit-garden.yaml")
    assert main(["plan", spec]) == 0
    text = capsys.readouterr().out
    assert "6 jobs (1 keyframe, 2 render, 1 frame, 2 assemble)" in text
    assert main(["plan", "--format", "json", spec]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["by_kind"]["render"] == 2
    assert main(["plan", "--format", "dot", spec]) == 0
    assert '"frame:garden/s01" -> "render:garden/s02";' in capsys.readouterr().out


def test_python_dash_m_and_no_traceback_on_bad_yaml() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "validate", str(BAD / "alias_bomb.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "alias bomb" in proc.stderr


def test_validate_of_a_glob_checks_direction_files_with_their_spec(capsys) -> None:
    specs = ROOT / "specs"
    assert (
        main(["validate", str(specs / "autonomous.yaml"), str(specs / "autonomous.direction.yaml")])
        == 0
    )
    assert capsys.readouterr().out.count("ok ") == 1  # the direction file is not a spec
    assert main(["validate", str(specs / "autonomous.direction.yaml")]) == 0
    assert "ok " + str(specs / "autonomous.yaml") in capsys.readouterr().out
