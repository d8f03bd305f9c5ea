"""Direct a spec: decide which scenes' roles are missing or stale, ask, check, write the lock.

Per scene the roles run in order (reasoning plans shots, narration writes their prompts,
coding picks parameters); scenes run concurrently, the HTTP calls bounded by
BRIDGE_LLM_CONCURRENCY. Every answer, from a model or from the rules, passes the role's schema,
the role's own checks and the spec checks of a one-scene spec; a rejected answer is retried
with the errors fed back, a bounded number of times, then the scene fails by name.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bridge.direct import lock, rules
from bridge.direct.llm import AgentServiceClient, ChatClient, Client, Reply
from bridge.direct.merge import apply, directed, has_shots
from bridge.direct.roles import NAMES, Role, role
from bridge.errors import DirectionError, LLMUnavailable, SpecErrors, UsageError
from bridge.masking import mask_url
from bridge.presets import DEFAULT_PRESET, PRESETS
from bridge.settings import Settings
from bridge.spec.load import Document, load_file
from bridge.spec.model import DEFAULT_MOTION, scene_shots
from bridge.spec.validate import validate
from bridge.templates import bundled

ANSWER_ATTEMPTS = 3  # answers per role and scene: the first and two with the errors fed back
PROMPT_BUDGET = 1200  # characters; well inside CLIP's and T5's useful length

Say = Callable[[str], None]


@dataclass(frozen=True)
class Assessment:
    """What one role of one scene needs: 'fresh', 'missing', 'stale', 'forced' or 'edited'."""

    scene: str
    role: str
    state: str
    reasons: tuple[str, ...] = ()


@dataclass
class Report:
    lock_file: Path
    directed: int = 0  # scenes with direct: true (of those selected)
    calls: int = 0
    made: list[Assessment] = field(default_factory=list)
    kept: list[Assessment] = field(default_factory=list)
    directors: set[str] = field(default_factory=set)

    @property
    def fresh(self) -> bool:
        return not self.made


# -- inputs -----------------------------------------------------------------------------


def scene_inputs(data: Mapping[str, Any], scene: Mapping[str, Any]) -> dict[str, Any]:
    """Everything a role may read about a scene, by the names the roles' `inputs` use."""
    defaults = data.get("defaults") or {}
    chars = data.get("characters") or {}
    preset = scene.get("preset") or defaults.get("preset") or DEFAULT_PRESET
    project = data.get("project") or {}
    return {
        "description": scene.get("description", ""),
        "visual_description": scene.get("visual_description", ""),
        "characters": list(scene.get("characters", [])),
        "cast": [
            {
                "id": cid,
                "name": chars[cid].get("name", cid),
                "description": chars[cid].get("description", ""),
                "design_prompt": chars[cid].get("design_prompt", ""),
                "trigger_words": list(chars[cid].get("trigger_words", [])),
            }
            for cid in scene.get("characters", [])
            if isinstance(chars.get(cid), dict)
        ],
        "frame_count": scene.get("frame_count"),
        "fps": scene.get("fps") or defaults.get("fps") or PRESETS[preset].fps,
        "preset": preset,
        "template": scene.get("template") or defaults.get("motion") or DEFAULT_MOTION,
        "style": {"style": project.get("style", ""), "negative": project.get("negative", "")},
    }


def basis_shots(scene: Mapping[str, Any], reasoning: Mapping[str, Any] | None) -> list[Any]:
    """The shots narration and coding work on: the scene's own, else the planned ones."""
    if has_shots(scene):
        return [
            {k: s[k] for k in ("id", "action", "camera", "duration", "prompt") if k in s}
            for s in scene_shots(scene)
            if isinstance(s, dict)
        ]
    return list((reasoning or {}).get("shots") or [])


def _roles_for(scene: Mapping[str, Any], shots: Sequence[Any]) -> list[str]:
    wanted = [] if has_shots(scene) else ["reasoning"]
    if not shots or any(isinstance(s, dict) and "prompt" not in s for s in shots):
        wanted.append("narration")
    return [*wanted, "coding"]


def _payload(
    name: str, inputs: Mapping[str, Any], shots: Sequence[Any], scene_id: str
) -> dict[str, Any]:
    """What the role is shown: exactly the inputs it is keyed by, plus fixed limits."""
    r = role(name)
    payload: dict[str, Any] = {"scene": scene_id}
    for key in r.inputs:
        payload[key] = shots if key == "shots" else inputs[key]
    preset = PRESETS[inputs["preset"]]
    if name == "reasoning":
        payload["max_frames_per_shot"] = max(1, round(preset.frames * inputs["fps"] / preset.fps))
    elif name == "narration":
        payload["shots"] = [s for s in shots if "prompt" not in s]
        payload["prompt_budget"] = PROMPT_BUDGET
    else:
        payload["preset"] = {"name": preset.name, "steps": preset.steps, "cfg": preset.cfg}
        payload["allowed"] = {
            "templates": sorted(
                {inputs["template"], *(n for n, t in bundled().items() if t.kind == "video")}
            ),
            "presets": sorted(PRESETS),
            "steps": [1, 60],
            "cfg": [1, 15],
        }
    return payload


# -- checks -----------------------------------------------------------------------------


def _schema_problems(r: Role, answer: Any) -> list[str]:
    import jsonschema  # only when an agent answers: `bridge run` imports this module too

    validator = jsonschema.Draft202012Validator(r.schema)
    problems = []
    for err in sorted(validator.iter_errors(answer), key=lambda e: list(e.absolute_path)):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        problems.append(f"{where.lstrip('.') or 'answer'}: {err.message[:200]}")
    return problems


def _role_problems(
    name: str, answer: Mapping[str, Any], inputs: Mapping[str, Any], payload: Mapping[str, Any]
) -> list[str]:
    problems = []
    if name == "reasoning":
        ids = [s["id"] for s in answer["shots"]]
        if len(set(ids)) != len(ids):
            problems.append(f"shot ids must be unique: {ids}")
        total = sum(s["frames"] for s in answer["shots"])
        if inputs["frame_count"] is not None and total != inputs["frame_count"]:
            problems.append(
                f"shot frames add up to {total}, but frame_count is {inputs['frame_count']}"
            )
    elif name == "narration":
        want = [s["id"] for s in payload["shots"]]
        got = [p["shot"] for p in answer["prompts"]]
        if got != want:
            problems.append(f"prompts must be for the shots {want} in order, got {got}")
    else:
        allowed = payload["allowed"]["templates"]
        if answer["template"] not in allowed:
            problems.append(f"template must be one of {allowed}, not {answer['template']!r}")
    return problems


def _fields(name: str, answer: Mapping[str, Any]) -> dict[str, Any]:
    """The answer as the lock file stores it (narration's prompts keyed by shot id)."""
    if name == "narration":
        return {
            "why": answer["why"],
            "prompts": {
                p["shot"]: {"prompt": p["prompt"], "negative": p["negative"]}
                for p in answer["prompts"]
            },
        }
    if name == "coding":
        keys = ("why", "template", "preset", "steps", "cfg")
        return {k: answer[k] for k in keys}
    return {"why": answer["why"], "shots": [dict(s) for s in answer["shots"]]}


def _spec_problems(
    data: Mapping[str, Any], index: int, entries: Mapping[str, lock.Entry], file: str
) -> list[str]:
    """The spec's own checks on a spec holding just this scene with the candidate merged."""
    scene = apply(data["scenes"][index], entries)
    for shot in scene.get("shots") or []:
        # Links into other scenes cannot resolve in a one-scene spec; the full load checks them.
        if isinstance(shot, dict):
            if "/" in str(shot.get("continue_from", "")):
                del shot["continue_from"]
            if isinstance(shot.get("after"), list):
                shot["after"] = [a for a in shot["after"] if "/" not in str(a)]
    mini = {**data, "scenes": [scene]}
    try:
        validate(Document(mini, file, {}, {}, ""))
    except SpecErrors as exc:
        return [f"{e.path or 'spec'}: {e.message}" for e in exc.errors]
    return []


# -- asking -----------------------------------------------------------------------------


class _Directors:
    """The chain of clients to try per role, noting each fallback once, loudly."""

    def __init__(self, chain: list[Client], say: Say) -> None:
        self.chain = chain
        self.say = say
        self.said: set[str] = set()
        self.calls = 0

    def fallback(self, client: Client, reason: str, to: Client, role_name: str) -> str:
        note = f"{client.label} could not {role_name}: {reason}; used {to.label}"
        if note not in self.said:
            self.said.add(note)
            self.say(f"!! {note}")
        return note


async def _ask(
    directors: _Directors,
    name: str,
    payload: dict[str, Any],
    check: Callable[[dict[str, Any]], list[str]],
    scene_id: str,
) -> lock.Entry:
    r = role(name)
    notes: list[str] = []
    chain = directors.chain
    for position, client in enumerate(chain):
        try:
            answer, replies = await _answer(directors, client, r, payload, check, scene_id)
        except LLMUnavailable as exc:
            if position + 1 == len(chain):
                raise DirectionError(f"scene '{scene_id}': {name}: {exc}") from None
            notes.append(directors.fallback(client, exc.message, chain[position + 1], name))
            continue
        call: dict[str, Any] = {}
        if client.label != "rules":
            call = {
                "model": replies[-1].model,
                "attempts": len(replies),
                "seconds": round(sum(x.seconds for x in replies), 3),
            }
            tokens_in = [x.tokens_in for x in replies if x.tokens_in is not None]
            tokens_out = [x.tokens_out for x in replies if x.tokens_out is not None]
            if tokens_in:
                call["tokens_in"] = sum(tokens_in)
            if tokens_out:
                call["tokens_out"] = sum(tokens_out)
        fields = _fields(name, answer)
        return lock.Entry(
            director=client.label,
            made_from={},
            fields=fields,
            sum=lock.fields_sum(fields),
            note="; ".join(notes),
            call=call,
        )
    raise DirectionError(f"scene '{scene_id}': no director for {name}")


async def _answer(
    directors: _Directors,
    client: Client,
    r: Role,
    payload: dict[str, Any],
    check: Callable[[dict[str, Any]], list[str]],
    scene_id: str,
) -> tuple[dict[str, Any], list[Reply]]:
    feedback = ""
    replies: list[Reply] = []
    problems: list[str] = []
    for _ in range(ANSWER_ATTEMPTS):
        reply = await client.answer(r, payload, feedback)
        if client.label != "rules":
            directors.calls += 1
        replies.append(reply)
        problems = _problems(r, reply, check)
        if not problems:
            answer: dict[str, Any] = json.loads(reply.text)
            return answer, replies
        feedback = (
            "Your previous answer was rejected:\n- "
            + "\n- ".join(problems[:10])
            + "\nYour previous answer was:\n"
            + reply.text[:2000]
            + "\nAnswer again with one corrected JSON object only."
        )
    raise DirectionError(
        f"scene '{scene_id}': the {r.name} answers of {client.label} stayed invalid after "
        f"{ANSWER_ATTEMPTS} attempts: " + "; ".join(problems[:3])
    )


def _problems(r: Role, reply: Reply, check: Callable[[dict[str, Any]], list[str]]) -> list[str]:
    if reply.truncated:
        return ["the answer was cut off (finish_reason length); answer shorter"]
    try:
        answer = json.loads(reply.text)
    except json.JSONDecodeError as exc:
        return [f"the answer is not JSON ({exc.msg} at character {exc.pos})"]
    problems = _schema_problems(r, answer)
    return problems or check(answer)


# -- the whole spec -----------------------------------------------------------------------


def assess(
    data: Mapping[str, Any],
    entries: Mapping[str, Mapping[str, lock.Entry]],
    *,
    scene_ids: Sequence[str] = (),
    force: bool = False,
    overwrite_edits: bool = False,
) -> list[Assessment]:
    """Each directed scene's roles and whether they need an agent, without calling one."""
    out = []
    for i in directed(data):
        scene = data["scenes"][i]
        if scene_ids and scene["id"] not in scene_ids:
            continue
        have = entries.get(scene["id"], {})
        inputs = scene_inputs(data, scene)
        reasoning = have.get("reasoning")
        shots = basis_shots(scene, reasoning.fields if reasoning else None)
        for name in _roles_for(scene, shots):
            entry = have.get(name)
            current = lock.made_from(
                {**inputs, "shots": shots}, role(name).inputs, role(name).version
            )
            if entry is None:
                out.append(Assessment(scene["id"], name, "missing", ("not directed yet",)))
                continue
            reasons = tuple(lock.stale_reasons(entry, current))
            if entry.edited and not overwrite_edits:
                out.append(Assessment(scene["id"], name, "edited", reasons))
            elif reasons:
                out.append(Assessment(scene["id"], name, "stale", reasons))
            elif force:
                out.append(Assessment(scene["id"], name, "forced", ("--force",)))
            else:
                out.append(Assessment(scene["id"], name, "fresh"))
    return out


def status(spec_path: str | Path) -> list[Assessment]:
    """For `bridge plan`: what `bridge direct` would redo, and hand edits it would keep."""
    doc = load_file(spec_path)
    return assess(doc.data, lock.read(lock.lock_path(spec_path)))


def status_lines(found: Sequence[Assessment]) -> list[str]:
    lines = []
    for a in found:
        if a.state == "stale":
            lines.append(f"{a.scene}: direction stale: {', '.join(a.reasons)} ({a.role})")
        elif a.state == "missing":
            lines.append(f"{a.scene}: direction missing ({a.role}): run `bridge direct`")
        elif a.state == "edited":
            stale = f"; its inputs changed: {', '.join(a.reasons)}" if a.reasons else ""
            lines.append(f"{a.scene}: {a.role} edited by hand, kept{stale}")
    return lines


async def clients(settings: Settings, say: Say) -> list[Client]:
    """The directors to try, best first; the rules always last, and said loudly if alone."""
    limit = asyncio.Semaphore(settings.llm_concurrency)
    chain: list[Client] = []
    if settings.echo_brain_url:
        agents = AgentServiceClient(settings.echo_brain_url, settings.llm_timeout, limit)
        try:
            found = await agents.probe()
            chain.append(agents)
            say(
                f"direction: agent service at {mask_url(settings.echo_brain_url)} "
                f"(active: {', '.join(found['agents']) or 'none'})"
            )
        except LLMUnavailable as exc:
            await agents.close()
            say(f"!! agent service: {exc.message}")
    if settings.llm_url:
        model = settings.llm_model
        chat = ChatClient(
            settings.llm_url, model, settings.llm_api_key, settings.llm_timeout, limit
        )
        try:
            found = await chat.probe()
            if not model:
                if not found["models"]:
                    raise DirectionError(
                        f"{mask_url(settings.llm_url)} lists no models; set BRIDGE_LLM_MODEL"
                    )
                chat = ChatClient(
                    settings.llm_url,
                    found["models"][0],
                    settings.llm_api_key,
                    settings.llm_timeout,
                    limit,
                )
            chain.append(chat)
            say(f"direction: {chat.label} at {mask_url(settings.llm_url)}")
        except LLMUnavailable as exc:
            await chat.close()
            say(f"!! LLM: {exc.message}")
    if not chain:
        say(
            "!! no LLM configured or reachable (BRIDGE_LLM_URL, ECHO_BRAIN_URL): the RULE-BASED "
            "director fills the open fields (director: rules in the direction file)"
        )
    chain.append(rules.RulesClient())
    return chain


async def direct_spec(
    spec_path: str | Path,
    settings: Settings,
    *,
    scene_ids: Sequence[str] = (),
    force: bool = False,
    overwrite_edits: bool = False,
    say: Say = lambda _: None,
) -> Report:
    """Direct what is missing or stale and write the lock; fresh scenes cost no call at all.

    Scenes that fail keep their old entries; the others are written, then the failures are
    raised together, each naming its scene.
    """
    spec_path = Path(spec_path)
    doc = load_file(spec_path)
    data = doc.data
    _check_spec(doc)
    path = lock.lock_path(spec_path)
    entries = {k: dict(v) for k, v in lock.read(path).items()}
    known = {sc["id"] for sc in data["scenes"]}
    unknown = [s for s in scene_ids if s not in known]
    if unknown:
        raise UsageError(f"--scene-id {unknown[0]!r} is not a scene of {spec_path}")
    found = assess(data, entries, scene_ids=scene_ids, force=force, overwrite_edits=overwrite_edits)
    report = Report(
        path, directed=len({a.scene for a in found}), kept=[a for a in found if a.state == "edited"]
    )
    todo = sorted({a.scene for a in found if a.state in ("missing", "stale", "forced")})
    if not todo:
        return report
    chain = await clients(settings, say)
    directors = _Directors(chain, say)
    index = {sc["id"]: i for i, sc in enumerate(data["scenes"]) if isinstance(sc, dict)}

    async def one(scene_id: str) -> None:
        entries[scene_id] = await _direct_scene(
            data,
            index[scene_id],
            entries.get(scene_id, {}),
            directors,
            str(spec_path),
            force=force,
            overwrite_edits=overwrite_edits,
            report=report,
        )

    try:
        results = await asyncio.gather(*(one(s) for s in todo), return_exceptions=True)
    finally:
        for client in chain:
            await client.close()
    failures = [r for r in results if isinstance(r, BaseException)]
    for r in failures:
        if not isinstance(r, DirectionError):
            raise r
    lock.write(path, {k: v for k, v in entries.items() if k in known}, spec_path.name)
    report.calls = directors.calls
    if failures:
        raise DirectionError(
            f"{len(failures)} of {len(todo)} scene(s) could not be directed "
            f"(the others were written to {path.name}):\n" + "\n".join(f"  - {f}" for f in failures)
        )
    return report


def _check_spec(doc: Document) -> None:
    """The spec's own errors, before any call: open scenes get a placeholder shot."""
    data = dict(doc.data) if isinstance(doc.data, dict) else doc.data
    if isinstance(data, dict) and isinstance(data.get("scenes"), list):
        scenes = list(data["scenes"])
        for i in directed(data):
            if not has_shots(scenes[i]):
                scenes[i] = {**scenes[i], "shots": [{"id": "s01"}]}
        data["scenes"] = scenes
    validate(replace(doc, data=data))


async def _direct_scene(
    data: Mapping[str, Any],
    index: int,
    have: Mapping[str, lock.Entry],
    directors: _Directors,
    file: str,
    *,
    force: bool,
    overwrite_edits: bool,
    report: Report,
) -> dict[str, lock.Entry]:
    scene = data["scenes"][index]
    scene_id = scene["id"]
    inputs = scene_inputs(data, scene)
    out: dict[str, lock.Entry] = dict(have)
    for name in NAMES:
        reasoning = out.get("reasoning")
        shots = basis_shots(scene, reasoning.fields if reasoning else None)
        if name not in _roles_for(scene, shots):
            out.pop(name, None)
            continue
        current = lock.made_from({**inputs, "shots": shots}, role(name).inputs, role(name).version)
        entry = out.get(name)
        if entry is not None and entry.edited and not overwrite_edits:
            continue
        if entry is not None and not force and not lock.stale_reasons(entry, current):
            continue
        reasons = (
            (tuple(lock.stale_reasons(entry, current)) or ("--force",))
            if entry
            else ("not directed yet",)
        )
        payload = _payload(name, inputs, shots, scene_id)

        def check(
            answer: dict[str, Any], name: str = name, payload: dict[str, Any] = payload
        ) -> list[str]:
            problems = _role_problems(name, answer, inputs, payload)
            if problems:
                return problems
            fields = _fields(name, answer)
            trial = {**out, name: lock.Entry("", {}, fields, "")}
            return _spec_problems(data, index, trial, file)

        made = await _ask(directors, name, payload, check, scene_id)
        out[name] = replace(made, made_from=current)
        report.made.append(Assessment(scene_id, name, "made", reasons))
        report.directors.add(made.director)
    return out


def wants_direction(data: Any) -> bool:
    """Whether a loaded spec has any scene with `direct: true` (for the front doors)."""
    return bool(directed(data))


async def llm_status(settings: Settings) -> dict[str, Any]:
    """The direction endpoints for /api/health and /api/capabilities; never the API key."""
    limit = asyncio.Semaphore(1)
    out: dict[str, Any] = {"director": "rules", "llm": None, "agent_service": None}
    if settings.llm_url:
        chat = ChatClient(settings.llm_url, settings.llm_model, settings.llm_api_key, 5, limit)
        entry: dict[str, Any] = {
            "endpoint": mask_url(settings.llm_url),
            "model": settings.llm_model or None,
        }
        try:
            found = await chat.probe()
            entry.update(reachable=True, models=found["models"][:20])
            out["director"] = chat.label if settings.llm_model else "llm"
        except DirectionError as exc:
            entry.update(reachable=False, error=exc.message)
        finally:
            await chat.close()
        out["llm"] = entry
    if settings.echo_brain_url:
        agents = AgentServiceClient(settings.echo_brain_url, 5, limit)
        service: dict[str, Any] = {"endpoint": mask_url(settings.echo_brain_url)}
        try:
            found = await agents.probe()
            service.update(reachable=True, active_agents=found["agents"])
            if out["director"] == "rules" and found["agents"]:
                out["director"] = agents.label
        except DirectionError as exc:
            service.update(reachable=False, error=exc.message)
        finally:
            await agents.close()
        out["agent_service"] = service
    return out


async def direct_if_wanted(spec_path: str | Path, settings: Settings, say: Say) -> Report | None:
    """For the watch folder and `POST /api/specs`: direct what a spec's directed scenes miss."""
    if not wants_direction(load_file(spec_path).data):
        return None
    return await direct_spec(spec_path, settings, say=say)


async def analyze_scene(
    spec_path: str | Path, scene_id: str, settings: Settings, say: Say
) -> Report:
    """`"analyze": true` on a scene (the old "scene with analysis"): direct it before rendering."""
    data = load_file(spec_path).data
    if not any(data["scenes"][i]["id"] == scene_id for i in directed(data)):
        raise UsageError(
            f"scene '{scene_id}' is not directed: add `direct: true` to it to use analyze"
        )
    return await direct_spec(spec_path, settings, scene_ids=(scene_id,), say=say)
