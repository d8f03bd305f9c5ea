"""Workers on several hosts: run priorities, job owners, server slots and server state.

`runs.priority` orders the ready queue across runs; `jobs.worker_id` is the queue worker
(procrastinate's worker id) that holds the job, so another can take it over once that
worker's heartbeat stops. `server_slots` are the global per-server limits: one row per slot,
claimed with FOR UPDATE SKIP LOCKED. `servers` remember the cache signature of the last job
each server ran (affinity routing) and count model switches. `workers` name the processes
behind the queue's worker ids (host, pid) for `bridge status --workers`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("jobs", sa.Column("worker_id", sa.BigInteger(), nullable=True))
    op.create_table(
        "workers",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(), nullable=False, server_default=""),
        sa.Column("host", sa.String(), nullable=False, server_default=""),
        sa.Column("pid", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "server_slots",
        sa.Column("server", sa.String(), primary_key=True),
        sa.Column("slot", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("worker_id", sa.BigInteger(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.String(length=200), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "servers",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("signature", sa.JSON(), nullable=True),
        sa.Column("switches", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("jobs", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("servers")
    op.drop_table("server_slots")
    op.drop_table("workers")
    op.drop_column("jobs", "worker_id")
    op.drop_column("runs", "priority")
