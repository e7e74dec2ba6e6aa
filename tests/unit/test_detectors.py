"""Detectors: the contract every detector keeps, then each detector on hand-built series."""

from __future__ import annotations

import itertools
import json
import math
import random
import re

import lrpilot.monitor.detectors as detectors_pkg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lrpilot.monitor.detectors import (
    AlignmentConfig,
    AlignmentDetector,
    Detection,
    DivergenceConfig,
    DivergenceDetector,
    OscillationConfig,
    OscillationDetector,
    PlateauConfig,
    PlateauDetector,
    SpikeConfig,
    SpikeDetector,
)
from lrpilot.monitor.detectors.base import linear_trend, mann_kendall, median, t_sf

# Small windows keep the contract tests to milliseconds while exercising every code path.
FACTORIES = {
    "plateau-trend": lambda: PlateauDetector(PlateauConfig(patience=32, blocks=8)),
    "plateau-torch": lambda: PlateauDetector(PlateauConfig(method="torch", patience=3)),
    "oscillation": lambda: OscillationDetector(OscillationConfig(window=40, z=3.0)),
    "spike": lambda: SpikeDetector(SpikeConfig(window=20, recent=3)),
    "divergence": lambda: DivergenceDetector(
        DivergenceConfig(window=40, blocks=8, patience=10, stuck_after=60)
    ),
    "alignment": lambda: AlignmentDetector(AlignmentConfig(window=20)),
}


def busy_series(n: int = 400, seed: int = 0) -> list[float]:
    """A series with a bit of everything: descent, plateau, zig-zag, spike, a rise, a NaN."""
    rng = random.Random(seed)
    out = []
    for t in range(n):
        v = 2.0 * math.exp(-t / 60) + 0.3 + 0.01 * rng.gauss(0, 1)
        if 150 <= t < 200:
            v += 0.2 * (-1) ** t
        if 220 <= t < 226:
            v *= 4
        if t >= 300:
            v *= math.exp((t - 300) / 30)
        if t == 260:
            v = math.nan
        out.append(v)
    return out


def run(det, values, start: int = 0) -> list[tuple[int, str]]:
    return [(d.step, d.kind) for s, v in enumerate(values, start) if (d := det.update(s, v))]


def expect_steps(got: list[int], expected: list[int], what: str) -> None:
    for i, (g, e) in enumerate(zip(got, expected, strict=False)):
        assert g == e, f"wrong at detection {i} ({what}): expected step {e}, got {g}"
    assert len(got) == len(expected), f"{what}: expected {expected}, got {got}"


# ------------------------------------------------------------------------ the contract


def test_exports_match_all() -> None:
    public = {n for n in dir(detectors_pkg) if not n.startswith("_")}
    missing = set(detectors_pkg.__all__) - public
    assert not missing, f"__all__ names missing from the package: {missing}"
    classes = {n for n in public if n.endswith(("Detector", "Config"))}
    assert classes <= set(detectors_pkg.__all__), (
        f"not in __all__: {classes - set(detectors_pkg.__all__)}"
    )


@pytest.mark.parametrize("make", FACTORIES.values(), ids=FACTORIES.keys())
def test_empty_stream_has_a_state_and_resets(make) -> None:
    det = make()
    state = det.state_dict()
    assert state["version"] == 1 and state["detector"] == det.name
    assert json.loads(json.dumps(state)) == state, "state must survive JSON"
    det.reset()
    assert det.state_dict() == state
    assert det.last_step is None


@pytest.mark.parametrize("make", FACTORIES.values(), ids=FACTORIES.keys())
def test_steps_must_increase(make) -> None:
    det = make()
    det.update(5, 1.0)
    for bad in (5, 4):
        with pytest.raises(ValueError, match=f"step {bad} is not after the previous step 5"):
            det.update(bad, 1.0)
    for bad_step in (1.5, "6", True):
        with pytest.raises(ValueError, match="step must be an integer"):
            det.update(bad_step, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="value must be a number"):
        det.update(7, "1.0")  # type: ignore[arg-type]
    assert det.update(6, 1.0) is None, "a rejected point must not move the detector"


@pytest.mark.parametrize("make", FACTORIES.values(), ids=FACTORIES.keys())
@pytest.mark.parametrize("size", [1, 7, 64, 400])
def test_update_many_decides_as_update_does(make, size: int) -> None:
    values = busy_series()
    one, many = make(), make()
    expected = [d for s, v in enumerate(values) if (d := one.update(s, v))]
    got = []
    for i in range(0, len(values), size):
        got += many.update_many(list(range(i, min(i + size, len(values)))), values[i : i + size])
    assert got == expected
    assert many.state_dict() == one.state_dict()


# The detectors with a batch path of their own (feed_checked cut at block ends, the spike
# detector's one loop), at their defaults and at settings that reach every branch of it.
BATCH_FACTORIES = {
    **FACTORIES,
    "plateau-default": PlateauDetector,
    "plateau-cooldown": lambda: PlateauDetector(PlateauConfig(patience=32, blocks=8, cooldown=13)),
    "oscillation-default": OscillationDetector,
    "spike-default": SpikeDetector,
    "divergence-default": DivergenceDetector,
    "divergence-grad-watch": lambda: DivergenceDetector(
        DivergenceConfig(stuck_after=0, rise=math.inf)
    ),
    "divergence-stuck-only": lambda: DivergenceDetector(
        DivergenceConfig(window=40, blocks=8, stuck_after=60, rise=math.inf, initial_points=1)
    ),
}


def regime_series(seed: int, n: int, nonfinite: bool) -> list[float]:
    """Random stretches of descent, noise, zig-zag, spikes, blow-ups, constants and zeros,
    with the odd NaN, infinity or near-overflow value when ``nonfinite``."""
    rng = random.Random(seed)
    out: list[float] = []
    level = rng.uniform(0.1, 5.0)
    while len(out) < n:
        kind = rng.choice(["descent", "noise", "zigzag", "spike", "blowup", "const", "zero"])
        for t in range(rng.randint(5, 300)):
            if kind == "descent":
                level *= 0.995
                v = level + 0.01 * rng.gauss(0, 1)
            elif kind == "noise":
                v = level * (1 + 0.05 * rng.gauss(0, 1))
            elif kind == "zigzag":
                v = level * (1 + 0.2 * (-1) ** t)
            elif kind == "spike":
                v = level * (8.0 if t < 4 else 1.0)
            elif kind == "blowup":
                level *= 1.03
                v = level
            elif kind == "const":
                v = level
            else:
                v = 0.0
            if nonfinite and rng.random() < 0.004:
                v = rng.choice([math.nan, math.inf, -math.inf, 1e308])
            out.append(v)
    return out[:n]


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(
    seed=st.integers(0, 10_000),
    sizes=st.lists(st.integers(1, 120), min_size=1, max_size=6),
    nonfinite=st.booleans(),
)
@pytest.mark.parametrize("make", BATCH_FACTORIES.values(), ids=BATCH_FACTORIES.keys())
def test_batch_paths_decide_as_the_point_path(make, seed: int, sizes, nonfinite: bool) -> None:
    """Batches of any size, finite or not, make the same detections and leave the same state
    as one point at a time."""
    values = regime_series(seed, 1500, nonfinite)
    one, many = make(), make()
    expected = [d for s, v in enumerate(values) if (d := one.update(s, v))]
    got: list[Detection] = []
    i = 0
    while i < len(values):
        size = sizes[(i // 7) % len(sizes)]
        got += many.update_many(list(range(i, min(i + size, len(values)))), values[i : i + size])
        i += size
    assert got == expected
    assert many.state_dict() == one.state_dict()


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.lists(st.sampled_from([0.0, 1.0, 1.5, 2.0, -3.0]) | st.floats(-10, 10), max_size=40))
def test_mann_kendall_counts_pairs_as_the_definition_does(ys: list[float]) -> None:
    s = sum((d > 0) - (d < 0) for i, a in enumerate(ys) for d in (b - a for b in ys[i + 1 :]))
    n = len(ys)
    if n < 2:
        return
    sd = math.sqrt(n * (n - 1) * (2 * n + 5) / 18.0)
    z = 0.0 if s == 0 else (s + 1) / sd if s < 0 else (s - 1) / sd
    assert mann_kendall(ys) == 0.5 * math.erfc(-z / math.sqrt(2.0))


@pytest.mark.parametrize("make", FACTORIES.values(), ids=FACTORIES.keys())
def test_update_many_raises_as_update_does_after_feeding_the_good_points(make) -> None:
    det = make()
    det.update_many([0, 1], [1.0, 2.0])
    with pytest.raises(ValueError, match="step 1 is not after the previous step 1"):
        det.update_many([1, 2], [1.0, 1.0])
    with pytest.raises(ValueError, match="step 3 is not after the previous step 3"):
        det.update_many([2, 3, 3], [1.0, 1.0, 1.0])
    assert det.last_step == 3, "the points before the bad one are fed, as update would"
    with pytest.raises(ValueError, match="value must be a number"):
        det.update_many([4, 5], [1, "x"])  # type: ignore[list-item]
    assert det.last_step == 4, "an int value is a number; the string is refused"
    with pytest.raises(ValueError, match="2 steps but 1 values"):
        det.update_many([6, 7], [1.0])


@pytest.mark.parametrize("make", FACTORIES.values(), ids=FACTORIES.keys())
def test_nan_and_inf_never_raise_and_are_counted(make) -> None:
    det = make()
    for step, v in enumerate([math.nan, math.inf, -math.inf, 1.0, math.nan]):
        hit = det.update(step, v)
        assert hit is None or isinstance(hit, Detection)
    assert det.nonfinite == 4 and det.points == 1


@pytest.mark.parametrize("name", ["plateau-trend", "oscillation", "spike", "alignment"])
def test_nan_is_skipped_by_detectors_that_ignore_it(name: str) -> None:
    values = busy_series()
    values[260] = 0.5  # replaced below by NaN points inserted between real ones
    plain = run(FACTORIES[name](), values)
    det = FACTORIES[name]()
    got = []
    step = 0
    for v in values:
        for extra in (v, math.nan) if step % 7 == 0 else (v,):
            hit = det.update(step, extra)
            if hit is not None:
                got.append(hit.kind)
            step += 1
    assert got == [k for _, k in plain], "NaN points must not change what a detector finds"


@pytest.mark.parametrize("make", FACTORIES.values(), ids=FACTORIES.keys())
def test_reset_behaves_like_new(make) -> None:
    values = busy_series()
    fresh = run(make(), values)
    det = make()
    run(det, values[:250])
    det.reset()
    assert run(det, values) == fresh


@pytest.mark.parametrize("make", FACTORIES.values(), ids=FACTORIES.keys())
@pytest.mark.parametrize("cut", [1, 57, 233, 310])
def test_state_round_trip_resumes_identically(make, cut: int) -> None:
    values = busy_series(seed=cut)
    whole = run(make(), values)
    first = make()
    before = run(first, values[:cut])
    second = make()
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    after = run(second, values[cut:], start=cut)
    assert before + after == whole
    assert second.state_dict() == json.loads(json.dumps(second.state_dict()))


@pytest.mark.parametrize("make", FACTORIES.values(), ids=FACTORIES.keys())
def test_load_state_refuses_other_version_detector_or_config(make) -> None:
    det = make()
    state = det.state_dict()
    with pytest.raises(ValueError, match="schema version 99"):
        make().load_state_dict({**state, "version": 99})
    with pytest.raises(ValueError, match="cannot load the state of a 'other' detector"):
        make().load_state_dict({**state, "detector": "other"})
    with pytest.raises(ValueError, match="saved with config"):
        make().load_state_dict({**state, "config": {**state["config"], "series": "x"}})


BAD_CONFIGS = [
    (PlateauConfig, {"method": "ema"}, "plateau.method must be one of trend, torch; got 'ema'"),
    (PlateauConfig, {"mode": "low"}, "plateau.mode must be one of min, max; got 'low'"),
    (PlateauConfig, {"patience": 8}, r"plateau.patience must be an integer in \[16, inf\], got 8"),
    (PlateauConfig, {"threshold": -0.1}, r"plateau.threshold must be in \[0, inf\], got -0.1"),
    (PlateauConfig, {"alpha": 0.6}, r"plateau.alpha must be in \(0, 0.5\], got 0.6"),
    (PlateauConfig, {"break_alpha": 0}, r"plateau.break_alpha must be in \(0, 0.5\], got 0"),
    (PlateauConfig, {"patience": 2.5, "method": "torch"}, "must be an integer, got 2.5"),
    (OscillationConfig, {"window": 5}, r"oscillation.window must be an integer in \[20, "),
    (OscillationConfig, {"z": 0}, r"oscillation.z must be in \(0, inf\], got 0"),
    (SpikeConfig, {"recent": 0}, r"spike.recent must be an integer in \[1, 100\], got 0"),
    (SpikeConfig, {"k": math.nan}, "spike.k must be a number, got nan"),
    (DivergenceConfig, {"reference": math.inf}, "divergence.reference must be finite, got inf"),
    (DivergenceConfig, {"nonfinite": 1}, "divergence.nonfinite must be true or false, got 1"),
    (AlignmentConfig, {"threshold": 1.0}, r"alignment.threshold must be in \[0, 1\), got 1.0"),
]


@pytest.mark.parametrize(("cls", "kwargs", "message"), BAD_CONFIGS)
def test_configs_reject_bad_values_and_echo_them(cls, kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


# ------------------------------------------------------------------------ statistics


@pytest.mark.parametrize("t", [-3.0, -0.7, 0.0, 0.3, 1.0, 2.5, 10.0])
def test_t_sf_matches_closed_forms(t: float) -> None:
    cauchy = 0.5 - math.atan(t) / math.pi  # df = 1
    df2 = 0.5 - t / (2 * math.sqrt(2 + t * t))  # df = 2
    assert t_sf(t, 1) == pytest.approx(cauchy, abs=1e-12)
    assert t_sf(t, 2) == pytest.approx(df2, abs=1e-12)


def test_t_sf_matches_tables_and_the_normal_limit() -> None:
    assert t_sf(2.228, 10) == pytest.approx(0.025, abs=2e-4)  # textbook two-sided 5%
    assert t_sf(3.169, 10) == pytest.approx(0.005, abs=2e-4)
    normal = 0.5 * math.erfc(2.0 / math.sqrt(2))
    assert t_sf(2.0, 1e6) == pytest.approx(normal, rel=1e-4)
    assert t_sf(math.inf, 5) == 0.0 and t_sf(-math.inf, 5) == 1.0


def test_linear_trend_and_median() -> None:
    fit = linear_trend([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0])
    assert (fit.slope, fit.intercept, fit.se) == (2.0, 1.0, 0.0)
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([4.0, 1.0, 2.0, 3.0]) == 2.5


# ------------------------------------------------------------------------ plateau


def plateau_cases():
    rng = random.Random(1)
    noise = [0.01 * rng.gauss(0, 1) for _ in range(600)]
    return [
        ("constant", [1.0] * 200, [63, 127, 191]),
        ("constant negative", [-3.0] * 130, [63, 127]),
        ("huge values", [1e30] * 70, [63]),
        ("exact linear descent", [5.0 - 0.01 * t for t in range(300)], []),
        ("noisy steady descent", [2.0 - 0.002 * t + noise[t] for t in range(600)], []),
        ("descent then flat", [max(1.0, 2.0 - 0.01 * t) + noise[t] for t in range(260)], None),
    ]


@pytest.mark.parametrize(("name", "values", "expected"), plateau_cases(), ids=lambda x: x)
def test_plateau_trend_table(name: str, values: list[float], expected: list[int] | None) -> None:
    det = PlateauDetector(PlateauConfig(patience=64))
    got = [s for s, _ in run(det, values)]
    if expected is None:  # kink at step 100: found within patience + one block after it
        assert got and 100 < got[0] <= 100 + 64 + 4, (
            f"expected one detection in (100, 168], got {got}"
        )
    else:
        expect_steps(got, expected, name)


def test_plateau_trend_max_mode_and_threshold() -> None:
    rising = [0.5 + 0.001 * t for t in range(200)]  # an accuracy that still improves
    assert run(PlateauDetector(PlateauConfig(patience=64, mode="max")), rising) == []
    # +0.06 over the 60-step fit is at most 12% of the level: under a 20% threshold.
    det = PlateauDetector(PlateauConfig(patience=64, mode="max", threshold=0.2))
    assert [s for s, _ in run(det, rising)] == [63, 127, 191]


def test_plateau_trend_break_is_called_after_one_window() -> None:
    rng = random.Random(2)
    for mode, sign in (("min", 1.0), ("max", -1.0)):
        series = [1.0 - sign * 0.004 * min(t, 300) + 0.005 * rng.gauss(0, 1) for t in range(600)]
        det = PlateauDetector(PlateauConfig(patience=64, mode=mode))
        hits = [d for s, v in enumerate(series) if (d := det.update(s, v))]
        # Found within a window and a few blocks (each flat window passes for improving
        # with probability alpha = 0.25 at one test).
        assert hits and 300 < hits[0].step <= 300 + 64 + 32, [h.step for h in hits]
        assert hits[0].data["path"] == "improvement stopped", hits[0].data
        assert hits[0].data["p_break"] < 1e-3 and "improvement stopped" in hits[0].reason


def test_plateau_slow_improvement_whose_last_window_looks_flat_is_not_a_plateau() -> None:
    # A steady descent under noise: the last window alone is often not significant (the old
    # single-window rule would have fired), but its slope has not dropped against the window
    # before and two windows together show the improvement.
    rng = random.Random(4)
    series = [1.0 - 0.0004 * t + 0.03 * rng.gauss(0, 1) for t in range(3000)]
    det = PlateauDetector(PlateauConfig(patience=64))
    flat_looking = 0
    for s, v in enumerate(series):
        assert det.update(s, v) is None, f"wrong at step {s}: expected no plateau"
        if (s + 1) % 4 == 0 and len(det._blocks.ys) == 32:
            flat_looking += det.trend_test()["p"] >= det.config.alpha
    assert flat_looking >= 5, "the series must have windows that look flat on their own"


def test_plateau_reason_carries_the_numbers() -> None:
    det = PlateauDetector(PlateauConfig(patience=64))
    rng = random.Random(3)
    hits = [h for t in range(128) if (h := det.update(t, 0.41 + 0.01 * rng.gauss(0, 1)))]
    assert len(hits) == 1, [h.reason for h in hits]
    reason = hits[0].reason
    assert re.match(r"plateau: loss 0\.4\d* -> 0\.4\d* over \d+ steps, slope ", reason), reason
    assert "(p=" in reason and "patience 64" in reason, reason
    assert hits[0].data["path"] == "no improvement"
    assert 0.25 <= hits[0].data["p"] <= 1.0 and 0.25 <= hits[0].data["p_all"] <= 1.0


# ------------------------------------------------------------------------ oscillation


def noise(n: int, seed: int, heavy: bool = False) -> list[float]:
    rng = random.Random(seed)
    if heavy:  # Student-t, 3 degrees of freedom
        return [rng.gauss(0, 1) / math.sqrt(rng.gammavariate(1.5, 2.0) / 3) for _ in range(n)]
    return [rng.gauss(0, 1) for _ in range(n)]


@pytest.mark.parametrize("heavy", [False, True])
def test_oscillation_ignores_white_noise_whose_differences_anticorrelate(heavy: bool) -> None:
    e = noise(20_000, seed=11, heavy=heavy)
    d = [b - a for a, b in itertools.pairwise(e)]
    m = sum(d) / len(d)
    r1 = sum((x - m) * (y - m) for x, y in itertools.pairwise(d)) / sum((x - m) ** 2 for x in d)
    assert r1 == pytest.approx(-0.5, abs=0.03), "the trap this detector must not fall into"
    series = [1.0 + 0.05 * x for x in e]
    assert run(OscillationDetector(), series) == []


def test_oscillation_ignores_a_noisy_descent_and_a_constant() -> None:
    e = noise(5000, seed=12)
    descent = [2.0 * math.exp(-t / 1500) + 0.05 * e[t] for t in range(5000)]
    assert run(OscillationDetector(), descent) == []
    assert run(OscillationDetector(), [0.7] * 1000) == []


def test_oscillation_finds_a_zigzag_at_the_expected_point() -> None:
    e = noise(1000, seed=13)
    # Noise for 400 steps, then a zig-zag of amplitude 2 sigma on a slow descent.
    series = [1.0 - 1e-4 * t + 0.02 * e[t] + (0.04 * (-1) ** t if t >= 400 else 0.0)
              for t in range(1000)]  # fmt: skip
    hits = OscillationDetector().update
    got = [s for s in range(1000) if hits(s, series[s])]
    assert got, "a 2-sigma zig-zag must be found"
    assert 400 < got[0] <= 400 + 200, f"wrong at detection 0: expected in (400, 600], got {got[0]}"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_oscillation_fires_where_a_recount_of_turning_points_reaches_the_bar(seed: int) -> None:
    """Against the definition, counted afresh at every point: point i is a turning point
    when it is above or below both neighbours; the detector fires at the point where the
    last ``window`` turning-point flags hold at least mean + z sd of them, then starts a new
    window (the two points before it still count as neighbours)."""
    window, z = 40, 3.0
    n = window + 2
    fire_at = 2.0 * (n - 2) / 3.0 + z * math.sqrt((16.0 * n - 29.0) / 90.0)
    values = regime_series(seed, 3000, nonfinite=False)
    flags: list[bool] = []
    expected = []
    for i in range(2, len(values)):
        a, b, c = values[i - 2 : i + 1]
        flags.append((b > a and b > c) or (b < a and b < c))
        if len(flags) >= window and sum(flags[-window:]) >= fire_at:
            expected.append(i)
            flags = []
    assert expected, "the series must hold zig-zags for this test to mean anything"
    det = OscillationDetector(OscillationConfig(window=window, z=z))
    got = []
    for i in range(0, len(values), 37):  # the batch path, in batches of 37
        got += [d.step for d in det.update_many(list(range(i, i + 37))[: len(values) - i],
                                                values[i : i + 37])]  # fmt: skip
    assert got == expected


def test_alignment_detects_both_signs_and_not_noise() -> None:
    rng = random.Random(5)
    agree = [0.6 + 0.2 * rng.gauss(0, 1) for _ in range(100)]
    det = AlignmentDetector()
    kinds = [k for _, k in run(det, agree)]
    assert kinds == ["lr_too_small"], kinds
    det = AlignmentDetector()
    assert [k for _, k in run(det, [-0.5 + 0.2 * rng.gauss(0, 1) for _ in range(100)])] == [
        "oscillation"
    ]
    zero = [0.25 * rng.gauss(0, 1) for _ in range(5000)]
    assert run(AlignmentDetector(), zero) == []


# ------------------------------------------------------------------------ spike


def test_spike_table() -> None:
    rng = random.Random(7)
    base = [1.0 + 0.01 * rng.gauss(0, 1) for _ in range(400)]
    cases = [
        ("one bad batch is not a spike", {150: 5.0}, []),
        ("a jump held 3 points fires on its 3rd", {150: 3.0, 151: 3.0, 152: 3.0}, [152]),
        (
            "two spikes, each once",
            {**{150 + i: 4.0 for i in range(10)}, **{300 + i: 4.0 for i in range(10)}},
            [152, 302],
        ),
        ("a small bump is not a spike", {150 + i: 1.03 for i in range(10)}, []),
    ]
    for name, changes, expected in cases:
        series = [changes.get(t, v) for t, v in enumerate(base)]
        expect_steps([s for s, _ in run(SpikeDetector(), series)], expected, name)


def test_spike_constant_series_and_negative_values() -> None:
    series = [-2.0] * 120 + [-1.0] * 10 + [-2.0] * 50
    assert [s for s, _ in run(SpikeDetector(), series)] == [122]
    series = [0.0] * 120 + [1e-3] * 5
    assert [s for s, _ in run(SpikeDetector(), series)] == [122]


def test_spike_accepts_a_new_level_that_never_comes_back() -> None:
    rng = random.Random(8)
    series = [1.0 + 0.01 * rng.gauss(0, 1) for _ in range(200)]
    series += [3.0 + 0.03 * rng.gauss(0, 1) for _ in range(600)]
    assert [s for s, _ in run(SpikeDetector(), series)] == [202]


def test_spike_ignores_heavy_tailed_noise() -> None:
    e = noise(30_000, seed=9, heavy=True)
    series = [1.0 + 0.02 * x for x in e]
    assert run(SpikeDetector(), series) == []


# ------------------------------------------------------------------------ divergence


def test_divergence_fires_on_nan_once_per_episode() -> None:
    det = DivergenceDetector()
    series = [1.0] * 5 + [math.nan] * 3 + [1.0] + [math.inf]
    hits = [(s, d.data["cause"]) for s, v in enumerate(series) if (d := det.update(s, v))]
    assert hits == [(5, "nonfinite"), (9, "nonfinite")]
    assert DivergenceDetector().update(0, math.nan).reason == "divergence: loss is nan at step 0"


def test_divergence_sustained_rise_but_not_a_recovering_spike() -> None:
    e = noise(2000, seed=21)
    # A healthy descent until step 600, then a blow-up doubling every ~100 steps.
    level = [2.0 * math.exp(-t / 200) + 0.5 for t in range(1200)]
    rise = [level[t] + 0.005 * e[t] if t < 600 else level[600] * math.exp((t - 600) / 150)
            for t in range(1200)]  # fmt: skip
    det = DivergenceDetector()
    hits = [(s, d.data["cause"]) for s, v in enumerate(rise) if (d := det.update(s, v))]
    assert hits and hits[0][1] == "rise" and 600 < hits[0][0] <= 600 + 200, hits
    spike = [level[t % 1200] + 0.005 * e[t] + (1.0 if 700 <= t < 730 else 0.0)
             for t in range(1200)]  # fmt: skip
    det = DivergenceDetector()
    hits = [d for s, v in enumerate(spike) if (d := det.update(s, v))]
    assert hits == []


def test_divergence_stuck_at_the_initial_loss() -> None:
    rng = random.Random(4)
    dead = [math.log(10) + 0.01 * rng.gauss(0, 1) for _ in range(1000)]
    det = DivergenceDetector()
    hits = [(s, d.data["cause"]) for s, v in enumerate(dead) if (d := det.update(s, v))]
    assert hits == [(999, "stuck")], hits  # the first test at or after stuck_after points
    learning = [math.log(10) * math.exp(-t / 300) + 0.01 * rng.gauss(0, 1) for t in range(1000)]
    det = DivergenceDetector(DivergenceConfig(reference=math.log(10)))
    hits = [d for s, v in enumerate(learning) if (d := det.update(s, v))]
    assert hits == []
    # Known reference: a net that learnt a little then died back to chance level is "died"
    # after patience points plus one block (see below), and not "stuck" or "rising" too.
    died = [1.5] * 200 + [math.log(10) + 0.01 * rng.gauss(0, 1) for _ in range(1000)]
    det = DivergenceDetector(DivergenceConfig(reference=math.log(10)))
    hits = [(s, d.data["cause"]) for s, v in enumerate(died) if (d := det.update(s, v))]
    assert hits == [(259, "died")], hits


def test_divergence_stuck_allows_for_a_noisy_initial_level() -> None:
    # The first 20 points read 3% high by chance (noise 5%): the dead net still counts as
    # stuck, because the tolerance widens by 1.645 standard errors of that estimate.
    rng = random.Random(6)
    first = [math.log(10) * (1.03 + 0.05 * rng.gauss(0, 1)) for _ in range(20)]
    dead = first + [math.log(10) * (1 + 0.05 * rng.gauss(0, 1)) for _ in range(980)]
    det = DivergenceDetector()
    hits = [(s, d.data["cause"]) for s, v in enumerate(dead) if (d := det.update(s, v))]
    assert hits == [(999, "stuck")], hits
    assert det._initial_se > 0.01, "the initial level's standard error must be estimated"
    # Without that allowance (a known reference 3% high) the same run is not stuck.
    det = DivergenceDetector(DivergenceConfig(reference=math.log(10) * 1.03))
    assert run(det, dead) == []


def test_divergence_died_after_learning_fires_within_patience() -> None:
    rng = random.Random(12)
    learnt = [2.3 * math.exp(-t / 400) + 0.01 * rng.gauss(0, 1) for t in range(600)]
    dead = [2.3 + 0.02 * rng.gauss(0, 1) for _ in range(300)]
    det = DivergenceDetector()
    hits = [(s, d) for s, v in enumerate(learnt + dead) if (d := det.update(s, v))]
    assert [(s, d.data["cause"]) for s, d in hits] == [(659, "died")], hits
    reason = hits[0][1].reason
    assert reason.startswith("divergence: loss back at 2.") and "may have died" in reason, reason
    # A run that never learnt is not "died" (it is "stuck", after stuck_after points).
    flat = [2.3 + 0.02 * rng.gauss(0, 1) for _ in range(900)]
    assert run(DivergenceDetector(), flat) == []
    # stuck_after = 0 turns the died test off too (as for the controller's grad_norm).
    det = DivergenceDetector(DivergenceConfig(stuck_after=0, rise=math.inf))
    assert run(det, learnt + dead) == []


@pytest.mark.parametrize(("height", "duration"), [(1.0, 20), (2.0, 20), (2.0, 35)])
def test_divergence_ignores_a_spike_back_to_the_initial_level(height, duration) -> None:
    # A spike that leaves the level above the initial one but recovers within patience.
    rng = random.Random(13)
    level = [2.3 * math.exp(-t / 400) for t in range(1200)]
    series = []
    for t, b in enumerate(level):
        bump = 0.0
        if 1000 <= t < 1000 + duration:
            bump = height
        elif t >= 1000 + duration:
            bump = height * math.exp(-(t - 1000 - duration) / 10)
        series.append(b * (1 + bump) * (1 + 0.01 * rng.gauss(0, 1)))
    assert run(DivergenceDetector(), series) == []


def test_divergence_fast_rise_fires_on_a_blow_up_not_on_a_step() -> None:
    rng = random.Random(14)
    base = [1.0 + 0.01 * rng.gauss(0, 1) for _ in range(500)]
    blowup = base + [math.exp(t / 150) * (1 + 0.01 * rng.gauss(0, 1)) for t in range(200)]
    det = DivergenceDetector()
    hits = [(s, d) for s, v in enumerate(blowup) if (d := det.update(s, v))]
    assert hits and hits[0][1].data["cause"] == "rise", hits
    assert 500 < hits[0][0] <= 500 + 70, f"wrong at detection 0: expected in (500, 570], got {hits}"
    assert "along a line" in hits[0][1].reason, hits[0][1].reason
    # A step up by 50% that stays: a line fits it badly, so no fast rise (the window test,
    # which must hold for patience points, may call it later).
    step = base + [1.5 * (1 + 0.01 * rng.gauss(0, 1)) for _ in range(40)]
    assert run(DivergenceDetector(), step) == []
