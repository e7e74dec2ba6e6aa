"""LR commands on a real optimizer: ratios between groups, and composition with schedulers."""

from __future__ import annotations

import math

import pytest
import torch
from lrpilot.client.commands import LrControl


def optimizer(lrs: list[float]) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def test_scale_keeps_the_ratio_between_groups() -> None:
    opt = optimizer([0.1, 0.01])
    after = LrControl(opt).apply("scale", 0.5)
    assert after == pytest.approx([0.05, 0.005])
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.005])


def test_set_sets_group_zero_exactly_and_scales_the_others() -> None:
    opt = optimizer([0.1, 0.01])
    after = LrControl(opt).apply("set", 0.003)
    assert after[0] == 0.003 and after[1] == pytest.approx(0.0003)


@pytest.mark.parametrize("action, value", [("set", -1.0), ("scale", math.nan), ("jump", 1.0)])
def test_bad_commands_change_nothing(action: str, value: float) -> None:
    opt = optimizer([0.1])
    with pytest.raises(ValueError):
        LrControl(opt).apply(action, value)
    assert opt.param_groups[0]["lr"] == 0.1


def make_scheduler(kind: str, opt: torch.optim.Optimizer):  # type: ignore[no-untyped-def]
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
    if kind == "lambda":  # closed form: recomputes from base_lrs every step
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["step", "cosine", "lambda"])
def test_an_override_is_a_multiplier_on_top_of_the_scheduler(kind: str) -> None:
    """Run the same schedule twice, once with a x0.1 override at step 5: from then on the
    LR must be exactly 0.1 x the plain schedule, at every later scheduler step."""
    ref_opt = optimizer([0.1, 0.05])
    ref = make_scheduler(kind, ref_opt)
    opt = optimizer([0.1, 0.05])
    sched = make_scheduler(kind, opt)
    control = LrControl(opt, sched)
    for t in range(15):
        if t == 5:
            control.apply("set", opt.param_groups[0]["lr"] * 0.1)
        mult = 0.1 if t >= 5 else 1.0
        for g, rg in zip(opt.param_groups, ref_opt.param_groups, strict=True):
            assert g["lr"] == pytest.approx(rg["lr"] * mult, rel=1e-9), f"wrong at step {t}"
        ref_opt.step()
        ref.step()
        opt.step()
        sched.step()
    control.detach()
    assert "step" not in vars(sched)


def test_without_the_scheduler_a_chainable_one_still_keeps_the_override() -> None:
    opt = optimizer([0.1])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    LrControl(opt).apply("set", 0.01)
    for _ in range(2):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)
