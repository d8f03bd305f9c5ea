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
