"""The database schema, versioned with Alembic and upgraded at start under a lock.

Opening a current database costs one read of `alembic_version`; Alembic itself is imported
only when there is work to do. Upgrades are serialised across processes (a PostgreSQL
advisory lock held for the upgrade's transaction; a file lock next to a SQLite database),
so two processes starting on a fresh database never race to create the same tables.
A database made before migrations existed (tables, no `alembic_version`) is stamped at the
first revision, which is exactly the schema that code created, then upgraded.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, ProgrammingError

from bridge.errors import ConfigError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
HEAD = "0004"  # the newest revision in migrations/versions (a test keeps them equal)
BASELINE = "0001"  # the schema bridge created before it had migrations
LOCK_KEY = int.from_bytes(b"bridge\x00\x01")  # pg_advisory_xact_lock's bigint key


def ensure_schema(engine: Engine) -> None:
    """Bring the database to HEAD; a no-op beyond one version read when it is there."""
    if current_revision(engine) == HEAD:
        return
    with _locked(engine) as conn:
        found = _read_revision(conn)
        if found == HEAD:
            return
        _upgrade(conn, found)


def current_revision(engine: Engine) -> str | None:
    """The database's revision; None for an empty or pre-migration database."""
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError):  # no such table (or no database yet)
        return None


def _read_revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


@contextlib.contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that no other bridge can be upgrading at the same time."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
            yield conn  # the lock ends with the transaction, after the upgrade commits
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        with engine.begin() as conn:
            yield conn
        return
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with engine.begin() as conn:
                yield conn
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _upgrade(conn: Connection, found: str | None) -> None:
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    if found is not None and found not in known:
        raise ConfigError(
            f"the database's schema is at revision {found}, newer than this bridge knows "
            f"({HEAD}); upgrade bridge"
        )
    if found is None and inspect(conn).has_table("runs"):
        command.stamp(config, BASELINE)
    command.upgrade(config, "head")
