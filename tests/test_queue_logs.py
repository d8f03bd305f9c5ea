"""The queue's log lines as a worker's operator reads them: a job held by another live
worker is routine and gets one line; any other failure keeps its traceback."""

from __future__ import annotations

import logging
import sys

from bridge.worker import Held, QuietHeld


def record(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        info = sys.exc_info()
    return logging.LogRecord(
        "procrastinate.worker", logging.INFO, __file__, 1, "Job x ended: Error, to retry", (), info
    )


def test_a_held_job_s_retry_is_one_line() -> None:
    held = record(Held("render:a/s1 of run 3 is held by a live worker"))
    assert QuietHeld().filter(held)
    text = logging.Formatter().format(held)
    assert text == "Job x ended: Error, to retry (render:a/s1 of run 3 is held by a live worker)"


def test_another_failure_keeps_its_traceback() -> None:
    failed = record(RuntimeError("boom"))
    assert QuietHeld().filter(failed)
    assert "Traceback" in logging.Formatter().format(failed)
