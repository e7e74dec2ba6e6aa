"""The detectors and the policy on real torch runs, through the real client and controller."""

from __future__ import annotations

import torch
from lrpilot.client import Monitor
from lrpilot.monitor.remote import ControllerClient
from lrpilot.monitor.store import Store
from sklearn.datasets import load_digits
from support import ThreadedController, wait_for


def digits_run(opt_factory, steps: int, endpoint: str, control: str, run: str,
               between=None, **monitor_kw) -> Monitor:  # type: ignore[no-untyped-def]  # fmt: skip
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )  # fmt: skip
    opt = opt_factory(model.parameters())
    with Monitor(run=run, optimizer=opt, model=model, endpoint=endpoint, control=control,
                 **monitor_kw) as mon:  # fmt: skip
        for step in range(steps):
            idx = torch.randint(0, 1400, (64,), generator=gen)
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss=loss)
            if between is not None:
                between(step, mon)
    with torch.no_grad():  # held out: the last 397 images, never trained on
        mon.held_out_accuracy = (model(x[1400:]).argmax(1) == y[1400:]).float().mean().item()  # type: ignore[attr-defined]
    return mon


def test_far_too_high_lr_is_cut_and_a_good_lr_is_left_alone(tmp_path) -> None:
    with ThreadedController(tmp_path / "c.db") as c:
        bad = digits_run(lambda p: torch.optim.SGD(p, lr=1.0, momentum=0.9), 1300, c.endpoint,
                         "auto", "too-high")  # fmt: skip
        # A good LR for digits Adam (bench/autocontrol.py: 3e-3 ends within 0.6 points of the best).
        good = digits_run(lambda p: torch.optim.Adam(p, lr=3e-3), 1300, c.endpoint, "auto",
                          "good")  # fmt: skip
        watched = digits_run(lambda p: torch.optim.Adam(p, lr=3e-3), 1300, c.endpoint, "off",
                             "good-watched")  # fmt: skip
        store = Store(c.db, readonly=True)
        events = store.events(bad.run_id)
        kinds = {e.kind for e in events}
        assert kinds & {"divergence", "oscillation", "plateau"}, kinds
        assert bad.changes and bad.lrs[0] < 1.0
        assert any(ch.trigger in ("divergence", "oscillation") for ch in bad.changes), [
            (ch.trigger, ch.reason) for ch in bad.changes
        ]
        applied = [cmd for cmd in store.commands(bad.run_id) if cmd.status == "applied"]
        assert applied and all(cmd.source == "auto" and cmd.reason for cmd in applied)
        # A good LR: no cut of any kind (the cosine may ask for a cautious increase, which
        # probation undoes if it hurts), and the run ends no worse than left alone.
        cuts = [e for e in store.events(good.run_id) if e.kind not in ("lr_too_small", "undo")]
        assert cuts == [], [(e.step, e.kind, e.reason) for e in cuts]
        assert good.held_out_accuracy >= watched.held_out_accuracy - 0.01, (
            good.held_out_accuracy, watched.held_out_accuracy,
            [(e.step, e.kind, e.reason) for e in store.events(good.run_id)],
        )  # fmt: skip


def test_a_run_of_known_length_ends_with_the_decay(tmp_path) -> None:
    with ThreadedController(tmp_path / "c.db") as c:
        mon = digits_run(lambda p: torch.optim.Adam(p, lr=3e-3), 600, c.endpoint, "auto",
                         "known-length", total_steps=600)  # fmt: skip
        decay = [ch for ch in mon.changes if ch.trigger == "decay"]
        store = Store(c.db, readonly=True)
        # Ten stages decided from step 480 on, linear towards 0 (5 % at the last, step 588);
        # detection may still be on the last flush when close() returns.
        wait_for(lambda: sum(e.kind == "decay" for e in store.events(mon.run_id)) >= 10,
                 what="ten decay stages recorded")  # fmt: skip
        events = store.events(mon.run_id)
        stages = [e for e in events if e.kind == "decay"]
        assert [e.data["stage"] for e in stages] == list(range(1, 11)), stages
        assert min(e.step for e in stages) == 480
        # A command takes a flush or two to arrive: the last stage may land after step 600.
        assert len(decay) >= 9, [(ch.step, ch.trigger, ch.reason) for ch in mon.changes]
        last = int(decay[-1].reason.split("final decay ", 1)[1].split("/", 1)[0])
        ratio = decay[-1].lrs_after[0] / decay[0].lrs_before[0]
        assert abs(ratio - (1 - (last - 0.5) / 10)) < 1e-6, [(ch.step, ch.reason) for ch in decay]
        # The cosine may still say "too small" in the decay; the policy records it, no increase.
        late = [e for e in events if e.kind == "lr_too_small" and e.step >= 480]
        assert all("final decay is on" in e.data.get("why_not", "") for e in late), [
            (e.step, e.reason, e.data.get("why_not")) for e in late
        ]


def test_advise_records_and_a_person_approves(tmp_path) -> None:
    with ThreadedController(tmp_path / "a.db") as c:
        store = Store(c.db, readonly=True)
        client = ControllerClient(c.endpoint)
        approved: list[int] = []

        def approve_once(step: int, mon: Monitor) -> None:
            if not approved and step % 20 == 0 and store.events(mon.run_id):
                approved.append(client.request("approve", run=mon.run_id)["command_id"])

        mon = digits_run(lambda p: torch.optim.SGD(p, lr=1.0, momentum=0.9), 900, c.endpoint,
                         "advise", "advised", between=approve_once)  # fmt: skip
        assert approved, "no advised decision to approve"
        event = store.events(mon.run_id)[0]
        assert event.data["why_not"].startswith("advise")
        cmd = wait_for(lambda: store.command(approved[0]).status == "applied"
                       and store.command(approved[0]))  # fmt: skip
        assert cmd.source == "approved" and cmd.applied_step is not None
        assert mon.changes and mon.changes[0].command_id == approved[0]


def test_a_divergence_cut_rewinds_to_a_snapshot_and_is_recorded(tmp_path) -> None:
    with ThreadedController(tmp_path / "r.db") as c:
        mon = digits_run(lambda p: torch.optim.SGD(p, lr=1.0, momentum=0.9), 1300, c.endpoint,
                         "auto", "rewound", rewind=True, rewind_every=100)  # fmt: skip
        cuts = [ch for ch in mon.changes if ch.trigger in ("divergence", "spike")]
        assert cuts and cuts[0].rewind_step is not None and mon.rewinds >= 1
        assert cuts[0].rewind_step < cuts[0].step
        store = Store(c.db, readonly=True)
        event = wait_for(lambda: [e for e in store.events(mon.run_id) if e.kind == "rewind"])[0]
        assert event.data["rewind_step"] == cuts[0].rewind_step
        assert event.data["steps_lost"] == cuts[0].step - cuts[0].rewind_step
        assert "steps lost" in event.reason
