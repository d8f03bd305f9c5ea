"""Settings, resolved once at the edge: flags > environment > config file > defaults.

The environment is passed in as a mapping, so the core never reads os.environ and tests
never depend on the developer's shell. Names of environment variables are the seed's.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from bridge.errors import ConfigError
from bridge.masking import mask_url

COMFYUI_URL = "COMFYUI_URL"
MAX_CONCURRENT_JOBS = "MAX_CONCURRENT_JOBS"
WORKFLOW_TIMEOUT = "WORKFLOW_TIMEOUT"
QUALITY_THRESHOLD = "QUALITY_THRESHOLD"
LORA_PATH = "LORA_PATH"
OUTPUT_PATH = "OUTPUT_PATH"
DATABASE_URL = "DATABASE_URL"
LOG_LEVEL = "LOG_LEVEL"
BRIDGE_BACKEND = "BRIDGE_BACKEND"
BRIDGE_API_TOKEN = "BRIDGE_API_TOKEN"
BRIDGE_CONFIG = "BRIDGE_CONFIG"
BRIDGE_LLM_URL = "BRIDGE_LLM_URL"
BRIDGE_LLM_MODEL = "BRIDGE_LLM_MODEL"
BRIDGE_LLM_API_KEY = "BRIDGE_LLM_API_KEY"
BRIDGE_LLM_CONCURRENCY = "BRIDGE_LLM_CONCURRENCY"
BRIDGE_LLM_TIMEOUT = "BRIDGE_LLM_TIMEOUT"
ECHO_BRAIN_URL = "ECHO_BRAIN_URL"
BRIDGE_WORKERS = "BRIDGE_WORKERS"
BRIDGE_WORKER_JOBS = "BRIDGE_WORKER_JOBS"
BRIDGE_LEASE_SECONDS = "BRIDGE_LEASE_SECONDS"
BRIDGE_AFFINITY = "BRIDGE_AFFINITY"
BRIDGE_AGING_SECONDS = "BRIDGE_AGING_SECONDS"
BRIDGE_WAIT_FOR_SERVER = "BRIDGE_WAIT_FOR_SERVER"
MAX_JOBS_PER_SPEC = "MAX_JOBS_PER_SPEC"
BRIDGE_WEBHOOK_DRAIN = "BRIDGE_WEBHOOK_DRAIN"
BRIDGE_WEBHOOK_RETRY = "BRIDGE_WEBHOOK_RETRY"

DEFAULT_MAX_CONCURRENT_JOBS = 3
DEFAULT_WORKFLOW_TIMEOUT = 900.0
DEFAULT_QUALITY_THRESHOLD = 0.7
DEFAULT_OUTPUT_PATH = Path("output")
DEFAULT_WAIT_FOR_SERVER = 4 * 3600.0
DEFAULT_MAX_JOBS_PER_SPEC = 5000
DEFAULT_WEBHOOK_DRAIN = 30.0
DEFAULT_WEBHOOK_RETRY = 1.0
BACKENDS = ("auto", "comfyui", "preview")
DEFAULT_LLM_CONCURRENCY = 4
DEFAULT_LLM_TIMEOUT = 120.0
WORKER_JOBS_MAX = 64
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_AGING_SECONDS = 300.0


@dataclass(frozen=True)
class Settings:
    comfyui_urls: tuple[str, ...] = ()
    max_concurrent_jobs: int = DEFAULT_MAX_CONCURRENT_JOBS
    workflow_timeout: float = DEFAULT_WORKFLOW_TIMEOUT
    quality_threshold: float = DEFAULT_QUALITY_THRESHOLD
    lora_path: Path | None = None
    output_path: Path = DEFAULT_OUTPUT_PATH
    database_url: str = ""  # empty: SQLite at OUTPUT_PATH/bridge.db
    log_level: str = "WARNING"
    backend: str = "auto"  # auto: ComfyUI when one answers, else the preview animatic
    api_token: str | None = field(default=None, repr=False)
    llm_url: str = field(default="", repr=False)  # OpenAI-compatible; may carry credentials
    llm_model: str = ""
    llm_api_key: str | None = field(default=None, repr=False)
    llm_concurrency: int = DEFAULT_LLM_CONCURRENCY
    llm_timeout: float = DEFAULT_LLM_TIMEOUT
    echo_brain_url: str = ""  # the old system's agent service
    workers: bool = False  # submit to `bridge worker`s over PostgreSQL instead of running
    worker_jobs: int = 0  # jobs one worker process holds at once; 0: see jobs_in_hand
    lease_seconds: float = DEFAULT_LEASE_SECONDS  # a silent worker's jobs are taken over after
    affinity: bool = True  # group and route jobs by what the servers have loaded
    aging_seconds: float = DEFAULT_AGING_SECONDS  # a waiting job rises a priority level per
    wait_for_server: float = DEFAULT_WAIT_FOR_SERVER  # watch: how long a spec waits for ComfyUI
    max_jobs_per_spec: int = DEFAULT_MAX_JOBS_PER_SPEC  # serve: larger plans get a 422
    webhook_drain: float = DEFAULT_WEBHOOK_DRAIN  # at exit: how long deliveries may still take
    webhook_retry: float = DEFAULT_WEBHOOK_RETRY  # first retry delay, doubled per try

    @property
    def jobs_in_hand(self) -> int:
        """BRIDGE_WORKER_JOBS, else twice the farm's slots: one worker alone keeps every
        slot filled with a job waiting behind each, while finished jobs are checked and
        recorded, and has jobs of several families in hand to match to the servers."""
        return self.worker_jobs or min(WORKER_JOBS_MAX, max(4, 2 * self.max_concurrent_jobs))

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.output_path / 'bridge.db'}"

    def public(self) -> dict[str, Any]:
        """The settings with secrets removed, for logs, manifests and the database."""
        return {
            "comfyui_urls": [mask_url(u) for u in self.comfyui_urls],
            "max_concurrent_jobs": self.max_concurrent_jobs,
            "workflow_timeout": self.workflow_timeout,
            "quality_threshold": self.quality_threshold,
            "lora_path": str(self.lora_path) if self.lora_path else None,
            "output_path": str(self.output_path),
            "database": mask_url(self.database),
            "backend": self.backend,
            "llm_url": mask_url(self.llm_url),
            "llm_model": self.llm_model,
            "llm_concurrency": self.llm_concurrency,
            "llm_timeout": self.llm_timeout,
            "echo_brain_url": mask_url(self.echo_brain_url),
            "workers": self.workers,
            "worker_jobs": self.jobs_in_hand,
            "lease_seconds": self.lease_seconds,
            "affinity": self.affinity,
            "aging_seconds": self.aging_seconds,
            "wait_for_server": self.wait_for_server,
            "max_jobs_per_spec": self.max_jobs_per_spec,
            "webhook_drain": self.webhook_drain,
            "webhook_retry": self.webhook_retry,
        }


_ENV = {
    "comfyui_urls": COMFYUI_URL,
    "max_concurrent_jobs": MAX_CONCURRENT_JOBS,
    "workflow_timeout": WORKFLOW_TIMEOUT,
    "quality_threshold": QUALITY_THRESHOLD,
    "lora_path": LORA_PATH,
    "output_path": OUTPUT_PATH,
    "database_url": DATABASE_URL,
    "log_level": LOG_LEVEL,
    "backend": BRIDGE_BACKEND,
    "api_token": BRIDGE_API_TOKEN,
    "llm_url": BRIDGE_LLM_URL,
    "llm_model": BRIDGE_LLM_MODEL,
    "llm_api_key": BRIDGE_LLM_API_KEY,
    "llm_concurrency": BRIDGE_LLM_CONCURRENCY,
    "llm_timeout": BRIDGE_LLM_TIMEOUT,
    "echo_brain_url": ECHO_BRAIN_URL,
    "workers": BRIDGE_WORKERS,
    "worker_jobs": BRIDGE_WORKER_JOBS,
    "lease_seconds": BRIDGE_LEASE_SECONDS,
    "affinity": BRIDGE_AFFINITY,
    "aging_seconds": BRIDGE_AGING_SECONDS,
    "wait_for_server": BRIDGE_WAIT_FOR_SERVER,
    "max_jobs_per_spec": MAX_JOBS_PER_SPEC,
    "webhook_drain": BRIDGE_WEBHOOK_DRAIN,
    "webhook_retry": BRIDGE_WEBHOOK_RETRY,
}
# The old Content Generation Bridge's config.json keys whose bridge name differs.
_OLD_KEYS = {"max_concurrent_scenes": "max_concurrent_jobs", "execution": "workers"}


def resolve(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> Settings:
    """Merge the layers and check every value; a bad one is a ConfigError naming its source."""
    environ = environ or {}
    layers: list[tuple[str, Mapping[str, Any]]] = []
    path = config_file or environ.get(BRIDGE_CONFIG)
    if path:
        layers.append((f"config file {path}", _read_config(Path(path))))
    env_values = {name: environ[var] for name, var in _ENV.items() if environ.get(var)}
    if "database_url" not in env_values and environ.get("POSTGRES_HOST"):
        env_values["database_url"] = _postgres_url(environ)
    layers.append(("environment", env_values))
    layers.append(("flags", {k: v for k, v in (flags or {}).items() if v is not None}))
    values: dict[str, Any] = {}
    for source, layer in layers:
        for name, raw in layer.items():
            values[name] = _coerce(name, raw, source)
    if "max_concurrent_jobs" not in values and len(values.get("comfyui_urls", ())) > 1:
        # Unset: two prompts per server, one rendering and one waiting, so no GPU idles.
        values["max_concurrent_jobs"] = max(
            DEFAULT_MAX_CONCURRENT_JOBS, 2 * len(values["comfyui_urls"])
        )
    return Settings(**values)


def _read_config(path: Path) -> Mapping[str, Any]:
    """YAML, or JSON (the old system's config.json); its keys may be bridge's setting
    names, environment names, or the old system's keys."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"config file {path} is not valid JSON: {exc.msg} at line {exc.lineno}, "
                f"column {exc.colno}"
            ) from None
    else:
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of setting: value")
    known = {f.name for f in fields(Settings)}
    aliases = {var.lower(): name for name, var in _ENV.items()} | _OLD_KEYS
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for key, value in data.items():
        lowered = str(key).lower()
        name = aliases.get(lowered, lowered)
        if name not in known:
            match = difflib.get_close_matches(lowered, sorted(known | set(aliases)), n=1)
            hint = f"; did you mean '{match[0]}'?" if match else ""
            raise ConfigError(
                f"config file {path}: unknown setting '{key}'{hint} "
                f"(known: {', '.join(sorted(known))})"
            )
        if name in given:
            raise ConfigError(f"config file {path}: '{key}' and '{given[name]}' set {name} twice")
        given[name] = str(key)
        out[name] = value
    return out


def _postgres_url(environ: Mapping[str, str]) -> str:
    user = quote(environ.get("POSTGRES_USER", "postgres"), safe="")
    password = environ.get("POSTGRES_PASSWORD")
    auth = f"{user}:{quote(password, safe='')}" if password else user
    host = environ["POSTGRES_HOST"]
    port = environ.get("POSTGRES_PORT", "5432")
    db = environ.get("POSTGRES_DB", "bridge")
    return f"postgresql://{auth}@{host}:{port}/{db}"


def _coerce(name: str, raw: Any, source: str) -> Any:
    label = _ENV.get(name, name)

    def bad(expected: str) -> ConfigError:
        shown = "***" if name in ("api_token", "database_url", "llm_api_key") else repr(raw)
        return ConfigError(f"{label}={shown} ({source}): expected {expected}")

    try:
        if name == "comfyui_urls":
            items = raw if isinstance(raw, list | tuple) else re.split(r"[,\s]+", str(raw))
            urls = tuple(u.rstrip("/") for u in map(str, items) if u)
            for url in urls:
                if not re.match(r"^https?://[^/\s]+", url):
                    raise bad("http://host:port URLs separated by commas")
            return urls
        if name == "max_concurrent_jobs":
            value = int(str(raw))
            if not 1 <= value <= 256:
                raise bad("a whole number from 1 to 256")
            return value
        if name == "workflow_timeout":
            timeout = float(str(raw))
            if not timeout > 0:
                raise bad("a number of seconds above 0")
            return timeout
        if name in ("wait_for_server", "webhook_drain", "webhook_retry"):
            wait = float(str(raw))
            if not wait >= 0:
                raise bad("a number of seconds, 0 or more")
            return wait
        if name == "max_jobs_per_spec":
            cap = int(str(raw))
            if cap < 1:
                raise bad("a whole number above 0")
            return cap
        if name == "quality_threshold":
            threshold = float(str(raw))
            if not 0 <= threshold <= 1:
                raise bad("a number from 0 to 1")
            return threshold
        if name in ("llm_url", "echo_brain_url"):
            url = str(raw).rstrip("/")
            if not re.match(r"^https?://[^/\s]+", url):
                raise bad("an http://host:port URL")
            return url
        if name == "llm_concurrency":
            value = int(str(raw))
            if not 1 <= value <= WORKER_JOBS_MAX:
                raise bad(f"a whole number from 1 to {WORKER_JOBS_MAX}")
            return value
        if name == "llm_timeout":
            seconds = float(str(raw))
            if not seconds > 0:
                raise bad("a number of seconds above 0")
            return seconds
        if name in ("workers", "affinity"):
            flag = str(raw).strip().lower()
            if flag not in (
                "1",
                "0",
                "true",
                "false",
                "yes",
                "no",
                "on",
                "off",
                "workers",
                "local",
            ):
                raise bad("1 or 0 (execution: workers or local)")
            return flag in ("1", "true", "yes", "on", "workers")
        if name == "worker_jobs":
            value = int(str(raw))
            if not 1 <= value <= WORKER_JOBS_MAX:
                raise bad(f"a whole number from 1 to {WORKER_JOBS_MAX}")
            return value
        if name in ("lease_seconds", "aging_seconds"):
            seconds = float(str(raw))
            if not 0.5 <= seconds <= 86400:
                raise bad("a number of seconds from 0.5 to 86400")
            return seconds
        if name in ("lora_path", "output_path"):
            return Path(str(raw)).expanduser()
        if name == "backend":
            if str(raw) not in BACKENDS:
                raise bad(" or ".join(BACKENDS))
            return str(raw)
        if name == "log_level":
            level = str(raw).upper()
            if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                raise bad("DEBUG, INFO, WARNING or ERROR")
            return level
        return str(raw)
    except ValueError:
        expected = {
            "max_concurrent_jobs": "a whole number",
            "workflow_timeout": "a number of seconds",
            "quality_threshold": "a number from 0 to 1",
            "llm_concurrency": "a whole number",
            "llm_timeout": "a number of seconds",
            "worker_jobs": "a whole number",
            "lease_seconds": "a number of seconds",
            "aging_seconds": "a number of seconds",
            "wait_for_server": "a number of seconds",
            "webhook_drain": "a number of seconds",
            "webhook_retry": "a number of seconds",
            "max_jobs_per_spec": "a whole number",
        }.get(name, "a valid value")
        raise bad(expected) from None
