"""The policy file: TOML in, frozen dataclasses out, and a watcher that hot-reloads it.

A file sets the defaults for every run and, in ``[[runs]]`` entries, overrides for the runs
whose name matches a glob pattern (every matching entry applies, in file order, later ones
winning). Every key not written keeps its documented default (docs/policy.md)::

    [policy]            # the decision rules: PolicyConfig
    factor = 0.5
    cooldown = 200

    [plateau]           # each detector's settings: PlateauConfig, OscillationConfig, ...
    patience = 500

    [[runs]]
    match = "bert-*"    # fnmatch glob on the run name
    mode = "auto"       # overrides what the run asked for with Monitor(control=...)
    plateau = { patience = 2000 }

Every value is checked when the file is loaded, overrides included, so a mistake is reported
at once in one line with the file, the key, the value and what is allowed, not when a run
happens to match. :class:`PolicyWatcher` reloads the file when it is saved: parse and check,
then swap the reference; a broken file keeps the last good policy in force and is reported
through a callback.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from ..client.errors import LrpilotError
from .policy import RunPolicy

__all__ = [
    "DEFAULT_POLICY",
    "PolicyFile",
    "PolicyFileError",
    "PolicyOverride",
    "PolicyWatcher",
    "load_policy",
    "parse_policy",
]

log = logging.getLogger(__name__)

# Section name in the file -> field of RunPolicy ([policy] is RunPolicy.rules).
_SECTIONS = {
    "policy": "rules",
    "plateau": "plateau",
    "oscillation": "oscillation",
    "spike": "spike",
    "divergence": "divergence",
    "alignment": "alignment",
}
_TOP_KEYS = (*_SECTIONS, "runs")
_RUN_KEYS = ("match", "mode", *_SECTIONS)


class PolicyFileError(LrpilotError, ValueError):
    """The policy file cannot be read, is not TOML, or has a bad key or value.

    The message is one line: the file, where in it, the key, the value and what is allowed.
    """


@dataclass(frozen=True)
class PolicyOverride:
    """One ``[[runs]]`` entry: the settings applied to runs whose name matches ``match``."""

    match: str
    settings: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    def matches(self, run: str) -> bool:
        """Whether the glob pattern matches the run's name (case-sensitive)."""
        return fnmatch.fnmatchcase(run, self.match)

    def apply(self, policy: RunPolicy) -> RunPolicy:
        """``policy`` with this entry's settings on top."""
        changes = {}
        for section, items in self.settings:
            attr = _SECTIONS[section]
            changes[attr] = replace(getattr(policy, attr), **dict(items))
        return replace(policy, **changes)


@dataclass(frozen=True)
class PolicyFile:
    """A loaded policy file: the defaults for every run and the per-run-name overrides."""

    default: RunPolicy = field(default_factory=RunPolicy)
    overrides: tuple[PolicyOverride, ...] = ()
    path: str | None = None

    def for_run(self, run: str) -> RunPolicy:
        """The policy of the run named ``run``: the defaults, then every matching override."""
        policy = self.default
        for override in self.overrides:
            if override.matches(run):
                policy = override.apply(policy)
        return policy


DEFAULT_POLICY = PolicyFile()


def load_policy(path: str | os.PathLike[str]) -> PolicyFile:
    """Read and check a policy file.

    Raises:
        PolicyFileError: unreadable file, invalid TOML, unknown key or bad value; one line.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyFileError(f"{path}: cannot read the policy file: {exc}") from None
    return parse_policy(text, str(path))


def parse_policy(text: str, source: str = "<policy>") -> PolicyFile:
    """Check a policy file's text; ``source`` names it in error messages.

    Raises:
        PolicyFileError: invalid TOML, unknown key or bad value; one line.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyFileError(f"{source}: not valid TOML: {exc}") from None
    _check_keys(source, "", doc, _TOP_KEYS)
    default = _apply(source, "", RunPolicy(), doc)
    runs = doc.get("runs", [])
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise PolicyFileError(f"{source}: runs must be [[runs]] tables, got {runs!r}")
    overrides = []
    for i, entry in enumerate(runs, 1):
        where = f"[[runs]] #{i}: "
        _check_keys(source, where, entry, _RUN_KEYS)
        pattern = entry.get("match")
        if not isinstance(pattern, str) or not pattern:
            raise PolicyFileError(
                f'{source}: {where}match must be a glob pattern string such as "bert-*", '
                f"got {pattern!r}"
            )
        body = {k: v for k, v in entry.items() if k != "match"}
        if "mode" in body:
            body.setdefault("policy", {})
            if not isinstance(body["policy"], dict):
                raise PolicyFileError(f"{source}: {where}policy must be a table")
            body["policy"] = {**body["policy"], "mode": body.pop("mode")}
        _apply(source, f"{where}match {pattern!r}: ", default, body)  # checks every value
        settings = tuple(
            (section, tuple(sorted(_coerce(section, body[section]).items())))
            for section in _SECTIONS
            if section in body
        )
        overrides.append(PolicyOverride(pattern, settings))
    return PolicyFile(default, tuple(overrides), source)


def _check_keys(
    source: str, where: str, table: Mapping[str, Any], allowed: tuple[str, ...]
) -> None:
    for key in table:
        if key not in allowed:
            raise PolicyFileError(
                f"{source}: {where}unknown key {key!r}; allowed: {', '.join(allowed)}"
            )


def _coerce(section: str, table: Mapping[str, Any]) -> dict[str, Any]:
    """TOML integers where the dataclass wants a float become floats; nothing else changes."""
    cls = type(getattr(RunPolicy(), _SECTIONS[section]))
    out = {}
    for f in fields(cls):
        if f.name in table:
            value = table[f.name]
            wants_float = "float" in str(f.type) and "int" not in str(f.type)
            if wants_float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            out[f.name] = value
    return out


def _apply(source: str, where: str, base: RunPolicy, doc: Mapping[str, Any]) -> RunPolicy:
    changes = {}
    for section, attr in _SECTIONS.items():
        if section not in doc:
            continue
        table = doc[section]
        if not isinstance(table, dict):
            raise PolicyFileError(f"{source}: {where}[{section}] must be a table, got {table!r}")
        current = getattr(base, attr)
        names = tuple(f.name for f in fields(current))
        _check_keys(source, f"{where}[{section}] ", table, names)
        try:
            changes[attr] = replace(current, **_coerce(section, table))
        except ValueError as exc:
            raise PolicyFileError(f"{source}: {where}{exc}") from None
    return dataclasses.replace(base, **changes)


_WRITE_EVENTS = frozenset({"created", "modified", "moved", "deleted", "closed"})


class _Handler(FileSystemEventHandler):
    def __init__(self, target: Path, kick: threading.Event) -> None:
        self._target = target
        self._kick = kick

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Opening and reading (our own reloads included) change nothing: only writes count.
        if event.event_type not in _WRITE_EVENTS or event.is_directory:
            return
        for p in (event.src_path, getattr(event, "dest_path", "")):
            if p and Path(os.fsdecode(p)).name == self._target.name:
                self._kick.set()
                return


class PolicyWatcher:
    """Keeps a policy file's latest good version in :attr:`policy`, reloading on save.

    The directory is watched (editors save by writing a new file and renaming it over the old
    one). Events are coalesced for ``settle`` seconds, then the file is parsed and checked;
    only then is :attr:`policy` swapped (one reference assignment) and ``on_change`` called
    with the new :class:`PolicyFile`. A broken file keeps the last good policy and calls
    ``on_error`` with one line. Both callbacks run on the watcher's thread. Saving the same
    policy again calls nothing.

    Args:
        path: the policy file; it is loaded once here, and a broken file raises.
        on_change: called with the new PolicyFile after a successful reload.
        on_error: called with a one-line message after a failed reload.
        settle: seconds of quiet after the last event before the file is read.

    Raises:
        PolicyFileError: the file is missing or broken at start.

    Example:
        >>> with PolicyWatcher("policy.toml", on_change=apply_to_runs, on_error=log.warning) as w:
        ...     serve(policy=lambda name: w.policy.for_run(name))  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        on_change: Callable[[PolicyFile], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        *,
        settle: float = 0.05,
    ) -> None:
        self.path = Path(path).resolve()
        self.policy = load_policy(self.path)
        self._on_change = on_change
        self._on_error = on_error
        self._settle = settle
        self._kick = threading.Event()
        self._stopping = threading.Event()
        self._observer: Any = None
        self._worker: threading.Thread | None = None
        self.reloads = 0  # successful reloads that changed the policy
        self.errors = 0  # failed reloads

    def start(self) -> PolicyWatcher:
        """Start watching; returns self."""
        if self._observer is not None:
            return self
        self._stopping.clear()
        observer = Observer()
        observer.schedule(_Handler(self.path, self._kick), str(self.path.parent))
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._worker = threading.Thread(target=self._run, name="lrpilot-policy", daemon=True)
        self._worker.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching and join both threads (observer and reloader) within ``timeout``."""
        self._stopping.set()
        self._kick.set()
        observer, worker = self._observer, self._worker
        self._observer = self._worker = None
        try:
            if observer is not None:
                observer.stop()
        finally:
            if observer is not None:
                observer.join(timeout)
            if worker is not None:
                worker.join(timeout)
        alive = [t.name for t in (observer, worker) if t is not None and t.is_alive()]
        if alive:
            log.warning("policy watcher: %s still running after %.1f s", alive, timeout)

    def __enter__(self) -> PolicyWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reload(self) -> bool:
        """Reload now; True when a new policy was put in force. Never raises for a bad file."""
        try:
            new = load_policy(self.path)
        except PolicyFileError as exc:
            self.errors += 1
            message = f"{exc}; keeping the last good policy"
            log.warning("%s", message)
            if self._on_error is not None:
                self._on_error(message)
            return False
        if new == self.policy:
            return False
        self.policy = new
        self.reloads += 1
        if self._on_change is not None:
            self._on_change(new)
        return True

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._kick.wait()
            if self._stopping.is_set():
                return
            self._kick.clear()
            while self._kick.wait(self._settle):  # coalesce a burst of events from one save
                if self._stopping.is_set():
                    return
                self._kick.clear()
            try:
                self.reload()
            except Exception:  # a callback failed: say so, keep watching
                log.exception("policy watcher: a reload callback raised")
