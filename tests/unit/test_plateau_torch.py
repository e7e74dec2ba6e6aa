"""The plateau detector's ``torch`` method against the real ReduceLROnPlateau, point for point."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lrpilot.monitor.detectors import PlateauConfig, PlateauDetector
from lrpilot.monitor.policy import reduce_lr


def compare(values, *, mode, threshold, threshold_mode, patience, cooldown, factor, min_lr, eps):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode=mode, factor=factor, patience=patience, threshold=threshold,
            threshold_mode=threshold_mode, cooldown=cooldown, min_lr=min_lr, eps=eps,
        )  # fmt: skip
    det = PlateauDetector(
        PlateauConfig(
            method="torch", mode=mode, patience=patience, threshold=threshold,
            threshold_mode=threshold_mode, cooldown=cooldown,
        )
    )  # fmt: skip
    lr = 1.0
    for i, v in enumerate(values):
        sched.step(v)
        if det.update(i, v) is not None:
            lr = reduce_lr(lr, factor, min_lr, eps)
        want = opt.param_groups[0]["lr"]
        assert lr == want, f"wrong at step {i}: expected LR {want!r}, got {lr!r}"
        mine = (det.best, det.num_bad, det.cooldown_counter)
        theirs = (sched.best, sched.num_bad_epochs, sched.cooldown_counter)
        same = all(a == b or (a != a and b != b) for a, b in zip(mine, theirs, strict=True))
        assert same, f"wrong at step {i}: expected (best, bad, cooldown) {theirs}, got {mine}"


TABLE = [
    # torch's own test style: a series in, the LR at each step checked inside compare().
    ([10, 9, 9, 9, 9, 9, 9, 8, 8, 8], dict(patience=2, cooldown=0)),
    ([10, 9, 9, 9, 9, 9, 9, 9, 9, 9], dict(patience=2, cooldown=2)),
    ([1, 2, 3, 4, 5, 6, 7, 8], dict(patience=1, cooldown=0, mode="max")),
    ([5.0, math.nan, math.nan, math.nan, 4.0, math.inf, math.inf, math.inf], dict(patience=1)),
    ([-1.0, -1.0, -1.0, -1.0, -2.0, -2.0, -2.0], dict(patience=1, threshold_mode="abs")),
]


@pytest.mark.parametrize(("values", "knobs"), TABLE)
def test_reduce_lr_on_plateau_table(values, knobs) -> None:
    args = dict(mode="min", threshold=1e-4, threshold_mode="rel", patience=10, cooldown=0,
                factor=0.1, min_lr=0.0, eps=1e-8)  # fmt: skip
    compare([float(v) for v in values], **{**args, **knobs})


values = st.one_of(
    st.floats(-10, 10, allow_nan=False, width=32),
    st.sampled_from([0.0, 1.0, 1.0001, math.nan, math.inf, -math.inf]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(values, max_size=60),
    mode=st.sampled_from(["min", "max"]),
    threshold=st.sampled_from([0.0, 1e-4, 0.01, 0.5]),
    threshold_mode=st.sampled_from(["rel", "abs"]),
    patience=st.integers(0, 5),
    cooldown=st.integers(0, 4),
    factor=st.sampled_from([0.1, 0.5, 0.9]),
    min_lr=st.sampled_from([0.0, 1e-3, 0.2]),
    eps=st.sampled_from([1e-8, 0.05]),
)
def test_reduce_lr_on_plateau_random(values, **knobs) -> None:
    compare(values, **knobs)
