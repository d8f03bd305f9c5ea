"""Secrets out of URLs (item 12), webhook secrets only from BRIDGE_WEBHOOK_SECRET_* and
timestamped signatures (item 13), bounded reads of whatever is dropped (item 1)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from pathlib import Path

import pytest

from bridge.errors import BridgeError, ConfigError, SpecErrors
from bridge.masking import MaskingFilter, mask_text, mask_url
from bridge.spec.load import MAX_BYTES, load_file
from bridge.spec.validate import load_spec
from bridge.watch import NotRegular, read_regular
from bridge.webhooks import hooks_from_spec, sign


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("http://user:pass@host:8188", "http://***@host:8188"),
        ("http://tokenonly@host/x", "http://***@host/x"),
        (
            "postgresql://u@db/bridge?password=pw&sslmode=require",
            "postgresql://***@db/bridge?password=***&sslmode=require",
        ),
        (
            "https://h/hook?token=t&x=1&api_key=k&sig=s",
            "https://h/hook?token=***&x=1&api_key=***&sig=***",
        ),
        (
            "https://h/hook?Signature=a&X-Amz-Credential=b",
            "https://h/hook?Signature=***&X-Amz-Credential=***",
        ),
        ("sqlite:///out/bridge.db", "sqlite:///out/bridge.db"),
        ("http://127.0.0.1:8188", "http://127.0.0.1:8188"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_urls_in_text_errors_and_logs_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    text = "POST http://a:b@h/x?pwd=1 failed; see https://ok.example/doc"
    assert mask_text(text) == "POST http://***@h/x?pwd=*** failed; see https://ok.example/doc"
    assert "b@h" not in str(BridgeError(text))
    record = logging.LogRecord("x", logging.WARNING, "f", 1, "to %s", ("http://u:p@h",), None)
    MaskingFilter().filter(record)
    assert record.getMessage() == "to http://***@h"


def spec_with_hook(tmp_path: Path, secret_env: str) -> Path:
    path = tmp_path / "hook.yaml"
    path.write_text(
        "version: 1\nproject: {id: p}\ndefaults: {motion: core-smoke}\n"
        "scenes: [{id: a, shots: [{id: s01, action: x}]}]\n"
        f"webhooks: [{{url: 'http://127.0.0.1:9/h', secret_env: {secret_env}}}]\n"
    )
    return path


def test_secret_env_must_carry_the_webhook_prefix(tmp_path: Path) -> None:
    with pytest.raises(SpecErrors) as caught:
        load_spec(spec_with_hook(tmp_path, "BRIDGE_API_TOKEN"))
    (error,) = caught.value.errors
    assert "BRIDGE_WEBHOOK_SECRET_" in error.message
    assert error.where is not None
    assert error.where.line == 5
    spec = load_spec(spec_with_hook(tmp_path, "BRIDGE_WEBHOOK_SECRET_CI"))
    (hook,) = hooks_from_spec(spec.webhooks, {"BRIDGE_WEBHOOK_SECRET_CI": "k"})
    assert hook.secret == "k"
    with pytest.raises(ConfigError):
        hooks_from_spec(({"url": "http://h", "secret_env": "HOME"},), {"HOME": "/root"})


def test_signature_is_timestamped_hmac_over_t_dot_body() -> None:
    header = sign("key", b'{"a":1}', 1700000000)
    digest = hmac.new(b"key", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={digest}"


def test_reads_are_bounded_whatever_stat_says(tmp_path: Path) -> None:
    with pytest.raises(SpecErrors, match="limit"):
        load_file("/dev/zero")  # stat() says 0 bytes; the read stops at the cap
    with pytest.raises(NotRegular):
        read_regular(Path("/dev/zero"))
    fifo = tmp_path / "f.yaml"
    os.mkfifo(fifo)
    with pytest.raises(NotRegular):
        read_regular(fifo)  # O_NONBLOCK: no writer, and still no hang
    link = tmp_path / "l.yaml"
    (tmp_path / "real.yaml").write_text("version: 1\n")
    link.symlink_to(tmp_path / "real.yaml")
    with pytest.raises(NotRegular):
        read_regular(link)  # O_NOFOLLOW
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_BYTES + 10))
    assert len(read_regular(big)) == MAX_BYTES + 1
