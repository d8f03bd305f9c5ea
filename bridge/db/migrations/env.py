"""Alembic's entry point: migrations run on the connection `bridge.db.schema` hands over
(under its lock), or, for `alembic` on the command line, on DATABASE_URL."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import bridge.db.models  # noqa: F401  (registers the tables for autogenerate)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER much
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:
    _run(given)
else:
    from bridge.db.store import engine_for

    url = os.environ.get("DATABASE_URL") or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set DATABASE_URL to the database to migrate")
    engine = engine_for(url)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
