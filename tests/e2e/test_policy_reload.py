"""`lrpilot serve --policy`: a saved change is applied live, a broken save keeps the old one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import ServeProcess, free_port, lrpilot, wait_for


def test_policy_is_hot_reloaded_and_a_broken_save_is_rejected(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("[policy]\nfactor = 0.5\n")
    serve = ServeProcess(tmp_path / "p.db", None, "--http", "off", "--policy", str(policy))
    serve.start()
    try:
        serve.output_line("policy ")
        policy.write_text("[policy]\nfactor = 0.25\n")
        assert "policy reloaded" in _wait_line(serve, "policy reloaded")
        policy.write_text("[policy]\nfactor = 7\n")
        line = _wait_line(serve, "policy not reloaded")
        assert "factor" in line and "keeping the last good policy" in line
        assert lrpilot("status", "--endpoint", serve.endpoint).returncode == 0
    finally:
        assert serve.stop() == 0


def _wait_line(serve: ServeProcess, text: str) -> str:
    return wait_for(  # type: ignore[return-value]
        lambda: next((x for x in serve.lines if text in x), None), 10, f"a line with {text!r}"
    )


def test_a_broken_policy_at_start_is_one_clear_line(tmp_path: Path) -> None:
    policy = tmp_path / "bad.toml"
    policy.write_text("[policy]\nfactor = 'half'\n")
    r = subprocess.run(
        [sys.executable, "-m", "lrpilot.monitor.cli", "serve", "--http", "off", "--db",
         str(tmp_path / "x.db"), "--listen", f"tcp://127.0.0.1:{free_port()}",
         "--policy", str(policy)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.startswith("lrpilot: error:") and "factor" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
