"""Delivery guarantees with a real socket: controller absent, automatic control end to end."""

from __future__ import annotations

import time
import warnings

import torch
from lrpilot.client import Monitor, StatsConfig
from lrpilot.monitor.store import Store
from support import ThreadedController, free_port, wait_for


def test_absent_controller_never_hurts_the_loop() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon = Monitor(run="alone", optimizer=opt, endpoint=endpoint, max_points=500,
                      flush_every=10, stats=StatsConfig.off())  # fmt: skip
        t0 = time.perf_counter()
        for step in range(2000):
            mon.step(loss=torch.tensor(float(step)), acc=0.5)
        loop = time.perf_counter() - t0
        t1 = time.perf_counter()
        report = mon.close()
        closing = time.perf_counter() - t1
    assert report.acked_points == 0 and not report.connected
    # 4,001 points were made (2 per step + the first LR); only the newest ~500 are held.
    assert report.dropped_points + report.unacked_points == 4001
    assert report.dropped_points >= 3400 and mon.dropped == report.dropped_points
    assert any("not confirmed by the controller" in str(w.message) for w in caught)
    assert closing < 3.0, f"close() took {closing:.1f} s with nobody listening"
    assert loop < 10.0


def test_auto_control_detects_commands_applies_and_records(tmp_path) -> None:
    """A loss that stops improving: the plateau rule fires, the command reaches the loop and
    is applied between steps, the ack is recorded with its step."""
    with ThreadedController(tmp_path / "auto.db",
                            control_defaults={"patience": 40, "cooldown": 20}) as c:  # fmt: skip
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        gen = torch.Generator().manual_seed(0)
        with Monitor(run="auto", optimizer=opt, endpoint=c.endpoint, control="auto",
                     flush_every=5) as mon:  # fmt: skip
            for step in range(3000):
                loss = 1.0 + 0.01 * torch.randn((), generator=gen)  # flat: a plateau
                mon.step(loss=loss)
                time.sleep(0.001)
                if mon.changes and step > mon.changes[0].step + 5:
                    break
        assert mon.changes, "no automatic change reached the training loop"
        change = mon.changes[0]
        assert change.source == "auto" and change.trigger == "plateau"
        assert opt.param_groups[0]["lr"] < 0.1
        store = Store(c.db, readonly=True)
        cmd = wait_for(lambda: [x for x in store.commands(mon.run_id) if x.status == "applied"],
                       what="the ack to be recorded")[0]  # fmt: skip
        assert (cmd.source, cmd.applied_step, cmd.lrs_after) == ("auto", change.step, [0.05])
        assert "plateau" in cmd.reason
        events = store.events(mon.run_id)
        assert events and events[0].kind == "plateau" and events[0].data["command"][0] == "scale"


def test_advise_mode_records_the_decision_but_changes_nothing(tmp_path) -> None:
    with ThreadedController(tmp_path / "advise.db",
                            control_defaults={"patience": 40, "cooldown": 20}) as c:  # fmt: skip
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        store = Store(c.db, readonly=True)
        with Monitor(run="advise", optimizer=opt, endpoint=c.endpoint, flush_every=5) as mon:
            for _ in range(400):
                mon.step(loss=1.0)
                time.sleep(0.001)
            wait_for(lambda: store.events(mon.run_id), what="an advised decision")
        assert mon.changes == [] and opt.param_groups[0]["lr"] == 0.1
        event = store.events(mon.run_id)[0]
        assert event.kind == "plateau" and event.data["why_not"].startswith("advise")
        assert store.commands(mon.run_id) == []
