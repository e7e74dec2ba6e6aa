"""`lrpilot demo` finishes by itself, and stops cleanly on Ctrl-C leaving nothing behind."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

from support import lrpilot, wait_for


def test_demo_runs_to_the_end(tmp_path) -> None:
    db = tmp_path / "demo.db"
    r = lrpilot("demo", "--steps", "300", "--pace", "0", "--db", str(db),
                "--http", "127.0.0.1:0", timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "done:" in r.stdout and "held-out accuracy" in r.stdout
    assert "dashboard: http://127.0.0.1:" in r.stdout
    # The progress bar's last line shows the LR the run ended with (the final decay included).
    shown = re.findall(r"loss \S+  lr (\S+)", r.stdout)
    final = re.search(r"final lr (\S+),", r.stdout)
    assert shown and final and shown[-1] == final.group(1), r.stdout
    runs = lrpilot("runs", "--db", str(db), "--json")
    assert '"name": "demo-digits"' in runs.stdout and '"finished"' in runs.stdout


def test_demo_stops_on_ctrl_c(tmp_path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lrpilot.monitor.cli", "demo", "--steps", "100000", "--http", "off",
         "--db", str(tmp_path / "d.db")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    db = str(tmp_path / "d.db")

    def training() -> bool:  # the run is registered and has stored some steps
        r = lrpilot("runs", "--db", db, "--json")
        return (
            r.returncode == 0 and '"demo-digits"' in r.stdout and '"last_step": -1' not in r.stdout
        )

    try:
        wait_for(training, timeout=60, what="the demo's run to start")
    finally:
        proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("lrpilot demo did not stop within 20 s of Ctrl-C") from None
    assert rc == 130
    # Its controller was a thread of that process: the port is free again, the db unlocked.
    r = lrpilot("runs", "--db", db, "--json")
    assert r.returncode == 0 and "demo-digits" in r.stdout
    assert proc.stdout is not None and "interrupted" in proc.stdout.read()
