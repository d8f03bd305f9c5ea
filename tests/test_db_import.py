"""The old system's rows as input, and export: on SQLite and real PostgreSQL.

The seed's INSERTs are executed verbatim through a raw driver connection, exactly as the
old system's README has its users type them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlmodel import select

from bridge.compile import compile_plan
from bridge.db.models import Scene
from bridge.db.store import Store
from bridge.errors import NotFoundError, UsageError
from bridge.plan import JobKind
from bridge.spec import rows
from bridge.spec.load import load_text
from bridge.spec.model import Spec
from bridge.spec.validate import load_spec, validate

ROOT = Path(__file__).resolve().parent.parent

# SEED-COMPAT.md, "Its sample test scene", as written there.
SEED_SCENE = """INSERT INTO scenes (id, title, description, visual_description, characters,
character_lora_mapping, frame_count, fps) VALUES ('test-scene-001', 'Test Garden Scene',
'A peaceful anime garden scene with cherry blossoms', 'Beautiful moonlit garden with soft pink
cherry blossoms, serene atmosphere', 'Mei', '{"Mei": "mei_character_v1"}', 120, 24);"""
# The old system's `characters` columns: name, description, design_prompt, traits JSONB.
SEED_CHARACTER = """INSERT INTO characters (name, description, design_prompt, traits) VALUES
('Mei', 'A quiet girl who tends the garden', 'mei, 1girl, short black hair, red ribbon',
'{"age": 16, "height_cm": 155}');"""


def execute_raw(url: str, *statements: str) -> None:
    """Statements through the driver itself, not SQLAlchemy: what an old client does."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            for sql in statements:
                conn.execute(sql)
            conn.commit()
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(url) as pg:
        for sql in statements:
            pg.execute(sql)


def count_scenes(url: str) -> int:
    store = Store(url)
    try:
        with store.session() as s:
            return len(s.exec(select(Scene)).all())
    finally:
        store.close()


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store(database_url)
    yield s
    s.close()


def hashes(spec: Spec) -> dict[str, str]:
    return {j.id: j.hash for j in compile_plan(spec).jobs()}


@pytest.mark.parametrize("name", ["moonlit-garden.yaml", "episode-1.yaml"])
def test_spec_to_database_to_export_gives_back_the_same_plan(store: Store, name: str) -> None:
    spec = load_spec(ROOT / "specs" / name)
    store.sync_spec(spec)
    text = rows.to_yaml(rows.project_data(store, spec.project.id))
    back = validate(load_text(text, "exported.yaml"))
    assert hashes(back) == hashes(spec)
    assert [sc.id for sc in back.scenes] == [sc.id for sc in spec.scenes]
    assert back.characters == spec.characters
    store.sync_spec(back)  # and the export is a fixed point: exporting it again changes nothing
    assert rows.to_yaml(rows.project_data(store, spec.project.id)) == text


def test_the_seed_inserts_succeed_and_the_scene_renders_from_its_rows(
    store: Store, database_url: str
) -> None:
    execute_raw(database_url, SEED_SCENE, SEED_CHARACTER)
    spec = rows.spec_for_scene(store, "test-scene-001")
    assert spec.project.id == "scene-test-scene-001"
    (scene,) = spec.scenes
    assert (scene.id, scene.frame_count, scene.fps) == ("test-scene-001", 120, 24)
    assert sum(sh.frames or 0 for sh in scene.shots) == 120
    mei = spec.characters["mei"]
    assert mei.name == "Mei"
    assert mei.design_prompt.startswith("mei, 1girl")
    assert dict(mei.traits) == {"age": 16, "height_cm": 155}
    assert mei.lora is not None
    assert mei.lora.file == "mei_character_v1.safetensors"
    renders = [j for j in compile_plan(spec).jobs() if j.kind is JobKind.RENDER]
    assert renders
    assert all("mei_character_v1.safetensors" in str(j.workflow) for j in renders)
    exported = validate(load_text(rows.to_yaml(spec.data), "exported.yaml"))
    assert hashes(exported) == hashes(spec)


def test_shot_list_in_the_old_shapes(store: Store, database_url: str) -> None:
    execute_raw(
        database_url,
        """INSERT INTO scenes (id, title, characters, frame_count, fps, shot_list) VALUES
        ('plain', 'Plain', 'Mei, Haru', NULL, 24, '["Mei waves", "Haru waves back"]')""",
        """INSERT INTO scenes (id, title, characters, frame_count, fps, shot_list) VALUES
        ('detailed', 'Detailed', '["Mei"]', 96, 24, '[{"description": "Mei runs",
        "camera": "tracking", "duration": 2.5, "mood": "happy"}, {"action": "Mei stops"}]')""",
    )
    plain = rows.spec_for_scene(store, "plain")
    assert [sh.action for sh in plain.scenes[0].shots] == ["Mei waves", "Haru waves back"]
    assert set(plain.characters) == {"mei", "haru"}
    assert plain.characters["haru"].lora is None
    detailed = rows.spec_for_scene(store, "detailed").scenes[0]
    first, second = detailed.shots
    assert (first.action, first.camera, first.frames) == ("Mei runs", "tracking", 60)
    assert (second.action, second.frames) == ("Mei stops", 36)
    assert rows.spec_for_scene(store, "detailed").data["scenes"][0]["shots"][0]["x-mood"] == (
        "happy"
    )


def test_without_a_shot_list_the_scene_is_split_at_the_preset_length(
    store: Store, database_url: str
) -> None:
    execute_raw(
        database_url,
        "INSERT INTO scenes (id, description, frame_count, fps) VALUES ('long', 'rain', 300, 24)",
    )
    shots = rows.spec_for_scene(store, "long").scenes[0].shots
    assert [sh.frames for sh in shots] == [100, 100, 100]
    assert {sh.action for sh in shots} == {"rain"}


def test_a_project_of_rows_and_the_lookups_that_fail(store: Store, database_url: str) -> None:
    execute_raw(
        database_url,
        "INSERT INTO scenes (project_id, id, title, position) VALUES ('123', 'b', 'B', 2)",
        "INSERT INTO scenes (project_id, id, title, position) VALUES ('123', 'a', 'A', 1)",
        "INSERT INTO scenes (project_id, id, title) VALUES ('456', 'a', 'other A')",
    )
    spec = rows.spec_for_project(store, "123")
    assert [sc.id for sc in spec.scenes] == ["a", "b"]
    assert rows.spec_for_scene(store, "b").project.id == "123"
    with pytest.raises(UsageError, match="several projects"):
        rows.project_of_scene(store, "a")
    with pytest.raises(NotFoundError, match="no scene 'zzz'"):
        rows.project_of_scene(store, "zzz")
    with pytest.raises(NotFoundError, match="no project '789'"):
        rows.spec_for_project(store, "789")


def test_rows_that_make_a_bad_spec_are_refused_with_the_spec_checks(
    store: Store, database_url: str
) -> None:
    execute_raw(
        database_url,
        """INSERT INTO scenes (id, shot_list) VALUES ('bad', '[{"duration": "soon"}]')""",
    )
    from bridge.errors import SpecErrors

    with pytest.raises(SpecErrors) as caught:
        rows.spec_for_scene(store, "bad")
    assert "scenes[0].shots[0].duration" in str(caught.value)


@pytest.mark.slow
def test_cli_runs_the_seed_scene_by_id_and_exports_it(
    tmp_path: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.inprocess import Result, bridge_main

    Store(database_url).close()
    execute_raw(database_url, SEED_SCENE, SEED_CHARACTER)
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "OUTPUT_PATH": str(tmp_path / "out"),
        "BRIDGE_BACKEND": "preview",
        "DATABASE_URL": database_url,
    }.items():
        monkeypatch.setenv(name, value)

    def bridge(*args: str) -> Result:
        return bridge_main(capsys, *args)

    run = bridge("run", "--scene-id", "test-scene-001")
    assert run.returncode == 0, run.stderr
    assert "4 succeeded" in run.stdout
    assert (tmp_path / "out" / "scene-test-scene-001" / "manifest.json").is_file()
    assert count_scenes(database_url) == 1  # a run does not write a database spec back
    export = bridge("export", "scene-test-scene-001", "-o", "seed.yaml")
    assert export.returncode == 0, export.stderr
    data = yaml.safe_load((tmp_path / "seed.yaml").read_text())
    assert data["characters"]["mei"]["lora"]["file"] == "mei_character_v1.safetensors"
    assert bridge("validate", "seed.yaml").returncode == 0
    missing = bridge("run", "--project-id", "nope")
    assert missing.returncode == 2
    assert "there is no project 'nope'" in missing.stderr


@pytest.mark.slow
def test_api_generates_the_seed_scene_by_id(tmp_path: Path) -> None:
    from tests.inprocess import api_in_thread
    from tests.test_front_doors import call, wait_for

    url = f"sqlite:///{tmp_path / 'out' / 'bridge.db'}"
    Store(url).close()
    execute_raw(url, SEED_SCENE, SEED_CHARACTER)
    environ = {"BRIDGE_BACKEND": "preview", "BRIDGE_API_TOKEN": "s3cret"}
    with api_in_thread(tmp_path, environ) as api:
        body = b'{"quality_preset": "draft", "notify_webhook": "http://127.0.0.1:9/hook"}'
        status, started = call(f"{api}/api/generate/scene/test-scene-001", "POST", body)
        assert status == 202, started
        assert isinstance(started, dict)
        run = f"{api}/api/status/{started['job_id']}"
        wait_for(lambda: call(run)[1]["status"] != "running", 120)  # type: ignore[index]
        assert call(run)[1]["status"] == "succeeded"  # type: ignore[index]
        assert call(f"{api}/api/generate/scene/nope", "POST")[0] == 404
    assert (tmp_path / "out" / "scene-test-scene-001" / "manifest.json").is_file()


def png(width: int, height: int) -> bytes:
    """A real, decodable PNG: one grey pixel row repeated."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress((b"\x00" + b"\x80" * width) * height)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def test_image_paths_stay_relative_to_the_synced_specs_folder(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "specs"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "start.png").write_bytes(png(64, 64))
    (folder / "p.yaml").write_text(
        "version: 1\nproject: {id: p}\n"
        "scenes: [{id: a, shots: [{id: s01, start_image: images/start.png, duration: 1s}]}]\n"
    )
    spec = load_spec(folder / "p.yaml")
    store.sync_spec(spec)
    monkeypatch.chdir(tmp_path)  # elsewhere: the rows' paths still resolve
    back = rows.spec_from_rows(store, "p")
    assert back.scenes[0].shots[0].start_image == "images/start.png"
    assert hashes(back) == hashes(spec)
    (folder / "exported.yaml").write_text(rows.to_yaml(back.data))
    assert hashes(load_spec(folder / "exported.yaml")) == hashes(spec)


def test_a_scene_in_several_projects_is_found_in_the_one_named(
    store: Store, database_url: str
) -> None:
    execute_raw(
        database_url,
        "INSERT INTO scenes (project_id, id) VALUES ('123', 'a')",
        "INSERT INTO scenes (id) VALUES ('a')",
    )
    assert rows.project_of_scene(store, "a", "123") == "123"
    assert rows.project_of_scene(store, "a", "scene-a") == "scene-a"
    with pytest.raises(NotFoundError, match="no scene 'a' in project '456'"):
        rows.project_of_scene(store, "a", "456")
