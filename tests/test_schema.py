"""Schema migrations: a fresh database, a database bridge made before migrations existed,
and processes racing to create the schema on one fresh PostgreSQL database."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, inspect, text
from sqlmodel import SQLModel

from bridge.db import schema
from bridge.db.models import Run
from bridge.db.store import Store, engine_for
from bridge.errors import ConfigError
from tests.conftest import postgres_admin, process_env

ROOT = Path(__file__).resolve().parent.parent


def test_head_is_the_newest_revision_on_disk() -> None:
    config = Config()
    config.set_main_option("script_location", str(schema.MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == schema.HEAD


def test_migrations_create_exactly_the_models_schema(database_url: str) -> None:
    store = Store(database_url)
    try:
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        assert diff == []  # a model changed without a migration, or the reverse
        assert version == schema.HEAD
    finally:
        store.close()


def test_a_database_made_before_migrations_is_upgraded_with_its_rows(database_url: str) -> None:
    engine = engine_for(database_url)
    with engine.begin() as conn:  # the schema bridge made at start before migrations (0001)
        config = Config()
        config.set_main_option("script_location", str(schema.MIGRATIONS))
        config.attributes["connection"] = conn
        command.upgrade(config, schema.BASELINE)
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(
            text(
                "INSERT INTO projects (id, title, style, negative, spec_file, revision,"
                " updated_at) VALUES ('p', 'kept', '', '', '', '', CURRENT_TIMESTAMP)"
            )
        )
        # 0001's columns, written as SQL: today's models have columns 0001 lacks
        conn.execute(
            text(
                "INSERT INTO runs (id, project_id, spec_file, revision, backend, preview,"
                " status, started_at) VALUES (7, 'p', '', '', '', false, 'succeeded',"
                " CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO jobs (run_id, job_id, kind, hash, state, reason, attempts)"
                " VALUES (7, 'render:a/s1', '', :h, 'succeeded', '', 0)"
            ),
            {"h": "h" * 64},
        )
        conn.execute(
            text(
                "INSERT INTO events (run_id, kind, at, data) VALUES"
                " (7, 'run_finished', CURRENT_TIMESTAMP, '{\"ok\": true}')"
            )
        )
    engine.dispose()
    assert schema.current_revision(engine_for(database_url)) is None

    store = Store(database_url)
    try:
        assert schema.current_revision(store.engine) == schema.HEAD
        run = store.run(7)
        assert run is not None
        assert run.status == "succeeded"
        assert [j.job_id for j in store.jobs(7)] == ["render:a/s1"]
        assert [e.data for e in store.events(7)] == [{"ok": True}]
        with store.session() as s:
            s.add(Run(project_id="p"))
            s.commit()
            assert len(store.runs(project_id="p")) == 2  # ids continue after the kept rows
    finally:
        store.close()


def test_a_current_database_is_opened_with_one_version_read(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    Store(url).close()
    engine = engine_for(url)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    schema.ensure_schema(engine)
    assert statements == ["SELECT version_num FROM alembic_version"]


def test_a_newer_database_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    Store(url).close()
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    with pytest.raises(ConfigError, match="newer than this bridge"):
        Store(url)


# Imports first, then waits for the go line: the racers reach the database together
# instead of spread over their start-up times.
RACER = """
import sys
from bridge.db.store import Store
print("ready", flush=True)
sys.stdin.readline()
Store(sys.argv[1]).close()
"""


@pytest.mark.postgres
@pytest.mark.slow
def test_processes_racing_on_a_fresh_postgres_database_all_succeed(tmp_path: Path) -> None:
    admin = postgres_admin()
    env = process_env(tmp_path)
    failures = []
    with admin:
        for _trial in range(2):
            name = f"bridge_race_{uuid.uuid4().hex[:12]}"
            admin.execute(f'CREATE DATABASE "{name}"')
            try:
                url = f"postgresql://postgres@127.0.0.1:5432/{name}"
                procs = [
                    subprocess.Popen(
                        [sys.executable, "-c", RACER, url],
                        cwd=ROOT,
                        env=env,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                    for _ in range(6)
                ]
                for proc in procs:
                    assert proc.stdout is not None
                    assert proc.stdout.readline() == "ready\n"
                for proc in procs:
                    assert proc.stdin is not None
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                for proc in procs:
                    _, err = proc.communicate(timeout=120)
                    if proc.returncode != 0:
                        failures.append(err.strip().splitlines()[-1:])
                engine = engine_for(url)
                assert schema.current_revision(engine) == schema.HEAD
                assert "jobs" in inspect(engine).get_table_names()
                engine.dispose()
            finally:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert failures == []
