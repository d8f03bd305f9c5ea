from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.masking import mask_url
from bridge.settings import Settings, resolve


def test_defaults() -> None:
    s = resolve({}, {})
    assert s == Settings()
    assert s.max_concurrent_jobs == 3
    assert s.workflow_timeout == 900
    assert s.database == "sqlite:///output/bridge.db"


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text("max_concurrent_jobs: 5\nworkflow_timeout: 60\nOUTPUT_PATH: /srv/out\n")
    env = {"MAX_CONCURRENT_JOBS": "4", "COMFYUI_URL": "http://a:8188, http://b:8188/"}
    s = resolve({"max_concurrent_jobs": 2}, env, cfg)
    assert s.max_concurrent_jobs == 2
    assert s.workflow_timeout == 60
    assert s.output_path == Path("/srv/out")
    assert s.comfyui_urls == ("http://a:8188", "http://b:8188")


def test_config_file_from_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("quality_threshold: 0.5\n")
    assert resolve({}, {"BRIDGE_CONFIG": str(cfg)}).quality_threshold == 0.5


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"MAX_CONCURRENT_JOBS": "three"},
            "MAX_CONCURRENT_JOBS='three' (environment): expected a whole number",
        ),
        (
            {"MAX_CONCURRENT_JOBS": "0"},
            "MAX_CONCURRENT_JOBS='0' (environment): expected a whole number from 1 to 256",
        ),
        (
            {"WORKFLOW_TIMEOUT": "-1"},
            "WORKFLOW_TIMEOUT='-1' (environment): expected a number of seconds above 0",
        ),
        (
            {"QUALITY_THRESHOLD": "2"},
            "QUALITY_THRESHOLD='2' (environment): expected a number from 0 to 1",
        ),
        (
            {"COMFYUI_URL": "localhost:8188"},
            "COMFYUI_URL='localhost:8188' (environment): expected http://host:port URLs separated by commas",
        ),
        (
            {"BRIDGE_BACKEND": "gpu"},
            "BRIDGE_BACKEND='gpu' (environment): expected auto or comfyui or preview",
        ),
    ],
)
def test_bad_values_name_their_source(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve({}, env)
    assert str(info.value) == message


def test_unknown_config_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_jobs: 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'max_jobs'"):
        resolve({}, {}, cfg)


def test_postgres_variables_build_a_url_and_secrets_stay_out_of_public() -> None:
    env = {
        "POSTGRES_HOST": "db",
        "POSTGRES_USER": "tower",
        "POSTGRES_PASSWORD": "s3cr:t",
        "POSTGRES_DB": "anime",
    }
    s = resolve({}, env)
    assert s.database == "postgresql://tower:s3cr%3At@db:5432/anime"
    public = s.public()
    assert "s3cr" not in repr(public)
    assert public["database"] == "postgresql://***@db:5432/anime"


def test_token_never_in_repr() -> None:
    s = resolve({}, {"BRIDGE_API_TOKEN": "tok-123"})
    assert s.api_token == "tok-123"
    assert "tok-123" not in repr(s)
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"


# The old Content Generation Bridge's optional config.json, every key as its README lists.
OLD_CONFIG = """{
  "echo_brain_url": "http://localhost:8309",
  "comfyui_url": "http://localhost:8188",
  "max_concurrent_scenes": 3,
  "quality_threshold": 0.8,
  "workflow_timeout": 900,
  "lora_path": "/models/loras",
  "output_path": "/srv/anime/output"
}
"""


def test_the_old_systems_config_json_maps_onto_bridges_settings(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(OLD_CONFIG.replace('"max_concurrent_scenes": 3', '"max_concurrent_scenes": 5'))
    s = resolve({}, {}, cfg)
    assert s.echo_brain_url == "http://localhost:8309"
    assert s.comfyui_urls == ("http://localhost:8188",)
    assert s.max_concurrent_jobs == 5
    assert s.quality_threshold == 0.8
    assert s.workflow_timeout == 900
    assert s.lora_path == Path("/models/loras")
    assert s.output_path == Path("/srv/anime/output")
    assert resolve({}, {"ECHO_BRAIN_URL": "http://brain:8309/"}, cfg).echo_brain_url == (
        "http://brain:8309"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"comfyui_ulr": "http://a:8188"}',
            "unknown setting 'comfyui_ulr'; did you mean 'comfyui_url'?",
        ),
        ('{"max_concurent_scenes": 2}', "did you mean 'max_concurrent_scenes'?"),
        ('{"max_concurrent_scenes": 2, "max_concurrent_jobs": 3}', "set max_concurrent_jobs twice"),
        ('{"echo_brain_url": "localhost:8309"}', "ECHO_BRAIN_URL='localhost:8309'"),
        ('{"workflow_timeout": 900,}', "not valid JSON: Expecting property name"),
    ],
)
def test_config_json_mistakes_are_named(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        resolve({}, {}, cfg)
    assert message in str(info.value)


def test_bridge_takes_the_old_config_json_with_dash_dash_config(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT, process_env

    cfg = tmp_path / "config.json"
    cfg.write_text(OLD_CONFIG.replace("/srv/anime/output", str(tmp_path / "old-out")))
    typo = tmp_path / "typo.json"
    typo.write_text('{"echo_brain_ulr": "http://localhost:8309"}')

    env = process_env(tmp_path)
    del env["OUTPUT_PATH"]  # the file's output_path is the one under test

    def bridge(config: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bridge", "--config", str(config), "status"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    ok = bridge(cfg)
    assert (ok.returncode, ok.stdout.strip()) == (0, "no runs yet"), ok.stderr
    assert (tmp_path / "old-out" / "bridge.db").is_file()
    bad = bridge(typo)
    assert bad.returncode == 1
    assert "unknown setting 'echo_brain_ulr'; did you mean 'echo_brain_url'?" in bad.stderr
    assert "Traceback" not in bad.stderr
