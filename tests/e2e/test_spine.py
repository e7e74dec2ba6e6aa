"""End to end: `lrpilot serve` and a real torch training process, over real sockets, into a
real SQLite file; checked through the real CLI and from the training side."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from support import ServeProcess, lrpilot, wait_for

SCRIPT = Path(__file__).with_name("train_script.py")


def start_training(endpoint: str, out: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "--endpoint", endpoint, "--out", str(out), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"training failed:\n{out}"
    return out


def run_at_step(endpoint: str, name: str, step: int) -> dict:
    def ready() -> dict | None:
        r = lrpilot("runs", "--json", "--endpoint", endpoint)
        runs = json.loads(r.stdout) if r.returncode == 0 else []
        return next((x for x in runs if x["name"] == name and x["last_step"] >= step), None)

    return wait_for(ready, timeout=120, what=f"run {name} to reach step {step}")  # type: ignore[return-value]


def exported(db: Path, run: str) -> dict[tuple[int, str], float]:
    r = lrpilot("export", run, "--format", "csv", "--db", str(db))
    assert r.returncode == 0, r.stderr
    return {(int(row["step"]), row["series"]): float(row["value"])
            for row in csv.DictReader(io.StringIO(r.stdout))}  # fmt: skip


def test_losses_stored_and_set_lr_applied_at_the_acked_step(serve: ServeProcess, tmp_path: Path):
    out = tmp_path / "train.json"
    proc = start_training(serve.endpoint, out, "--run", "spine", "--steps", "400", "--pace", "0.01")
    run_at_step(serve.endpoint, "spine", 50)
    r = lrpilot("set-lr", "spine", "0.003", "--endpoint", serve.endpoint)
    assert r.returncode == 0, r.stderr
    applied = int(re.search(r"in effect from step (\d+)", r.stdout).group(1))
    finish(proc)
    train = json.loads(out.read_text())

    # From the training side: the optimizer ran with the new LR from exactly that step.
    used = [lrs[0] for lrs in train["used_lrs"]]
    assert used[applied - 1] == 0.05 and used[applied] == 0.003
    assert all(lr == 0.003 for lr in used[applied:])

    # Every step's loss is stored, with the value the training loop saw.
    points = exported(serve.db, "spine")
    assert len(train["losses"]) == 400
    for step, loss in enumerate(train["losses"]):
        assert points[(step, "loss")] == pytest.approx(loss, rel=1e-7, abs=0), f"step {step}"
    assert points[(applied, "lr")] == 0.003
    assert train["acked"] == len(points) and train["dropped"] == 0

    hist = lrpilot("history", "spine", "--json", "--endpoint", serve.endpoint)
    (cmd,) = json.loads(hist.stdout)
    assert (cmd["source"], cmd["status"], cmd["applied_step"]) == ("manual", "applied", applied)
    table = lrpilot("history", "spine", "--db", str(serve.db)).stdout
    assert "manual" in table and str(applied) in table
    runs = json.loads(lrpilot("runs", "--json", "--db", str(serve.db)).stdout)
    assert runs[0]["status"] == "finished" and runs[0]["lrs"] == [0.003]

    jsonl = lrpilot("export", "spine", "--format", "jsonl", "--db", str(serve.db)).stdout
    assert len(jsonl.splitlines()) == len(points)

    late = lrpilot("set-lr", "spine", "0.1", "--endpoint", serve.endpoint)
    assert late.returncode == 1 and "has finished" in late.stderr


def test_scale_keeps_the_ratio_of_two_param_groups(serve: ServeProcess, tmp_path: Path):
    out = tmp_path / "train.json"
    proc = start_training(serve.endpoint, out, "--run", "groups", "--groups", "2",
                          "--steps", "300", "--pace", "0.01")  # fmt: skip
    run_at_step(serve.endpoint, "groups", 30)
    r = lrpilot("scale-lr", "groups", "0.5", "--endpoint", serve.endpoint)
    assert r.returncode == 0, r.stderr
    applied = int(re.search(r"in effect from step (\d+)", r.stdout).group(1))
    finish(proc)
    used = json.loads(out.read_text())["used_lrs"]
    assert used[applied - 1] == pytest.approx([0.05, 0.005])
    assert used[applied] == pytest.approx([0.025, 0.0025])
    assert used[-1][0] / used[-1][1] == pytest.approx(10.0)


@pytest.mark.parametrize("scheduler", ["step", "cosine"])
def test_a_scheduler_does_not_undo_a_manual_override(
    serve: ServeProcess, tmp_path: Path, scheduler: str
) -> None:
    out = tmp_path / "train.json"
    proc = start_training(serve.endpoint, out, "--run", scheduler, "--scheduler", scheduler,
                          "--steps", "300", "--pace", "0.01")  # fmt: skip
    run_at_step(serve.endpoint, scheduler, 30)
    r = lrpilot("scale-lr", scheduler, "0.1", "--endpoint", serve.endpoint)
    assert r.returncode == 0, r.stderr
    applied = int(re.search(r"in effect from step (\d+)", r.stdout).group(1))
    finish(proc)
    train = json.loads(out.read_text())
    for t, (lrs, ref) in enumerate(zip(train["used_lrs"], train["reference_lrs"], strict=True)):
        expected = ref[0] * (0.1 if t >= applied else 1.0)
        assert lrs[0] == pytest.approx(expected, rel=1e-9), f"wrong at step {t}"
    assert applied < 250  # several scheduler steps ran after the override


def test_controller_killed_mid_run_loses_nothing(serve: ServeProcess, tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    proc = start_training(serve.endpoint, out, "--run", "crash", "--steps", "700",
                          "--pace", "0.01")  # fmt: skip
    first = run_at_step(serve.endpoint, "crash", 150)
    serve.kill()
    restarted = ServeProcess(serve.db, port=serve.port)
    try:
        wait_for(lambda: proc.poll() is None, what="training to keep running")
        restarted.start()
        finish(proc)
        train = json.loads(out.read_text())
        assert train["dropped"] == 0 and train["unacked"] == 0
        assert train["resent_batches"] > 0 or train["acked"] > 0
    finally:
        restarted.stop()
    con = sqlite3.connect(serve.db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    runs = con.execute("SELECT id FROM runs WHERE name='crash'").fetchall()
    assert runs == [(first["id"],)] == [(train["run_id"],)]
    points = exported(serve.db, "crash")
    missing = [s for s in range(700) if (s, "loss") not in points]
    assert missing == [], f"{len(missing)} steps lost, first {missing[:5]}"
    assert all(points[(s, "loss")] == pytest.approx(v, rel=1e-7)
               for s, v in enumerate(train["losses"]))  # fmt: skip
