"""SIGKILL `lrpilot serve` at random points while a real torch run trains, and restart it
on the same port and database each time (4 kills; 20 with LRPILOT_SOAK=1).

After each kill the database passes ``PRAGMA integrity_check``; after each restart the run
continues under the same id; at the end every step's points are counted and the points
lost are attributed to the kill whose outage they fell in. The result is printed and
written to ``kills.json`` in the test's tmp dir; the target, asserted, is 0 lost.
"""

from __future__ import annotations

import itertools
import json
import random
import sqlite3
from pathlib import Path

from harness import (
    SOAK,
    Serve,
    finish_training,
    integrity,
    start_training,
    step_counts,
    stop_process,
)
from lrpilot.monitor.store import Store
from support import wait_for

KILLS = 20 if SOAK else 4


def last_step(db: Path, run_id: str) -> int:
    with Store(db, readonly=True) as store:
        return store.run(run_id).last_step


def test_sigkill_the_controller_repeatedly_loses_nothing(tmp_path: Path) -> None:
    db, out, stop = tmp_path / "kills.db", tmp_path / "train.json", tmp_path / "stop"
    rng = random.Random(20261124)
    serve = Serve(db).start()
    proc = start_training(serve.endpoint, out, stop, "--run", "killed", "--pace", "0.003")
    committed: list[int] = []  # last stored step right after each kill
    try:
        assert proc.stdout is not None
        run_id = proc.stdout.readline().split()[-1]  # "run_id <id>"
        wait_for(lambda: db.exists() and _has_run(db, run_id), what="the run to be stored")
        for kill in range(KILLS):
            target = last_step(db, run_id) + rng.randint(10, 150)
            wait_for(
                lambda t=target: last_step(db, run_id) >= t,
                timeout=60,
                what=f"step {target} before kill {kill + 1}",
            )
            serve.kill()
            assert integrity(db) == "ok", f"integrity_check after kill {kill + 1}"
            committed.append(last_step(db, run_id))
            serve = Serve(db, port=serve.port).start()
            wait_for(
                lambda c=committed[-1]: last_step(db, run_id) > c + 20,
                timeout=60,
                what=f"the run to continue after restart {kill + 1}",
            )
        stop.touch()
        train = finish_training(proc, out)
    finally:
        stop.touch()
        stop_process(proc)
        serve.stop()

    assert integrity(db) == "ok"
    con = sqlite3.connect(db)
    assert con.execute("SELECT id FROM runs").fetchall() == [(run_id,)] == [(train["run_id"],)]
    con.close()
    steps = train["steps"]
    counts = step_counts(db, run_id)
    expected = {s: 3 if s == 0 else 2 for s in range(steps)}  # loss, batch (+ lr at step 0)
    missing = {s: n - counts.get(s, 0) for s, n in expected.items() if counts.get(s, 0) != n}
    bounds = [*committed, steps]
    lost = [
        sum(m for s, m in missing.items() if lo < s <= hi) for lo, hi in itertools.pairwise(bounds)
    ]
    result = {
        "kills": KILLS,
        "steps": steps,
        "points_expected": sum(expected.values()),
        "points_stored": sum(counts.values()),
        "committed_step_at_kill": committed,
        "lost_per_kill": lost,
        "max_lost_per_kill": max(lost, default=0),
        "lost_before_first_kill": sum(m for s, m in missing.items() if s <= committed[0]),
        "resent_batches": train["resent_batches"],
        "client_dropped": train["dropped"],
        "client_unacked": train["unacked"],
    }
    (tmp_path / "kills.json").write_text(json.dumps(result, indent=1))
    print(f"\nkills: {json.dumps(result)}")
    assert result["max_lost_per_kill"] == 0 and not missing, result
    assert (train["dropped"], train["unacked"]) == (0, 0)
    assert train["acked"] == result["points_expected"]


def _has_run(db: Path, run_id: str) -> bool:
    try:
        with Store(db, readonly=True) as store:
            store.run(run_id)
        return True
    except Exception:
        return False
