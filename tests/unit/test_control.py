"""RunController: columnar batches in, decisions out, with the server's calls."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lrpilot.monitor.control import Decision, RunController
from lrpilot.monitor.detectors import PlateauConfig
from lrpilot.monitor.policy import PolicyConfig, RunPolicy


def batch(series: dict[str, list[tuple[int, float]]]):
    """Build a wire-shaped batch (steps, names, keys, values) from per-series points."""
    names = list(series)
    points = sorted((s, k, v) for k, name in enumerate(names) for s, v in series[name])
    return [p[0] for p in points], names, [p[1] for p in points], [p[2] for p in points]


def test_legacy_constructor_calls_still_work() -> None:
    RunController("off")
    ctl = RunController("auto", patience=50, factor=0.3, cooldown=10, min_lr=1e-5)
    assert ctl.mode == "auto" and not ctl.paused
    assert ctl.policy.plateau.patience == 50 and ctl.policy.rules.factor == 0.3
    assert ctl.policy.rules.cooldown == 10 and ctl.policy.rules.min_lr == 1e-5
    with pytest.raises(ValueError, match="mode must be one of"):
        RunController("fast")


def test_flat_loss_gives_one_plateau_command_then_cooldown() -> None:
    ctl = RunController("auto", patience=64, cooldown=1000)
    out = ctl.observe(*batch({"loss": [(s, 1.0) for s in range(200)], "lr": [(0, 0.1)]}))
    assert [(d.step, d.kind, d.command) for d in out][:1] == [(63, "plateau", ("scale", 0.5))]
    assert all(d.why_not.startswith("cooldown") for d in out[1:]), out
    assert all(isinstance(d, Decision) and d.reason for d in out)


def test_lr_changed_restarts_the_plateau_clock() -> None:
    ctl = RunController("auto", patience=64, cooldown=0)
    ctl.observe(*batch({"loss": [(s, 1.0) for s in range(40)]}))
    ctl.lr_changed(40)
    out = ctl.observe(*batch({"loss": [(s, 1.0) for s in range(40, 110)]}))
    assert [d.step for d in out] == [40 + 63], "the window must restart at the LR change"


def test_nan_loss_is_a_divergence_cut_and_grad_norm_too() -> None:
    ctl = RunController("auto")
    out = ctl.observe(*batch({"loss": [(0, 2.3), (1, math.nan)], "lr": [(0, 0.1)]}))
    assert [(d.step, d.kind, d.command) for d in out] == [(1, "divergence", ("scale", 0.1))]
    ctl = RunController("auto")
    out = ctl.observe(*batch({"grad_norm": [(0, 1.0), (1, math.inf)]}))
    assert [(d.kind, d.data["cause"]) for d in out] == [("divergence", "nonfinite")]


def test_advise_records_and_approve_returns_the_command() -> None:
    ctl = RunController("advise", patience=64)
    out = ctl.observe(*batch({"loss": [(s, 1.0) for s in range(64)], "lr": [(0, 0.1)]}))
    assert [(d.command, d.why_not) for d in out] == [(None, "advise: awaiting approval")]
    assert ctl.pending is not None and ctl.pending.command == ("scale", 0.5)
    approved = ctl.approve()
    assert approved is not None and approved.command == ("scale", 0.5)
    assert ctl.approve() is None


def test_pause_and_resume() -> None:
    ctl = RunController("auto", patience=64, cooldown=0)
    ctl.pause()
    assert ctl.paused
    out = ctl.observe(*batch({"loss": [(s, 1.0) for s in range(64)]}))
    assert [d.why_not for d in out] == ["paused (manual override)"]
    ctl.resume()
    out = ctl.observe(*batch({"loss": [(s, 1.0) for s in range(64, 128)]}))
    assert [d.command for d in out] == [("scale", 0.5)]


def test_steps_going_back_restart_instead_of_raising() -> None:
    ctl = RunController("auto")
    ctl.observe(*batch({"loss": [(s, 1.0) for s in range(100, 110)]}))
    out = ctl.observe(*batch({"loss": [(s, 1.0) for s in range(50, 60)]}))
    assert [(d.kind, d.step, d.command) for d in out] == [("restart", 50, None)]


def test_policy_override_and_set_policy() -> None:
    policy = RunPolicy(rules=PolicyConfig(mode="off"))
    ctl = RunController("auto", policy=policy)
    assert ctl.mode == "off"
    ctl.set_policy(RunPolicy(rules=PolicyConfig(factor=0.2), plateau=PlateauConfig(patience=64)))
    assert ctl.mode == "auto", "without a forced mode the run's own request applies"
    out = ctl.observe(*batch({"loss": [(s, 1.0) for s in range(100)]}))
    assert [d.command for d in out] == [("scale", 0.2)]


def test_noisy_descent_then_zigzag_then_blowup_end_to_end() -> None:
    rng = random.Random(0)
    losses = []
    for s in range(3000):
        v = 2.0 * math.exp(-s / 800) + 0.2 + 0.01 * rng.gauss(0, 1)
        if s >= 1500:
            v += 0.03 * (-1) ** s
        losses.append((s, v))
    losses.append((3000, math.nan))
    ctl = RunController("auto", cooldown=100)
    out = ctl.observe(*batch({"loss": losses, "lr": [(0, 0.1)]}))
    kinds = [(d.kind, d.command is not None) for d in out]
    assert kinds[0] == ("oscillation", True) and 1500 < out[0].step <= 1700, out[:2]
    assert kinds[-1] == ("divergence", True) and out[-1].step == 3000
    assert all(d.step >= 1500 for d in out), "nothing may fire during the clean descent"


def test_a_batch_decides_as_its_points_fed_one_at_a_time() -> None:
    """observe() skips per-detector step checks while steps move forward; the decisions,
    restarts mid-batch included, are those of feeding every point in its own batch."""
    rng = random.Random(3)
    steps = list(range(600)) + list(range(300, 900))  # back to step 300: a checkpoint
    points = [(s, 2.0 + rng.gauss(0, 0.05) if s < 500 else 0.5 + rng.gauss(0, 0.4))
              for s in steps]  # fmt: skip

    def wire(chunk: list[tuple[int, float]]) -> tuple[list, list, list, list]:
        steps = [s for s, _ in chunk for _ in range(3)]
        values = [x for s, v in chunk for x in (v, 0.1, 1.0 + s % 3)]
        return steps, ["loss", "lr", "grad_norm"], [0, 1, 2] * len(chunk), values

    def run(size: int) -> list[Decision]:
        ctl = RunController("auto", patience=40)
        out = []
        for i in range(0, len(points), size):
            out += ctl.observe(*wire(points[i : i + size]))
        return out

    one_by_one = run(1)
    assert any(d.kind == "restart" for d in one_by_one)
    for size in (7, 20, 1200):
        assert run(size) == one_by_one, f"batches of {size} decided differently"


def _stream(seed: int, steps: int, cos_from: int | None, restart_at: int | None):
    """Per-step point lists for a busy run: a descent with a plateau, a zig-zag, spikes, a
    NaN and a blow-up at random places, LR changes, and the cosine from ``cos_from`` on."""
    rng = random.Random(seed)
    zig, spike, nan, blow = (rng.randrange(steps) for _ in range(4))
    lr = 0.1
    order = ["loss", "acc", "grad_norm", "lr", "cos_grad_update"]
    if rng.random() < 0.5:
        rng.shuffle(order)
    timeline = list(range(steps))
    if restart_at is not None:  # a checkpoint: the run goes back and carries on
        timeline = timeline[:restart_at] + list(range(restart_at // 2, steps))
    out = []
    for s in timeline:
        loss = 2.0 * math.exp(-s / 150) + 0.3 + 0.02 * rng.gauss(0, 1)
        if zig <= s < zig + 150:
            loss += 0.1 * (-1) ** s
        if spike <= s < spike + 3:
            loss *= 5
        if s >= blow:
            loss *= math.exp(min(50.0, (s - blow) / 40))
        if s == nan:
            loss = math.nan
        if rng.random() < 0.01:
            lr *= rng.choice([0.5, 2.0])
        point = {
            "loss": loss,
            "acc": 0.5,
            "grad_norm": 1.0 + rng.random(),
            "lr": lr,
            "cos_grad_update": rng.gauss(0.2 if s < 300 else -0.1, 0.3),
        }
        if cos_from is None or s < cos_from:
            del point["cos_grad_update"]
        if rng.random() < 0.05:  # a step that misses a series: no stride in that batch
            del point["acc"]
        out.append((s, [(n, point[n]) for n in order if n in point]))
    return out


def _wire(chunk):
    names = sorted({n for _, pts in chunk for n, _ in pts})
    steps, keys, values = [], [], []
    for s, pts in chunk:
        for n, v in pts:
            steps.append(s)
            keys.append(names.index(n))
            values.append(v)
    return steps, names, keys, values


def _decide(stream, sizes, by_point: bool) -> list[Decision]:
    ctl = RunController("auto", patience=64, cooldown=50)
    feed = ctl._observe_by_point if by_point else ctl.observe
    out: list[Decision] = []
    i = 0
    while i < len(stream):
        size = sizes[len(out) % len(sizes)]
        got = feed(*_wire(stream[i : i + size]))
        for d in got:
            if d.command is not None:  # the run applies it at the next step
                ctl.lr_changed(stream[min(i + size, len(stream) - 1)][0])
        out += got
        i += size
    return out


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    seed=st.integers(0, 10_000),
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=8),
    cos_from=st.one_of(st.none(), st.integers(0, 900)),
    restart_at=st.one_of(st.none(), st.integers(10, 900)),
)
def test_the_series_path_decides_as_the_point_path(seed, sizes, cos_from, restart_at) -> None:
    """observe() feeds each series to its detectors in one call when the order across series
    cannot matter; every decision, in order, must be the point-by-point path's."""
    stream = _stream(seed, 900, cos_from, restart_at)
    assert _decide(stream, sizes, by_point=False) == _decide(stream, sizes, by_point=True)


def test_the_series_path_takes_ordinary_batches_and_not_the_coupled_ones(monkeypatch) -> None:
    taken = {"series": 0, "point": 0}
    by_series = RunController._observe_by_series

    def counting(self, *batch):
        out = by_series(self, *batch)
        taken["series" if out is not None else "point"] += 1
        return out

    monkeypatch.setattr(RunController, "_observe_by_series", counting)
    stream = _stream(1, 900, cos_from=600, restart_at=None)
    decisions = _decide(stream, [20], by_point=False)
    assert decisions, "the busy stream must cause decisions"
    assert taken == {"series": 30, "point": 15}, taken  # the cosine comes in at step 600
