"""Every error bridge raises on purpose, in one tree.

    BridgeError                   base; carries an optional Location
    ├── UsageError                the command line itself is wrong (exit 2)
    ├── ConfigError               settings, environment or config file are wrong
    ├── SpecError                 one problem in a spec, at a place in it
    │   └── CycleError            dependencies that loop back on themselves
    ├── SpecErrors                every SpecError found in one spec, raised together
    ├── PreflightError            the servers lack nodes, models or enum values the plan needs
    ├── BackendError              a render backend failed a job
    │   ├── TransientBackendError worth retrying: refused, reset, 5xx, lost prompt
    │   ├── PermanentBackendError retrying cannot help: node_errors, execution_error
    │   └── JobTimeout            the job ran past WORKFLOW_TIMEOUT and was interrupted
    ├── ProbeError                an output file is unreadable or not what the job expected
    └── DirectionError            a direction agent's answers stayed invalid, or it failed
        └── LLMUnavailable        no model answers there (refused, 503): use another director

Foreign exceptions (aiohttp, asyncio, ffmpeg, yaml) are mapped onto this tree at the module
that calls the foreign library, so callers never need to know those libraries' types.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bridge.masking import mask_text


@dataclass(frozen=True, slots=True)
class Location:
    """Where in a user's file a problem is: 1-based line and column, and a JSON pointer."""

    file: str | None = None
    line: int | None = None
    column: int | None = None
    pointer: str = ""

    def __str__(self) -> str:
        parts = [self.file or "<spec>"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)


class BridgeError(Exception):
    """Base of every error bridge raises on purpose; the message says what to do next."""

    def __init__(self, message: str, where: Location | None = None) -> None:
        message = mask_text(message)  # messages reach logs, the database and webhooks
        super().__init__(message)
        self.message = message
        self.where = where

    def __str__(self) -> str:
        if self.where is None:
            return self.message
        return f"{self.where}: {self.message}"


class UsageError(BridgeError):
    """Raised when a command is called with arguments that cannot work."""


class NotFoundError(UsageError):
    """Raised when a project or scene asked for by id is not in the database."""


class ConflictError(UsageError):
    """Raised when a request clashes with the current state (a run under way, an id that
    names several things, a stored spec whose file now holds other text); `details` say
    what it clashes with."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


class ConfigError(BridgeError):
    """Raised when settings from flags, environment or a config file are invalid."""


class SpecError(BridgeError):
    """Raised for one problem in a spec; `where` points at the offending value."""

    def __init__(self, message: str, where: Location | None = None, path: str = "") -> None:
        super().__init__(message, where)
        self.path = path

    def __str__(self) -> str:
        body = f"{self.path}: {self.message}" if self.path else self.message
        return f"{self.where}: {body}" if self.where else body

    def sort_key(self) -> tuple[str, int, int, str]:
        w = self.where or Location()
        return (w.file or "", w.line or 0, w.column or 0, self.message)


class CycleError(SpecError):
    """Raised when `continue_from` / `after` links form a loop; the message names the path."""


class SpecErrors(BridgeError):
    """Raised with every SpecError of a spec at once, sorted by position."""

    def __init__(self, errors: Iterable[SpecError]) -> None:
        self.errors = sorted(errors, key=SpecError.sort_key)
        count = len(self.errors)
        noun = "error" if count == 1 else "errors"
        first = self.errors[0].where if self.errors else None
        super().__init__(f"{count} {noun} in spec", first)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class SpecUnreadable(BridgeError):
    """Raised when a submitted run's spec cannot be read for a passing reason (a network
    file system away): the run waits for it instead of failing."""


class PreflightError(BridgeError):
    """Raised before anything is queued when servers lack what the plan needs."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = sorted(set(problems))
        super().__init__("preflight failed:\n" + "\n".join(f"  - {p}" for p in self.problems))


class BackendError(BridgeError):
    """Raised when a backend fails a job; subclasses say whether a retry can help."""

    transient = False


class TransientBackendError(BackendError):
    """Raised for faults a retry can cure: refused or reset connections, 5xx, a lost prompt."""

    transient = True


class PermanentBackendError(BackendError):
    """Raised when the server rejected or failed the workflow itself; retrying cannot help."""


class JobTimeout(BackendError):
    """Raised when a job ran past WORKFLOW_TIMEOUT; the prompt was interrupted."""


class ProbeError(BridgeError):
    """Raised when an output cannot be read as media or misses the job's expectations."""


class DirectionError(BridgeError):
    """Raised when a scene cannot be directed: answers stayed invalid, or the service failed."""


class LLMUnavailable(DirectionError):
    """Raised when a model service does not answer or lacks the agent; the caller falls back."""


class RecordError(BridgeError):
    """Raised when something that happened could not be written to the job store."""
