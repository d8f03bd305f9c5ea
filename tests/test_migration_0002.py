"""Revision 0002: a database at 0001 with bridge's rows is upgraded with them kept, then
takes the old system's INSERTs; downgrade goes back to 0001's tables."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from bridge.db.store import Store, engine_for
from bridge.spec import rows
from tests.test_db_import import SEED_CHARACTER, SEED_SCENE, execute_raw

schema = pytest.importorskip("bridge.db.schema", reason="needs the Alembic migrations (e-net)")


def alembic(url: str, action: str, target: str) -> None:
    from alembic import command
    from alembic.config import Config

    engine = engine_for(url)
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(schema.MIGRATIONS))
        config.attributes["connection"] = conn
        getattr(command, action)(config, target)
    engine.dispose()


def test_0001_rows_are_kept_and_the_old_inserts_then_succeed(database_url: str) -> None:
    alembic(database_url, "upgrade", "0001")
    execute_raw(
        database_url,
        "INSERT INTO projects (id, title, style, negative, spec_file, revision, updated_at)"
        " VALUES ('ep', 'Episode', '', '', '', '', '2026-01-01')",
        "INSERT INTO characters (project_id, id, name, description, design_prompt, traits,"
        " lora_file, lora_strength) VALUES ('ep', 'mei', 'Mei', '', 'mei, 1girl',"
        """ '{"age": 16}', 'mei.safetensors', 0.8)""",
        "INSERT INTO scenes (project_id, id, position, title, description, visual_description,"
        " characters, character_lora_mapping, frame_count, fps, shot_list) VALUES ('ep', 'a',"
        """ 0, 'A', '', 'dusk', '["mei"]', '{}', 48, 24, '["Mei waves"]')""",
    )
    store = Store(database_url)
    try:
        assert schema.current_revision(store.engine) == schema.HEAD
        spec = rows.spec_for_project(store, "ep")
        assert spec.scenes[0].characters == ("mei",)
        assert spec.scenes[0].shots[0].action == "Mei waves"
        assert spec.characters["mei"].lora is not None
        assert spec.characters["mei"].lora.strength == 0.8
        execute_raw(database_url, SEED_SCENE, SEED_CHARACTER)
        assert rows.spec_for_scene(store, "test-scene-001").characters["mei"].traits["age"] == 16
    finally:
        store.close()

    alembic(database_url, "downgrade", "0001")
    engine = engine_for(database_url)
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT project_id, id, characters FROM scenes")).all()
    engine.dispose()
    assert [(p, i) for p, i, _ in kept] == [("ep", "a")]
