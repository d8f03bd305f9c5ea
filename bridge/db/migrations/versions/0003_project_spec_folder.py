"""projects remember the folder their spec's relative paths resolve against.

A spec dropped into the watch folder or posted to the API is kept as a content-addressed
copy under OUTPUT_PATH/.specs; its start and reference images still live beside where it
was dropped, so re-rendering it needs that folder as well as the copy.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("spec_folder", sa.String(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("spec_folder")
