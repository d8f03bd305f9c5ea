"""Direction agents end to end: the chat-completions and agent-service doubles, every fault
with its end state, the rules fallback, and the lock file's semantics."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestServer

from bridge.direct import llm, lock
from bridge.direct.direct import direct_spec, llm_status, status, status_lines
from bridge.errors import DirectionError, SpecErrors
from bridge.settings import Settings
from bridge.spec.validate import load_spec
from tests.sim.llm import State, agent_app, chat_app

SPEC = {
    "version": 1,
    "project": {"id": "auto", "style": "anime key visual", "negative": "lowres"},
    "defaults": {"direct": True, "preset": "draft"},
    "characters": {
        "mei": {"name": "Mei", "design_prompt": "mei, 1girl", "trigger_words": ["mei_v1"]}
    },
    "scenes": [
        {
            "id": "garden",
            "description": "Mei tends the garden at night",
            "visual_description": "moonlit garden, cherry blossoms",
            "characters": ["mei"],
            "frame_count": 100,
        },
        {
            "id": "roof",
            "description": "Mei looks at the city",
            "visual_description": "rooftop at dusk",
            "frame_count": 48,
        },
    ],
}


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(llm, "BACKOFF", 0.01)
    monkeypatch.setattr(lock, "CACHE", tmp_path / "cache")


@pytest.fixture
def spec_file(tmp_path: Path) -> Callable[..., Path]:
    def write(data: dict[str, Any] = SPEC) -> Path:
        path = tmp_path / "auto.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
async def chat() -> AsyncIterator[tuple[State, str]]:
    state = State()
    server = TestServer(chat_app(state), host="127.0.0.1")
    await server.start_server()
    try:
        yield state, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture
async def agents() -> AsyncIterator[tuple[State, str]]:
    state = State()
    server = TestServer(agent_app(state), host="127.0.0.1")
    await server.start_server()
    try:
        yield state, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def settings(url: str = "", **extra: Any) -> Settings:
    return Settings(llm_url=url, llm_model="tiny" if url else "", llm_timeout=1.0, **extra)


def chat_calls(state: State) -> list[dict[str, Any]]:
    return [r for r in state.requests if "messages" in r]


async def test_chat_directs_every_open_field_and_the_spec_loads(
    chat: tuple[State, str], spec_file: Callable[..., Path]
) -> None:
    state, url = chat
    path = spec_file()
    report = await direct_spec(path, settings(url, llm_api_key="sk-secret"))
    assert report.calls == 6  # 2 scenes x 3 roles
    assert report.directors == {"llm:tiny"}
    fmt = state.requests[0]["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["schema"]["required"] == ["shots", "why"]
    text = lock.lock_path(path).read_text()
    assert "sk-secret" not in text
    entries = lock.read(lock.lock_path(path))
    garden = entries["garden"]
    assert garden["reasoning"].director == "llm:tiny"
    assert sum(s["frames"] for s in garden["reasoning"].fields["shots"]) == 100
    assert garden["reasoning"].call["tokens_in"] == 120
    assert garden["coding"].fields["steps"] == 20
    spec = load_spec(path)
    shots = spec.scene("garden").shots
    assert [s.frames for s in shots] == [34, 33, 33]  # draft: 48 frames at most
    assert (
        shots[0].prompt == "moonlit garden, cherry blossoms, Mei tends the garden at night (beat 1)"
    )
    assert shots[0].negative == "blurry"
    assert shots[0].params == {"steps": 20, "cfg": 6.5}


async def test_fresh_lock_makes_no_call_and_one_changed_scene_only_its_calls(
    chat: tuple[State, str], spec_file: Callable[..., Path]
) -> None:
    state, url = chat
    path = spec_file()
    await direct_spec(path, settings(url))
    before = lock.lock_path(path).read_text()
    state.requests.clear()
    again = await direct_spec(path, settings(url))
    assert again.calls == 0
    assert state.requests == []
    assert again.fresh
    assert lock.lock_path(path).read_text() == before
    changed = json.loads(json.dumps(SPEC))
    changed["scenes"][1]["visual_description"] = "rooftop at night, neon"
    spec_file(changed)
    assert status_lines(status(path)) == [
        "roof: direction stale: visual_description changed (reasoning)",
        "roof: direction stale: visual_description changed (narration)",
    ]
    report = await direct_spec(path, settings(url))
    scenes = {_scene_of(r) for r in chat_calls(state)}
    assert scenes == {"roof"}
    assert {(a.scene, a.role) for a in report.made} == {
        ("roof", "reasoning"),
        ("roof", "narration"),
    }
    after = lock.lock_path(path).read_text()
    assert _block(after, "garden") == _block(before, "garden")


def _scene_of(request: dict[str, Any]) -> str:
    user = request["messages"][1]["content"]
    return str(json.loads(user.split("as JSON data:\n", 1)[1])["scene"])


def _block(text: str, scene: str) -> Any:
    return yaml.safe_load(text)["scenes"][scene]


async def test_hand_edit_survives_force_unless_asked(
    chat: tuple[State, str], spec_file: Callable[..., Path]
) -> None:
    state, url = chat
    path = spec_file()
    await direct_spec(path, settings(url))
    lock_file = lock.lock_path(path)
    text = lock_file.read_text()
    edited = text.replace(
        "moonlit garden, cherry blossoms, Mei tends the garden at night (beat 1)",
        "my own prompt for the first shot",
        1,
    )
    assert edited != text
    lock_file.write_text(edited)
    assert status_lines(status(path)) == ["garden: narration edited by hand, kept"]
    state.requests.clear()
    report = await direct_spec(path, settings(url), scene_ids=["garden"], force=True)
    assert {a.role for a in report.made} == {"reasoning", "coding"}
    assert [(a.scene, a.role) for a in report.kept] == [("garden", "narration")]
    assert load_spec(path).scene("garden").shots[0].prompt == "my own prompt for the first shot"
    assert "edited: true" in lock_file.read_text()
    await direct_spec(path, settings(url), scene_ids=["garden"], force=True, overwrite_edits=True)
    assert load_spec(path).scene("garden").shots[0].prompt != "my own prompt for the first shot"


@pytest.mark.parametrize("fault", ["invalid_json", "schema", "inject", "truncated"])
async def test_a_bad_answer_is_retried_with_the_errors_fed_back(
    chat: tuple[State, str], spec_file: Callable[..., Path], fault: str
) -> None:
    state, url = chat
    state.faults.append(fault)
    path = spec_file({**SPEC, "scenes": SPEC["scenes"][:1]})
    report = await direct_spec(path, settings(url))
    assert report.calls == 4
    retry = chat_calls(state)[1]["messages"][-1]["content"]
    assert retry.startswith("Your previous answer was rejected")
    reasoning = lock.read(lock.lock_path(path))["garden"]["reasoning"]
    assert reasoning.call["attempts"] == 2
    assert set(reasoning.fields) == {"why", "shots"}  # the injected keys went nowhere
    load_spec(path)


async def test_answers_that_stay_invalid_fail_naming_the_scene_and_keep_the_others(
    chat: tuple[State, str], spec_file: Callable[..., Path]
) -> None:
    state, url = chat
    path = spec_file()
    await direct_spec(path, settings(url))
    changed = json.loads(json.dumps(SPEC))
    changed["scenes"][0]["frame_count"] = 90
    changed["scenes"][1]["frame_count"] = 60
    spec_file(changed)
    state.always, state.only_scene = "schema", "garden"
    with pytest.raises(DirectionError) as caught:
        await direct_spec(path, settings(url))
    message = str(caught.value)
    assert "1 of 2 scene(s) could not be directed" in message
    assert "the reasoning answers of llm:tiny stayed invalid after 3 attempts" in message
    assert "why: 42 is not of type 'string'" in message
    assert "scene 'garden'" in message
    assert "roof" not in message
    assert status_lines(status(path)) == [
        "garden: direction stale: frame_count changed (reasoning)",
        "garden: direction stale: frame_count changed (coding)",
    ]


@pytest.mark.parametrize("fault", ["500", "drop", "slow"])
async def test_transport_faults_are_retried(
    chat: tuple[State, str], spec_file: Callable[..., Path], fault: str
) -> None:
    state, url = chat
    state.faults.append(fault)
    path = spec_file({**SPEC, "scenes": SPEC["scenes"][:1]})
    await direct_spec(path, settings(url))
    assert len(chat_calls(state)) == 4
    load_spec(path)


async def test_429_waits_for_retry_after(
    chat: tuple[State, str], spec_file: Callable[..., Path]
) -> None:
    state, url = chat
    state.faults.append("429")
    path = spec_file({**SPEC, "scenes": SPEC["scenes"][:1]})
    await direct_spec(path, settings(url))
    assert state.times[1] - state.times[0] >= 0.95  # Retry-After: 1, not the 0.01 s backoff


@pytest.mark.parametrize("fault", ["500", "slow", "drop"])
async def test_transport_faults_that_persist_fail_the_scene(
    chat: tuple[State, str], spec_file: Callable[..., Path], fault: str
) -> None:
    state, url = chat
    state.always = fault
    state.slow = 1.5
    path = spec_file({**SPEC, "scenes": SPEC["scenes"][:1]})
    with pytest.raises(DirectionError, match=r"scene\(s\) could not be directed") as caught:
        await direct_spec(path, settings(url))
    assert f"after {llm.ATTEMPTS} attempts" in str(caught.value)
    assert len(chat_calls(state)) == llm.ATTEMPTS
    assert not lock.lock_path(path).exists() or "garden" not in lock.read(lock.lock_path(path))
    with pytest.raises(SpecErrors, match="bridge direct"):
        load_spec(path)


async def test_a_server_refusing_json_schema_gets_json_object(
    chat: tuple[State, str], spec_file: Callable[..., Path]
) -> None:
    state, url = chat
    state.faults.append("refuse_json_schema")
    path = spec_file({**SPEC, "scenes": SPEC["scenes"][:1]})
    await direct_spec(path, settings(url))
    kinds = [r["response_format"]["type"] for r in chat_calls(state)]
    assert kinds == ["json_schema", "json_object", "json_object", "json_object"]


async def test_no_llm_reachable_means_rules_said_loudly(spec_file: Callable[..., Path]) -> None:
    path = spec_file()
    said: list[str] = []
    report = await direct_spec(path, settings("http://127.0.0.1:9"), say=said.append)
    assert report.calls == 0
    assert any("does not answer" in s for s in said)
    assert any("RULE-BASED" in s for s in said)
    entries = lock.read(lock.lock_path(path))
    assert {e.director for roles in entries.values() for e in roles.values()} == {"rules"}
    garden = load_spec(path).scene("garden")
    assert [s.frames for s in garden.shots] == [34, 33, 33]  # draft: 48 frames at most
    assert garden.shots[0].prompt.startswith("anime key visual, moonlit garden, cherry blossoms")
    assert "mei_v1" in garden.shots[0].prompt


async def test_agent_service_plans_and_narrates_and_coding_falls_back(
    agents: tuple[State, str], spec_file: Callable[..., Path]
) -> None:
    _state, url = agents
    path = spec_file({**SPEC, "scenes": SPEC["scenes"][:1]})
    said: list[str] = []
    await direct_spec(path, settings(echo_brain_url=url), say=said.append)
    garden = lock.read(lock.lock_path(path))["garden"]
    assert garden["reasoning"].director == "agent-service"
    assert garden["narration"].director == "agent-service"
    assert garden["coding"].director == "rules"
    assert "no agent for render parameters" in garden["coding"].note
    assert any("used rules" in s for s in said)
    prompt = load_spec(path).scene("garden").shots[0].prompt
    assert prompt is not None
    assert prompt.startswith("masterpiece, moonlit garden")


async def test_agent_service_503_falls_back_to_the_chat_endpoint(
    agents: tuple[State, str], chat: tuple[State, str], spec_file: Callable[..., Path]
) -> None:
    agent_state, agent_url = agents
    agent_state.always = "503-NarrationAgent"
    agent_state.agents["ReasoningAgent"] = "not_implemented"
    _chat_state, chat_url = chat
    path = spec_file({**SPEC, "scenes": SPEC["scenes"][:1]})
    said: list[str] = []
    await direct_spec(path, settings(chat_url, echo_brain_url=agent_url), say=said.append)
    garden = lock.read(lock.lock_path(path))["garden"]
    assert {r: e.director for r, e in garden.items()} == {
        "reasoning": "llm:tiny",
        "narration": "llm:tiny",
        "coding": "llm:tiny",
    }
    assert "Narration agent not available" in garden["narration"].note
    assert "ReasoningAgent is not active" in garden["reasoning"].note
    assert any("Narration agent not available" in s for s in said)
    assert [r.get("agent") for r in agent_state.requests] == ["narration"] * 3  # one per shot


async def test_status_for_health_never_shows_the_key(chat: tuple[State, str]) -> None:
    _, url = chat
    found = await llm_status(settings(url, llm_api_key="sk-secret"))
    assert found["llm"]["reachable"] is True
    assert found["llm"]["models"] == ["tiny"]
    assert found["director"] == "llm:tiny"
    assert "sk-secret" not in json.dumps(found)
    down = await llm_status(settings("http://127.0.0.1:9"))
    assert down["llm"]["reachable"] is False
    assert down["director"] == "rules"


def test_a_directed_scene_without_direction_names_the_command(
    spec_file: Callable[..., Path],
) -> None:
    path = spec_file()
    with pytest.raises(SpecErrors) as caught:
        load_spec(path)
    assert "scene 'garden' is directed but auto.direction.yaml has no shots for it yet" in str(
        caught.value
    )


def test_spec_errors_come_before_any_call(spec_file: Callable[..., Path]) -> None:
    broken = json.loads(json.dumps(SPEC))
    broken["scenes"][0]["characters"] = ["nobody"]
    path = spec_file(broken)
    with pytest.raises(SpecErrors, match="nobody"):
        asyncio.run(direct_spec(path, settings("http://127.0.0.1:9")))
    assert not lock.lock_path(path).exists()


def test_llm_settings_from_the_environment_and_the_key_masked() -> None:
    from bridge.settings import resolve

    env = {
        "BRIDGE_LLM_URL": "http://user:pw@127.0.0.1:11434/",
        "BRIDGE_LLM_MODEL": "qwen2.5:7b",
        "BRIDGE_LLM_API_KEY": "sk-secret",
        "BRIDGE_LLM_CONCURRENCY": "8",
        "ECHO_BRAIN_URL": "http://127.0.0.1:8309",
    }
    s = resolve({}, env)
    assert (s.llm_url, s.llm_model, s.llm_concurrency) == (
        "http://user:pw@127.0.0.1:11434",
        "qwen2.5:7b",
        8,
    )
    assert s.echo_brain_url == "http://127.0.0.1:8309"
    assert resolve({}, {}).llm_concurrency == 4
    shown = json.dumps(s.public()) + repr(s)
    assert "sk-secret" not in shown
    assert "pw" not in shown
    assert "http://***@127.0.0.1:11434" in shown  # the whole userinfo is masked


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BRIDGE_LLM_CONCURRENCY": "0"}, "BRIDGE_LLM_CONCURRENCY='0' (environment): expected"),
        ({"BRIDGE_LLM_URL": "localhost:11434"}, "expected an http://host:port URL"),
        ({"BRIDGE_LLM_TIMEOUT": "-1"}, "BRIDGE_LLM_TIMEOUT='-1'"),
    ],
)
def test_bad_llm_settings_are_named(env: dict[str, str], message: str) -> None:
    from bridge.errors import ConfigError
    from bridge.settings import resolve

    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve({}, env)


def test_lock_layout_is_stable_and_one_changed_scene_touches_only_its_lines(
    spec_file: Callable[..., Path],
) -> None:
    path = spec_file()
    asyncio.run(direct_spec(path, settings()))
    before = lock.lock_path(path).read_text().splitlines()
    asyncio.run(direct_spec(path, settings(), force=True))
    assert lock.lock_path(path).read_text().splitlines() == before  # deterministic re-run
    changed = json.loads(json.dumps(SPEC))
    changed["project"]["style"] = "watercolor"
    spec_file(changed)
    asyncio.run(direct_spec(path, settings()))
    after = lock.lock_path(path).read_text().splitlines()
    assert len(after) == len(before)
    diff = [(b, a) for b, a in zip(before, after, strict=True) if a != b]
    # per scene: narration's style hash, its sum, and one prompt line per shot
    assert len(diff) == 2 * 2 + 3 + 1  # garden has three shots, roof one
    assert all("style:" in a or "sum:" in a or "prompt: watercolor" in a for _, a in diff)


def test_a_broken_parse_cache_is_ignored(spec_file: Callable[..., Path], tmp_path: Path) -> None:
    path = spec_file()
    asyncio.run(direct_spec(path, settings()))
    first = lock.read(lock.lock_path(path))
    (copy,) = (tmp_path / "cache").glob("*.json")
    copy.write_text("{not json")
    assert lock.read(lock.lock_path(path)) == first
    assert json.loads(copy.read_text())["version"] == 1  # rebuilt
