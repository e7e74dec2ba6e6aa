"""Rewind: snapshots restore exactly, stay in budget, and Monitor uses them on hard cuts."""

from __future__ import annotations

import pytest
import torch
from lrpilot.client import Monitor
from lrpilot.client.protocol import Command
from lrpilot.client.rewind import Rewinder
from lrpilot.client.transport import MemoryTransport


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 4, generator=gen)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    tensors = [p.detach().clone() for p in model.parameters()]
    for s in opt.state.values():
        tensors += [v.detach().clone() for v in s.values() if isinstance(v, torch.Tensor)]
    return tensors


def make() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return model, torch.optim.Adam(model.parameters(), lr=0.01)


def test_restore_gives_back_exactly_the_older_snapshot_and_keeps_the_lr() -> None:
    model, opt = make()
    rw = Rewinder(model, opt, every=10)
    train(model, opt, 10)
    rw.maybe_snapshot(10)
    at10 = state(model, opt)
    train(model, opt, 10, seed=1)
    rw.maybe_snapshot(20)
    train(model, opt, 5, seed=2)
    opt.param_groups[0]["lr"] = 0.003  # changed since: the LR is not rolled back
    assert rw.restore() == 10
    for a, b in zip(state(model, opt), at10, strict=True):
        assert torch.equal(a, b)
    assert opt.param_groups[0]["lr"] == 0.003
    assert [s.step for s in rw.snapshots] == [10]  # the newer one is gone for good


def test_snapshots_only_every_k_steps_and_at_most_two() -> None:
    model, opt = make()
    rw = Rewinder(model, opt, every=5)
    for step in range(1, 23):
        rw.maybe_snapshot(step)
    assert [s.step for s in rw.snapshots] == [15, 20]


def test_over_budget_disables_with_a_warning() -> None:
    model, opt = make()
    train(model, opt, 1)
    rw = Rewinder(model, opt, every=1, budget_bytes=100)
    with pytest.warns(RuntimeWarning, match="rewind disabled"):
        rw.maybe_snapshot(1)
    assert rw.snapshots == [] and rw.restore() is None and "budget" in rw.disabled


def test_max_rewinds() -> None:
    model, opt = make()
    rw = Rewinder(model, opt, every=1, max_rewinds=1)
    rw.maybe_snapshot(1)
    assert rw.restore() == 1
    assert rw.restore() is None


def cut(mon: Monitor, t: MemoryTransport, trigger: str) -> None:
    cid = len(t.acks) + 1
    t.commands.append(
        Command(run_id=mon.run_id, command_id=cid, action="scale", value=0.1, source="auto",
                reason=f"{trigger}: x", trigger=trigger)
    )  # fmt: skip


def steps(mon: Monitor, model: torch.nn.Module, opt: torch.optim.Optimizer, n: int,
          loss: float = 1.0) -> None:  # fmt: skip
    """``n`` training steps, each reported to ``mon``."""
    for _ in range(n):
        train(model, opt, 1)
        mon.step(loss=loss)


def rewinding_after_20_steps() -> tuple[torch.nn.Module, torch.optim.Optimizer,
                                        MemoryTransport, Monitor]:  # fmt: skip
    """A rewinding Monitor (snapshots every 10 steps) on a model trained for 20 steps."""
    model, opt = make()
    t = MemoryTransport()
    mon = Monitor(run="rw", optimizer=opt, model=model, rewind=True, rewind_every=10, transport=t)
    steps(mon, model, opt, 20)
    return model, opt, t, mon


def test_monitor_rewinds_on_a_divergence_cut_not_on_a_plateau() -> None:
    model, opt, t, mon = rewinding_after_20_steps()
    # snapshots at steps 10 and 20; the older one (10) is what a cut restores
    at10 = mon._rewinder.snapshots[0].model  # type: ignore[union-attr]
    cut(mon, t, "plateau")
    train(model, opt, 1)
    mon.step(loss=1.0)
    assert t.acks[-1].rewind_step is None and mon.rewinds == 0
    cut(mon, t, "divergence")
    train(model, opt, 1)
    mon.step(loss=float("nan"))
    ack = t.acks[-1]
    assert ack.rewind_step == 10 and mon.rewinds == 1 and mon.changes[-1].rewind_step == 10
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, at10[name]), name
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.1 * 0.1)


def test_on_rewind_hook_is_called_instead_of_snapshots() -> None:
    model, opt = make()
    t = MemoryTransport()
    calls = []
    mon = Monitor(run="hook", optimizer=opt, model=model, rewind=True, on_rewind=calls.append,
                  transport=t)  # fmt: skip
    mon.step(loss=1.0)
    cut(mon, t, "spike")
    mon.step(loss=1.0)
    assert len(calls) == 1 and calls[0].trigger == "spike" and calls[0].lrs_before == [0.01]
    assert t.acks[-1].rewind_step is None and opt.param_groups[0]["lr"] == pytest.approx(0.001)


def test_rewind_needs_a_model() -> None:
    _, opt = make()
    with pytest.raises(Exception, match="rewind=True needs model"):
        Monitor(run="x", optimizer=opt, rewind=True, transport=MemoryTransport())


def test_the_state_before_the_first_step_is_the_first_snapshot() -> None:
    # A start at a far too high LR blows up within tens of steps, before step `rewind_every`.
    model, opt = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = MemoryTransport()
    mon = Monitor(run="rw0", optimizer=opt, model=model, rewind=True, rewind_every=100,
                  transport=t)  # fmt: skip
    for _ in range(5):
        train(model, opt, 1)
        mon.step(loss=1.0)
    cut(mon, t, "divergence")
    mon.step(loss=float("nan"))
    assert t.acks[-1].rewind_step == 0 and mon.rewinds == 1
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert opt.state == {} or all(not s for s in opt.state.values()), "Adam's state is empty again"


@pytest.mark.parametrize(
    ("now", "margin", "expected"),
    [(None, 0, 10), (35, 10, 20), (25, 10, 10), (45, 40, 10)],
)  # fmt: skip
def test_restore_takes_the_newest_snapshot_old_enough_else_the_older(now, margin, expected) -> None:  # type: ignore[no-untyped-def]
    model, opt = make()
    rw = Rewinder(model, opt, every=10)
    for step in (10, 20):
        train(model, opt, 10)
        rw.maybe_snapshot(step)
    assert rw.restore(now, margin) == expected, f"now {now}, margin {margin}"
    assert [s.step for s in rw.snapshots] == [expected]


def test_monitor_restores_the_newer_snapshot_on_a_spike() -> None:
    model, opt = make()
    t = MemoryTransport()
    mon = Monitor(run="rws", optimizer=opt, model=model, rewind=True, rewind_every=50,
                  flush_every=10, transport=t)  # fmt: skip
    for _ in range(130):
        train(model, opt, 1)
        mon.step(loss=1.0)
    cut(mon, t, "spike")  # snapshots at 50 and 100; 100 is two flushes (20 steps) before 130
    mon.step(loss=5.0)
    assert t.acks[-1].rewind_step == 100


@pytest.mark.parametrize(
    ("spike_at", "expected", "kept"),
    [(300, 0, [0]), (441, 0, [0, 400]), (630, 400, [400, 600])],
)  # fmt: skip
def test_a_spike_soon_after_a_rewind_restores_the_older_snapshot(spike_at, expected, kept) -> None:  # type: ignore[no-untyped-def]
    # Digits SGD at lr 10, recorded: a divergence cut rewound to step 0 at step 222, then a
    # spike at 441 took the step-400 snapshot, already damaged, and the net died. Within
    # 2 * every steps of a rewind a spike goes back to the older snapshot (step 0) instead;
    # later it takes the newest one old enough again (630: 400, not 600).
    model, opt = make()
    rw = Rewinder(model, opt, every=200)
    for step in range(0, 223):
        rw.maybe_snapshot(step)
    assert rw.restore() == 0  # the divergence rewind, at step 222
    for step in range(223, spike_at + 1):
        rw.maybe_snapshot(step)
    assert [s.step for s in rw.snapshots] == kept
    assert rw.restore(spike_at, margin=40) == expected, f"spike at {spike_at}"


def test_a_spike_after_a_spike_rewind_takes_the_newest_snapshot_old_enough() -> None:
    model, opt = make()
    rw = Rewinder(model, opt, every=200)
    for step in range(0, 1213):
        rw.maybe_snapshot(step)
    assert rw.restore(1212, margin=40) == 1000
    for step in range(1213, 1500):
        rw.maybe_snapshot(step)
    assert rw.restore(1480, margin=40) == 1400, (
        "a spike rewind does not arm the older-snapshot rule"
    )


def test_lr_changes_after_a_rewind_are_still_reported() -> None:
    # A rewind loads the optimizer's state, which replaces its param_groups list: the LR the
    # controller sees must follow the new groups, or every later decision is made blind.
    model, opt, t, mon = rewinding_after_20_steps()
    cut(mon, t, "divergence")
    steps(mon, model, opt, 3)
    cut(mon, t, "plateau")
    steps(mon, model, opt, 3)
    mon.flush()
    lrs = [v for _, name, v in t.points() if name == "lr"]
    assert lrs == pytest.approx([0.01, 0.001, 0.0001])
