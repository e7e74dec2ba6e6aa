"""Load: simulated clients beside real torch runs, against `lrpilot serve`.

Default: 8 simulated clients x 10,000 steps x 4 scalars and 1 torch run; soak
(LRPILOT_SOAK=1): 100 x 10,000 and 2 torch runs. Every point must be stored (count equals
sent), manual LR commands sent to a torch run during the load must be applied within two
steps of being sent (each step takes 50 ms), and the controller's peak RSS is reported.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from pathlib import Path

from harness import (
    SOAK,
    Serve,
    SimClient,
    drive,
    finish_training,
    peak_rss_mb,
    start_training,
    step_counts,
    stop_process,
)
from lrpilot.monitor.remote import ControllerClient
from lrpilot.monitor.store import Store
from support import wait_for

CLIENTS, STEPS, TORCH_RUNS = (100, 10_000, 2) if SOAK else (8, 10_000, 1)
PACE = 0.05  # seconds per torch step: "within two steps" means within ~100 ms
COMMANDS = 5


def test_many_clients_and_real_runs_lose_nothing_and_commands_land(tmp_path: Path) -> None:
    serve = Serve(tmp_path / "load.db").start()
    assert serve.proc is not None
    stop = tmp_path / "stop"
    procs = [
        start_training(
            serve.endpoint,
            tmp_path / f"torch{i}.json",
            stop,
            "--run",
            f"torch-{i}",
            "--pace",
            str(PACE),
        )
        for i in range(TORCH_RUNS)
    ]
    sims = [SimClient(serve.endpoint, f"sim-{i}", STEPS) for i in range(CLIENTS)]
    elapsed: list[float] = []
    load = threading.Thread(target=lambda: elapsed.append(drive(sims, timeout=600)))
    sent_at: list[tuple[int, float]] = []  # (command id, wall time the request was sent)
    during_load = 0
    try:
        client = ControllerClient(serve.endpoint, timeout=10)
        wait_for(
            lambda: (
                sum(
                    r["name"].startswith("torch") and r["last_step"] > 5
                    for r in client.request("runs")
                )
                == TORCH_RUNS
            ),
            timeout=60,
            what="the torch runs to stream",
        )
        load.start()
        for k in range(COMMANDS):
            wait_for(
                lambda: any(s.acked_points for s in sims) or not load.is_alive(),
                what="the load to flow",
            )
            during_load += load.is_alive()
            t = time.time()
            sent = client.request("set_lr", run="torch-0", value=0.01 * (k + 1), who="load")
            sent_at.append((sent["command_id"], t))
            client.wait_applied(sent["command_id"], timeout=30)
        load.join(600)
        assert not load.is_alive(), "the simulated clients did not finish"
        rss = peak_rss_mb(serve.proc.pid)
        stop.touch()
        trains = [finish_training(p, tmp_path / f"torch{i}.json") for i, p in enumerate(procs)]
    finally:
        stop.touch()
        for p in procs:
            stop_process(p)
        serve.stop()

    with Store(serve.db, readonly=True) as store:
        for sim in sims:
            assert sim.done, f"{sim.run} did not finish"
            assert sim.sent_points >= sim.acked_points == 4 * STEPS
            assert store.run(sim.run_id).points == 4 * STEPS
        commands = {c.id: c for c in store.commands()}
    for sim in sims[:3]:  # and the rows themselves, for a few runs
        assert step_counts(serve.db, sim.run_id) == dict.fromkeys(range(STEPS), 4)
    for train in trains:
        counts = step_counts(serve.db, train["run_id"])
        assert sum(counts.values()) == train["acked"] and train["unacked"] == 0
        assert all(counts.get(s, 0) >= 2 for s in range(train["steps"]))
    # Each command took effect within two steps of the step running when it was sent.
    times = trains[0]["times"]
    lags = []
    for cid, t in sent_at:
        cmd = commands[cid]
        assert cmd.status == "applied", cmd
        running = bisect.bisect_right(times, t)  # first step that started after the send
        lags.append(cmd.applied_step - running)
    result = {
        "clients": CLIENTS,
        "steps": STEPS,
        "points": CLIENTS * STEPS * 4,
        "load_seconds": elapsed[0],
        "records_per_s": CLIENTS * STEPS * 4 / elapsed[0],
        "command_lag_steps": lags,
        "commands_during_load": during_load,
        "controller_peak_rss_mb": rss,
    }
    (tmp_path / "load.json").write_text(json.dumps(result, indent=1))
    print(f"\nload: {json.dumps(result)}")
    assert max(lags) <= 2, f"commands applied {lags} steps after being sent"
    assert during_load >= 1, "no command was sent while the load ran"
