"""The policy file: parsing, checking, per-run overrides, and hot reload with real watchdog."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from lrpilot.monitor.policy import RunPolicy
from lrpilot.monitor.policy_file import (
    DEFAULT_POLICY,
    PolicyFile,
    PolicyFileError,
    PolicyWatcher,
    load_policy,
    parse_policy,
)

GOOD = """
[policy]
factor = 0.3
cooldown = 50

[plateau]
patience = 1000

[divergence]
reference = 2.302585

[[runs]]
match = "bert-*"
mode = "auto"
plateau = { patience = 2000 }

[[runs]]
match = "bert-large*"
policy = { mode = "off", max_lr = 2 }
spike.k = 8
"""


def test_defaults_are_the_dataclass_defaults() -> None:
    assert parse_policy("").for_run("anything") == RunPolicy()
    assert DEFAULT_POLICY.for_run("x") == RunPolicy()


def test_overrides_apply_in_order_by_glob() -> None:
    pf = parse_policy(GOOD, "p.toml")
    plain = pf.for_run("resnet")
    assert (plain.rules.factor, plain.rules.mode, plain.plateau.patience) == (0.3, None, 1000)
    assert plain.divergence.reference == 2.302585
    bert = pf.for_run("bert-base")
    assert (bert.rules.mode, bert.plateau.patience, bert.rules.factor) == ("auto", 2000, 0.3)
    large = pf.for_run("bert-large-2")
    assert (large.rules.mode, large.plateau.patience, large.spike.k) == ("off", 2000, 8.0)
    assert large.rules.max_lr == 2.0 and isinstance(large.rules.max_lr, float)


BAD = [
    ("[plateau]\npatience = 5", r"p.toml: plateau.patience must be an integer in \[16, inf\]"),
    ("[policy]\nfactor = 1.5", r"p.toml: policy.factor must be in \(0, 1\), got 1.5"),
    ("[policy]\nfactr = 0.5", "p.toml: \\[policy\\] unknown key 'factr'; allowed: mode, factor,"),
    ("[plateu]\nx = 1", "p.toml: unknown key 'plateu'; allowed: policy, plateau, oscillation,"),
    ("policy = 3", "p.toml: \\[policy\\] must be a table, got 3"),
    ('[[runs]]\nmode = "auto"', "p.toml: \\[\\[runs\\]\\] #1: match must be a glob pattern"),
    ('[[runs]]\nmatch = "a*"\nmode = "fast"',
     "p.toml: \\[\\[runs\\]\\] #1: match 'a\\*': policy.mode must be one of auto, advise, off; "
     "got 'fast'"),
    ('[[runs]]\nmatch = "a"\nplateau = { patience = 2.5 }', "must be an integer, got 2.5"),
    ("x = [", "p.toml: not valid TOML"),
    ("[policy]\nmin_lr = 2", r"p.toml: policy.max_lr must be above min_lr 2, got 1.0"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_file_is_one_line_with_file_key_value_and_allowed(text: str, message: str) -> None:
    with pytest.raises(PolicyFileError, match=message) as info:
        parse_policy(text, "p.toml")
    assert "\n" not in str(info.value)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="cannot read the policy file"):
        load_policy(tmp_path / "nope.toml")


def wait_for(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def save(path: Path, text: str) -> None:
    """Save like an editor: write a temporary file, then rename it over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_hot_reload_applies_a_change_and_keeps_the_last_good_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("[policy]\nfactor = 0.5\n")
    changes: list[PolicyFile] = []
    errors: list[str] = []
    changed = threading.Event()
    watcher = PolicyWatcher(
        path, on_change=lambda p: (changes.append(p), changed.set()), on_error=errors.append
    )
    with watcher:
        assert watcher.policy.for_run("r").rules.factor == 0.5
        started = time.monotonic()
        save(path, "[policy]\nfactor = 0.25\n")
        assert changed.wait(5), "a saved change must be picked up"
        assert time.monotonic() - started < 1.0, "a saved change applies within a second"
        assert watcher.policy.for_run("r").rules.factor == 0.25
        assert changes[-1].for_run("r").rules.factor == 0.25

        save(path, "[policy]\nfactor = 7\n")
        wait_for(lambda: errors, what="the broken file to be reported")
        assert len(errors) == 1 and "\n" not in errors[0], errors
        assert "policy.factor must be in (0, 1), got 7.0" in errors[0]
        assert errors[0].endswith("keeping the last good policy")
        assert watcher.policy.for_run("r").rules.factor == 0.25, "the last good policy stays"

        changed.clear()
        path.write_text("[policy]\nfactor = 0.125\n")  # an in-place write works too
        assert changed.wait(5)
        assert watcher.policy.for_run("r").rules.factor == 0.125
    assert watcher._observer is None and watcher._worker is None
    assert not [t for t in threading.enumerate() if t.name == "lrpilot-policy"]


def test_watcher_refuses_a_broken_file_at_start_and_stop_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("[policy]\ncooldown = -1\n")
    with pytest.raises(PolicyFileError, match=r"policy.cooldown must be an integer in \[0, inf\]"):
        PolicyWatcher(path)
    path.write_text("")
    watcher = PolicyWatcher(path)
    watcher.stop()  # never started
    watcher.start()
    watcher.stop()
    watcher.stop()
