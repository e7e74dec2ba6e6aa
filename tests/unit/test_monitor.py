"""Monitor with an in-memory transport: what step() records, validation, LR commands."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from lrpilot.client import Monitor, MonitorConfigError
from lrpilot.client.protocol import Command
from lrpilot.client.stats import StatsConfig
from lrpilot.client.transport import MemoryTransport


def make(**kw: object) -> tuple[Monitor, MemoryTransport, torch.optim.Optimizer]:
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    t = MemoryTransport()
    kw.setdefault("optimizer", opt)
    kw.setdefault("stats", StatsConfig.off())  # these tests count records: no statistics
    return Monitor(run="unit", transport=t, **kw), t, opt  # type: ignore[arg-type]


def test_every_kind_of_scalar_is_recorded_with_its_value() -> None:
    mon, t, _ = make(flush_every=1000)
    mon.step(loss=torch.tensor(1.5), acc=0.25, n=3, np_val=np.float32(0.5), t64=np.int64(7))
    mon.step(loss=torch.tensor(float("nan")), acc=float("inf"), n=4, np_val=np.float64(1.0),
             t64=np.int64(8))  # fmt: skip
    mon.close()
    pts = {(s, n): v for s, n, v in t.points()}
    assert pts[(0, "loss")] == 1.5 and pts[(0, "acc")] == 0.25 and pts[(0, "n")] == 3.0
    assert pts[(0, "np_val")] == 0.5 and pts[(0, "t64")] == 7.0
    assert math.isnan(pts[(1, "loss")]) and pts[(1, "acc")] == math.inf
    assert pts[(0, "lr")] == 0.1 and (1, "lr") not in pts  # only when it changes
    assert t.closed


def test_tensor_values_are_read_at_flush_not_each_step(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    orig = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or orig(self))
    mon, t, _ = make(flush_every=50, flush_interval=1e9)
    for i in range(49):
        mon.step(loss=torch.tensor(float(i)))
    assert t.flushes == [] and calls == []
    mon.step(loss=torch.tensor(49.0))
    assert len(t.flushes) == 1 and t.flushes[0].tensors.shape == (50,)
    assert calls == []


def test_flush_every_and_interval() -> None:
    mon, t, _ = make(flush_every=10, flush_interval=1e9)
    for _ in range(25):
        mon.step(loss=1.0)
    assert len(t.flushes) == 2  # after 10 steps and after 20
    mon.close()
    assert sum(len(f.records) for f in t.flushes) == 26


@pytest.mark.parametrize("name", ["lr", "lr/1", "step", "grad_norm", "_x"])
def test_reserved_scalar_names_are_refused(name: str) -> None:
    mon, _, _ = make()
    with pytest.raises(MonitorConfigError, match="reserved"):
        mon.step(**{name: 1.0})


@pytest.mark.parametrize(
    "value, match",
    [(torch.ones(3), "single number"), ("x", "must be a number"), (None, "must be a number")],
)
def test_bad_scalar_values_are_refused_at_the_first_call(value: object, match: str) -> None:
    mon, _, _ = make()
    with pytest.raises(MonitorConfigError, match=match):
        mon.step(loss=value)


@pytest.mark.parametrize("run", ["", "x" * 201, "a\x00b"])
def test_absurd_run_names(run: str) -> None:
    with pytest.raises(MonitorConfigError, match="run="):
        Monitor(run=run, transport=MemoryTransport())


@pytest.mark.parametrize("total_steps", [0, -5, 1.5, True, "100"])
def test_bad_total_steps_is_refused(total_steps: object) -> None:
    with pytest.raises(MonitorConfigError, match="total_steps"):
        Monitor(run="x", total_steps=total_steps, transport=MemoryTransport())  # type: ignore[arg-type]


def test_total_steps_travels_in_the_hello() -> None:
    transport = MemoryTransport()
    Monitor(run="x", total_steps=3000, transport=transport)
    assert transport.hello is not None and transport.hello.total_steps == 3000
    plain = MemoryTransport()
    Monitor(run="y", transport=plain)
    assert plain.hello is not None and plain.hello.total_steps == 0


def test_bad_endpoint_and_control_mode() -> None:
    with pytest.raises(MonitorConfigError, match="malformed endpoint"):
        Monitor(run="x", endpoint="localhost:5555", transport=MemoryTransport())
    with pytest.raises(MonitorConfigError, match="control"):
        Monitor(run="x", control="full", transport=MemoryTransport())


def test_endpoint_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LRPILOT_ENDPOINT", "tcp://127.0.0.1:6123")
    assert Monitor(run="x", transport=MemoryTransport()).endpoint == "tcp://127.0.0.1:6123"
    assert os.environ["LRPILOT_ENDPOINT"]


def test_same_name_distinct_run_ids() -> None:
    a, b = (Monitor(run="same", transport=MemoryTransport()) for _ in range(2))
    assert a.run_id != b.run_id


def test_commands_apply_between_steps_and_ack_the_first_step_using_them() -> None:
    changes = []
    mon, t, opt = make(on_lr_change=changes.append)
    for _ in range(5):
        mon.step(loss=1.0)
    t.commands.append(Command(run_id=mon.run_id, command_id=9, action="set", value=0.02))
    mon.step(loss=1.0)  # step 5 ran with 0.1; the change applies after it
    assert opt.param_groups[0]["lr"] == 0.02
    (ack,) = t.acks
    assert (ack.command_id, ack.step, ack.ok, ack.lrs) == (9, 6, True, [0.02])
    assert changes[0].lrs_before == [0.1] and changes[0].step == 6
    mon.step(loss=1.0)
    mon.close()
    lr = {s: v for s, n, v in t.points() if n == "lr"}
    assert lr == {0: 0.1, 6: 0.02}


def test_an_applied_command_tells_the_statistics_the_lr_changed() -> None:
    """So that the "budget" cadence computes the cosine every step while the controller's
    tests start afresh."""
    mon, t, opt = make(stats=StatsConfig(cos_every="budget"))
    told: list[int] = []
    assert mon.stats is not None
    mon.stats.lr_changed = lambda: told.append(mon.steps)  # type: ignore[method-assign]
    mon.step(loss=1.0)
    mon.step(loss=1.0)
    assert told == []
    t.commands.append(Command(run_id=mon.run_id, command_id=2, action="scale", value=0.5))
    mon.step(loss=1.0)
    assert told == [3] and opt.param_groups[0]["lr"] == 0.05
    mon.close()


def test_a_run_without_optimizer_refuses_commands() -> None:
    t = MemoryTransport()
    mon = Monitor(run="watch-only", transport=t)
    t.commands.append(Command(run_id=mon.run_id, command_id=1, action="scale", value=0.5))
    mon.step(loss=1.0)
    assert t.acks[0].ok is False and "no optimizer" in t.acks[0].error


def test_step_after_close_is_an_error_and_close_is_idempotent() -> None:
    mon, _, _ = make()
    mon.step(loss=1.0)
    r1 = mon.close()
    assert mon.close() is r1
    with pytest.raises(MonitorConfigError, match="after close"):
        mon.step(other=1.0)


def test_mixed_tensor_shapes_and_devices_fall_back_and_keep_values() -> None:
    mon, t, _ = make(flush_every=2)
    mon.step(loss=torch.tensor(1.5), acc=torch.tensor([0.25]))
    mon.step(loss=torch.tensor(2.5, dtype=torch.float64), acc=torch.tensor([0.75]))
    mon.close()
    pts = {(s, n): v for s, n, v in t.points()}
    assert [pts[(0, "loss")], pts[(0, "acc")], pts[(1, "loss")], pts[(1, "acc")]] == [
        1.5, 0.25, 2.5, 0.75,
    ]  # fmt: skip


def test_system_samples_are_opt_in_and_sent_as_system_series() -> None:
    mon, t, _ = make(flush_every=1, system_every=1e-6)
    mon.step(loss=1.0)
    mon.step(loss=1.0)
    mon.close()
    names = {n for _, n, _ in t.points()}
    assert any(n.startswith("system/") for n in names), names
    plain, t2, _ = make(flush_every=1)
    plain.step(loss=1.0)
    plain.close()
    assert not any(n.startswith("system/") for _, n, _ in t2.points())


@pytest.mark.parametrize(("control", "cos_steps"), [("auto", list(range(1, 45))),
                                                    ("advise", [20, 40])])  # fmt: skip
def test_auto_control_gets_the_cosine_on_its_budget_cadence(
    control: str, cos_steps: list[int]
) -> None:
    """The controller's alignment test needs the cosine promptly: under control="auto" the
    default statistics take the "budget" cadence, which sends one point per optimizer step
    until its first decision at step 64 (none for the first step, which has no previous
    update); the watch modes keep the sparse default cadence."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    t = MemoryTransport()
    mon = Monitor(run="cos", optimizer=opt, model=model, control=control, transport=t)
    for _ in range(45):
        opt.zero_grad()
        loss = model(torch.randn(8, 3)).pow(2).mean()
        loss.backward()
        opt.step()
        mon.step(loss=loss)
    mon.close()
    got = [s for s, n, v in t.points() if n == "cos_grad_update"]
    assert got == cos_steps
    assert mon.stats is not None
    assert mon.stats.config.cos_every == ("budget" if control == "auto" else 20)
    # The budget cadence is public, with what it measured; a fixed cadence has none.
    assert (mon.stats.cadence is not None) == (control == "auto")
    assert mon.stats.cos_every == (1 if control == "auto" else 20)  # dense for its first 64
    assert all(-1 <= v <= 1 for _, n, v in t.points() if n == "cos_grad_update")
    explicit = Monitor(run="x", optimizer=opt, model=model, control="auto",
                       transport=MemoryTransport(), stats=StatsConfig(cos_every=5))  # fmt: skip
    assert explicit.stats is not None and explicit.stats.cos_every == 5
    assert explicit.stats.cadence is None
    explicit.close()
