"""scenes and characters take the old Content Generation Bridge's rows.

Its clients insert scenes without a project and with `characters` as plain text ("Mei"),
and characters with only name, description, design_prompt and traits. So both tables get a
surrogate integer key, a nullable project_id (unique with id instead of the primary key, no
foreign key: an old row's project may exist only in the old system), `scenes.characters`
becomes TEXT (bridge writes ids comma-separated), the old system's JSON columns are JSONB
on PostgreSQL, and projects keep the spec's description and its row-less parts (options).
The rows are copied across; `characters` lists become comma-separated text.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _jsonb() -> Any:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


_OLD_CHARACTERS = sa.table(
    "characters",
    *(sa.column(n, sa.String()) for n in ("project_id", "id", "name", "description")),
    sa.column("design_prompt", sa.String()),
    sa.column("traits", sa.JSON()),
    sa.column("lora_file", sa.String()),
    sa.column("lora_strength", sa.Float()),
)


def _old_scenes(characters: Any) -> Any:
    """The scenes columns both revisions share, with `characters` read as `characters`."""
    return sa.table(
        "scenes",
        *(sa.column(n, sa.String()) for n in ("project_id", "id", "title", "description")),
        sa.column("visual_description", sa.String()),
        sa.column("position", sa.Integer()),
        sa.column("characters", characters),
        sa.column("character_lora_mapping", sa.JSON()),
        sa.column("frame_count", sa.Integer()),
        sa.column("fps", sa.Float()),
        sa.column("shot_list", sa.JSON()),
    )


def upgrade() -> None:
    bind = op.get_bind()
    characters = [dict(r) for r in bind.execute(sa.select(_OLD_CHARACTERS)).mappings()]
    scenes = [dict(r) for r in bind.execute(sa.select(_old_scenes(sa.JSON()))).mappings()]
    # Dropped before they are created again: PostgreSQL keeps constraint names with a table.
    op.drop_table("characters")
    op.drop_table("scenes")
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("description", sa.String(), nullable=False, server_default=""))
        batch.add_column(sa.Column("options", sa.JSON(), nullable=True))

    new_characters = op.create_table(
        "characters",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=True),
        sa.Column("id", sa.String(length=64), nullable=True),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("description", sa.String(), nullable=True),
        sa.Column("design_prompt", sa.String(), nullable=True),
        sa.Column("traits", _jsonb(), nullable=True),
        sa.Column("trigger_words", sa.JSON(), nullable=True),
        sa.Column("reference_image", sa.String(), nullable=True),
        sa.Column("lora_file", sa.String(), nullable=True),
        sa.Column("lora_strength", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("project_id", "id"),
    )
    op.create_index(op.f("ix_characters_project_id"), "characters", ["project_id"])
    new_scenes = op.create_table(
        "scenes",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=True),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=True),
        sa.Column("title", sa.String(), nullable=True),
        sa.Column("description", sa.String(), nullable=True),
        sa.Column("visual_description", sa.String(), nullable=True),
        sa.Column("characters", sa.Text(), nullable=True),
        sa.Column("character_lora_mapping", _jsonb(), nullable=True),
        sa.Column("frame_count", sa.Integer(), nullable=True),
        sa.Column("fps", sa.Float(), nullable=True),
        sa.Column("shot_list", _jsonb(), nullable=True),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("project_id", "id"),
    )
    op.create_index(op.f("ix_scenes_project_id"), "scenes", ["project_id"])
    op.create_index(op.f("ix_scenes_id"), "scenes", ["id"])
    for row in scenes:
        names = row["characters"]
        row["characters"] = ",".join(map(str, names)) if isinstance(names, list) else names
    if characters:
        op.bulk_insert(new_characters, characters)
    if scenes:
        op.bulk_insert(new_scenes, scenes)


def downgrade() -> None:
    """Back to composite keys; rows without a known project or an id (the old system's)
    are dropped, as that schema cannot hold them."""
    bind = op.get_bind()
    projects = set(bind.execute(sa.text("SELECT id FROM projects")).scalars())
    characters = [
        dict(r)
        for r in bind.execute(sa.select(_OLD_CHARACTERS)).mappings()
        if r["project_id"] in projects and r["id"]
    ]
    scenes = [
        dict(r)
        for r in bind.execute(sa.select(_old_scenes(sa.Text()))).mappings()
        if r["project_id"] in projects
    ]
    op.drop_table("characters")
    op.drop_table("scenes")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("options")
        batch.drop_column("description")
    old_characters = op.create_table(
        "characters",
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("design_prompt", sa.String(), nullable=False),
        sa.Column("traits", sa.JSON(), nullable=True),
        sa.Column("lora_file", sa.String(), nullable=True),
        sa.Column("lora_strength", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.PrimaryKeyConstraint("project_id", "id"),
    )
    old_scenes = op.create_table(
        "scenes",
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("visual_description", sa.String(), nullable=False),
        sa.Column("characters", sa.JSON(), nullable=True),
        sa.Column("character_lora_mapping", sa.JSON(), nullable=True),
        sa.Column("frame_count", sa.Integer(), nullable=True),
        sa.Column("fps", sa.Float(), nullable=False),
        sa.Column("shot_list", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.PrimaryKeyConstraint("project_id", "id"),
    )
    for c in characters:
        for key in ("name", "description", "design_prompt"):
            c[key] = c[key] or ""
    for s in scenes:
        for key in ("title", "description", "visual_description"):
            s[key] = s[key] or ""
        s["position"] = s["position"] or 0
        s["fps"] = s["fps"] or 24.0
        text = s["characters"] or ""
        s["characters"] = [n.strip() for n in text.split(",") if n.strip()]
    if characters:
        op.bulk_insert(old_characters, characters)
    if scenes:
        op.bulk_insert(old_scenes, scenes)
