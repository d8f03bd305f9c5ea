"""SQLModel tables: the seed's production tables plus runs, jobs, assets and an event log.

The same models run on SQLite (the embedded default) and PostgreSQL. JSON columns hold
what is a list or a mapping in the spec (traits, the LoRA mapping, the shot list).
`scenes` and `characters` also take rows written by the old Content Generation Bridge's
clients, as its README writes them (see bridge/spec/rows.py for how both are read).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _json(default: Any = None) -> Any:
    return Field(default=default, sa_column=Column(JSON, nullable=True))


class _JSONB(TypeDecorator[Any]):
    """JSON, and JSONB on PostgreSQL, as the old system's columns are. Chosen per dialect
    when an engine first uses it, so a SQLite run never imports the PostgreSQL dialect."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())


def _jsonb() -> Any:
    return Field(default=None, sa_column=Column(_JSONB(), nullable=True))


class Project(SQLModel, table=True):
    __tablename__ = "projects"
    id: str = Field(primary_key=True, max_length=64)
    title: str = ""
    description: str = ""
    style: str = ""
    negative: str = ""
    spec_file: str = ""  # absolute path of the kept, content-addressed copy of the spec
    revision: str = ""  # sha256 of the spec text last synced
    options: dict[str, Any] | None = _json()  # the spec's templates, outputs and webhooks
    spec_folder: str = ""  # where its relative paths resolve (the folder it was dropped in)
    updated_at: datetime = Field(default_factory=utcnow)


class Character(SQLModel, table=True):
    """A character; the old system inserts rows with only name, description,
    design_prompt and traits, so everything but the surrogate key may be NULL."""

    __tablename__ = "characters"
    __table_args__ = (UniqueConstraint("project_id", "id"),)
    pk: int | None = Field(default=None, primary_key=True)
    project_id: str | None = Field(default=None, index=True, max_length=64)
    id: str | None = Field(default=None, max_length=64)
    name: str | None = None
    description: str | None = None
    design_prompt: str | None = None
    traits: dict[str, Any] | None = _jsonb()
    trigger_words: list[str] | None = _json()
    reference_image: str | None = None
    lora_file: str | None = None
    lora_strength: float | None = None


class Scene(SQLModel, table=True):
    """A scene; the old system inserts rows without a project and with `characters` as
    plain text ("Mei"), so `characters` is TEXT (bridge writes ids, comma-separated)."""

    __tablename__ = "scenes"
    __table_args__ = (UniqueConstraint("project_id", "id"),)
    pk: int | None = Field(default=None, primary_key=True)
    project_id: str | None = Field(default=None, index=True, max_length=64)
    id: str = Field(index=True, max_length=64)
    position: int | None = None
    title: str | None = None
    description: str | None = None
    visual_description: str | None = None
    characters: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    character_lora_mapping: dict[str, Any] | None = _jsonb()
    frame_count: int | None = None
    fps: float | None = None
    shot_list: list[Any] | None = _jsonb()


class Shot(SQLModel, table=True):
    __tablename__ = "shots"
    project_id: str = Field(primary_key=True, max_length=64)
    scene_id: str = Field(primary_key=True, max_length=64)
    id: str = Field(primary_key=True, max_length=64)
    position: int = 0
    action: str = ""
    camera: str = ""
    frames: int | None = None
    seed: int | None = None
    preset: str = ""
    template: str = ""
    continue_from: str | None = None


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    id: int | None = Field(default=None, primary_key=True)
    project_id: str = Field(index=True, max_length=64)
    spec_file: str = ""
    revision: str = ""
    backend: str = ""
    preview: bool = False
    status: str = "running"  # running | succeeded | failed | cancelled | interrupted
    pid: int | None = None
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    counts: dict[str, int] | None = _json()
    manifest: str | None = None
    settings: dict[str, Any] | None = _json()
    priority: int = 0  # orders the ready queue across runs (bridge submit --priority)


class JobRecord(SQLModel, table=True):
    """One job of one run. prompt_id and server are written before the prompt is posted."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("run_id", "job_id"),
        Index("ix_jobs_hash_state", "hash", "state"),
    )
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id", index=True)
    job_id: str = Field(max_length=200)
    kind: str = ""
    scene_id: str | None = None
    shot_id: str | None = None
    hash: str = Field(max_length=64)
    state: str = "pending"  # pending|submitted|running|succeeded|cached|failed|skipped|cancelled
    reason: str = ""  # why it ran: new, changed, output missing, forced
    server: str | None = None
    prompt_id: str | None = Field(default=None, max_length=64)
    attempts: int = 0
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    seconds: float | None = None
    error: str | None = None
    error_kind: str | None = None
    quality: dict[str, Any] | None = _json()
    worker_id: int | None = Field(default=None, sa_type=BigInteger)  # the queue worker holding it


class GeneratedAsset(SQLModel, table=True):
    """A file a job produced; its job hash is the cache key of incremental re-runs."""

    __tablename__ = "generated_assets"
    id: int | None = Field(default=None, primary_key=True)
    project_id: str = Field(index=True, max_length=64)
    run_id: int = Field(foreign_key="runs.id")
    job_id: str = Field(max_length=200)
    job_hash: str = Field(index=True, max_length=64)
    kind: str = ""
    scene_id: str | None = None
    shot_id: str | None = None
    path: str = ""
    sha256: str = Field(max_length=64)
    bytes: int = 0
    probe: dict[str, Any] | None = _json()
    quality: dict[str, Any] | None = _json()
    created_at: datetime = Field(default_factory=utcnow)


class SsotTracking(SQLModel, table=True):
    """Each asset traced to the spec revision, job hash and run that made it."""

    __tablename__ = "ssot_tracking"
    id: int | None = Field(default=None, primary_key=True)
    asset_id: int = Field(foreign_key="generated_assets.id", index=True)
    project_id: str = Field(max_length=64)
    spec_file: str = ""
    spec_revision: str = Field(max_length=64)
    job_hash: str = Field(max_length=64)
    run_id: int = Field(foreign_key="runs.id")
    created_at: datetime = Field(default_factory=utcnow)


class EventRecord(SQLModel, table=True):
    """Append-only: what happened, in order; never updated."""

    __tablename__ = "events"
    id: int | None = Field(default=None, primary_key=True)
    run_id: int | None = Field(default=None, index=True)
    job_id: str | None = None
    at: datetime = Field(default_factory=utcnow)
    kind: str = ""
    data: dict[str, Any] | None = _json()


class WorkerRecord(SQLModel, table=True):
    """A `bridge worker` process; its id is the queue's worker id, whose heartbeat the
    queue keeps (procrastinate_workers). Deleted when the worker stops cleanly."""

    __tablename__ = "workers"
    id: int = Field(primary_key=True, sa_type=BigInteger)
    name: str = ""
    host: str = ""
    pid: int = 0
    started_at: datetime = Field(default_factory=utcnow)


class ServerSlot(SQLModel, table=True):
    """One of a server's slots, global across workers: held by a live worker for one job."""

    __tablename__ = "server_slots"
    server: str = Field(primary_key=True)
    slot: int = Field(primary_key=True)
    worker_id: int | None = Field(default=None, sa_type=BigInteger)
    run_id: int | None = None
    job_id: str | None = Field(default=None, max_length=200)
    claimed_at: datetime | None = None


class ServerRecord(SQLModel, table=True):
    """What a server last ran (its cache signature) and how often its models switched."""

    __tablename__ = "servers"
    name: str = Field(primary_key=True)
    signature: dict[str, Any] | None = _json()
    switches: int = 0
    jobs: int = 0
