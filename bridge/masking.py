"""The one place secrets are taken out of URLs before they leave the process.

Every writer (logs, manifests, runs/*.json, the database, webhook bodies, error messages)
passes URLs through `mask_url`, or text that may contain URLs through `mask_text`, which
applies `mask_url` to each URL it finds. Userinfo is masked whole (a user name can be a
token), and so is any query parameter whose name looks like a secret.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
SECRET_NAME = re.compile(
    r"pass|pwd|token|secret|key|auth|sig|credential|session|cookie|bearer|jwt", re.I
)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def mask_url(url: str) -> str:
    """The URL with its userinfo and secret-looking query values replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(SECRET_NAME.search(k) for k, _ in pairs):
            query = urlencode(
                [(k, MASK if SECRET_NAME.search(k) else v) for k, v in pairs], safe="*"
            )
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # urlunsplit would turn sqlite:///x into sqlite:/x
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def mask_text(text: str) -> str:
    """`text` with every URL in it masked (error messages, log lines)."""
    if "://" not in text:
        return text
    return _URL.sub(lambda m: mask_url(m.group(0)), text)


class MaskingFilter(logging.Filter):
    """Masks URLs in every log record a handler writes, whoever logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
