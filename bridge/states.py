"""The states a job and a run are stored in: one vocabulary for scheduler, store and API.

The values are the strings the database columns already hold, so rows written before
these enums existed read back unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    PENDING = "pending"  # waiting for its dependencies or a free slot
    SUBMITTED = "submitted"  # its prompt_id is committed and the prompt posted (resumable)
    RUNNING = "running"  # run_job is under way (on the server or local ffmpeg)
    SUCCEEDED = "succeeded"  # finished and its outputs passed their checks
    CACHED = "cached"  # not run: an identical earlier output was reused
    FAILED = "failed"  # final failure, after any retries
    SKIPPED = "skipped"  # not run because a job it depends on failed
    CANCELLED = "cancelled"  # the run was stopped (Ctrl-C, SIGTERM) before it finished
    INTERRUPTED = "interrupted"  # its prompt was re-attached by a later run
    DETACHED = "detached"  # the daemon stopped (SIGTERM); its prompt, if any, is re-attached

    @property
    def finished(self) -> bool:
        return self not in UNFINISHED


UNFINISHED = frozenset({JobState.PENDING, JobState.SUBMITTED, JobState.RUNNING})
# A detached job is not live work, but the prompt it left on a server is picked up again.
RESUMABLE = frozenset({JobState.SUBMITTED, JobState.RUNNING, JobState.DETACHED})


class RunState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # its process died before it could record an end
    DETACHED = "detached"  # the daemon stopped; the next start resumes its unfinished jobs
