"""Run priorities: the old Content Generation Bridge's words, or whole numbers.

One scale for the API body, `bridge run --priority` and a spec's top-level `priority:`:
low = -10, normal = 0 (the default), high = 10, urgent = 20, or any whole number from
-1000 to 1000. Runs sharing one process (serve, watch) take freed render slots highest
priority first, ties in the order they asked.
"""

from __future__ import annotations

from bridge.errors import UsageError

WORDS = {"low": -10, "normal": 0, "high": 10, "urgent": 20}
DEFAULT = 0
LIMIT = 1000


def parse(value: object, *, where: str = "priority") -> int:
    """The priority `value` names; a UsageError saying what to write otherwise."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in WORDS:
            return WORDS[text]
        if text.lstrip("+-").isdigit() and text.lstrip("+-").isascii():
            value = int(text)
    if isinstance(value, int) and not isinstance(value, bool) and -LIMIT <= value <= LIMIT:
        return value
    raise UsageError(
        f"{where} must be one of {', '.join(WORDS)} or a whole number from -{LIMIT} to {LIMIT}"
        f", not {value!r}"
    )
