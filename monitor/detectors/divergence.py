"""Divergence: the run is breaking, with or without a NaN.

Points are cut into blocks of ``window // blocks`` points; a block's level is its
interquartile mean. Five signs, each reported once per episode:

* **non-finite**: a NaN or infinite value fires at once; the next one fires again only after
  a finite value came in between.
* **fast rise**: the least-squares line through the levels of the last ``patience`` points
  and the block before them rises significantly (one-sided t-test, p < ``alpha``) and by at
  least ``rise`` of its starting level. A line, not a step: a jump that then stays flat or
  recovers (a spike, a dead net) fits a line badly and is left to the tests below, while a
  blow-up that keeps growing is called about ``patience`` points after it starts. An
  infinite ``rise`` turns this test and the next off.
* **sustained rise**: the same test on the whole ``window`` holds at every test for
  ``patience`` points in a row (a slower rise). A spike that recovers within ``patience``
  points is the spike detector's business, not this one's.
* **died**: the series had clearly learnt (its best level, the lowest median of three
  consecutive block levels, is at least ``improved`` below its initial level) and every
  level over the last ``patience`` points and the block before them is back within a
  quarter of the way from its best to its initial level (a net that died without a NaN:
  back at chance, or thrown above it, and staying there). A spike that recovers within
  ``patience`` points never holds that long.
* **stuck**: after ``stuck_after`` points the series is still no better than its initial
  level by more than ``stuck_tolerance`` (plus 1.645 standard errors of that level when it
  is estimated, a one-sided 5% margin; the level is the median of its first
  ``initial_points`` points, or ``reference`` when given, e.g. ``math.log(10)`` for ten
  classes) and not improving significantly: a net that never learnt, as a far too high LR
  leaves it from the start. It fires again after another ``stuck_after`` points if the run
  is still stuck (the cut did not help: cut again).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .base import (
    BlockLevels,
    Detection,
    Detector,
    all_finite,
    check_int,
    check_real,
    check_series,
    linear_trend,
    median,
    t_sf,
)

__all__ = ["DivergenceConfig", "DivergenceDetector"]


@dataclass(frozen=True)
class DivergenceConfig:
    """Settings of :class:`DivergenceDetector`.

    Args:
        window: points in the rise test and in the stuck test.
        blocks: blocks the window is cut into (block medians are what the line is fit to).
        patience: points the rise must be significant for, test after test.
        rise: the fitted line must rise by at least this fraction of its starting level;
            infinite turns both rise tests off.
        alpha: significance level of the rise test.
        stuck_after: points before a series still at its initial level is called stuck;
            0 turns the stuck test off.
        stuck_tolerance: relative improvement on the initial level that still counts as stuck.
        initial_points: points whose median is the initial level.
        improved: the died test's "clearly learnt": the best level must have been this
            fraction (of the initial level's size) below the initial level.
        reference: the known level of a dead net (e.g. ``math.log(n_classes)``); None uses
            the initial level.
        nonfinite: whether NaN / inf fire.
        series: the series' name, used in the reason line only.
    """

    window: int = 200
    blocks: int = 20
    patience: int = 50
    rise: float = 0.2
    alpha: float = 1e-4
    stuck_after: int = 1000
    stuck_tolerance: float = 0.02
    initial_points: int = 20
    improved: float = 0.1
    reference: float | None = None
    nonfinite: bool = True
    series: str = "loss"

    def __post_init__(self) -> None:
        check_int("divergence.blocks", self.blocks, low=4, high=256)
        check_int("divergence.window", self.window, low=self.blocks, high=1_000_000)
        check_int("divergence.patience", self.patience, low=0)
        check_real("divergence.rise", self.rise, low=0.0)
        check_real("divergence.alpha", self.alpha, low=0.0, high=0.5, low_open=True)
        check_int("divergence.stuck_after", self.stuck_after, low=0)
        check_real("divergence.stuck_tolerance", self.stuck_tolerance, low=0.0)
        check_int("divergence.initial_points", self.initial_points, low=1, high=10_000)
        check_real("divergence.improved", self.improved, low=0.0, high=1.0, low_open=True)
        if self.reference is not None:
            check_real("divergence.reference", self.reference)
            if not math.isfinite(self.reference):
                raise ValueError(f"divergence.reference must be finite, got {self.reference!r}")
        if not isinstance(self.nonfinite, bool):
            raise ValueError(f"divergence.nonfinite must be true or false, got {self.nonfinite!r}")
        check_series("divergence.series", self.series)


class DivergenceDetector(Detector):
    """Non-finite values, a rise, or a series back at (or never below) its initial level."""

    name = "divergence"
    config: DivergenceConfig

    def __init__(self, config: DivergenceConfig | None = None) -> None:
        super().__init__(config or DivergenceConfig())

    def _reset_state(self) -> None:
        c = self.config
        self._blocks = BlockLevels(max(1, c.window // c.blocks), c.blocks)
        self._first: list[float] = []
        self._initial: float | None = c.reference
        self._initial_se = 0.0  # standard error of an estimated initial level
        self._best = math.inf  # the lowest median of three block levels since the reset
        self._died_fired = False
        self._rising = 0  # points over which the rise test has held
        self._nan_fired = False
        self._stuck_fired = False
        self._stuck_at = 0  # points seen when stuck last fired

    def _get_state(self) -> dict[str, Any]:
        return {
            "blocks": self._blocks.get_state(),
            "first": list(self._first),
            "initial": self._initial,
            "initial_se": self._initial_se,
            "best": self._best,
            "died_fired": self._died_fired,
            "rising": self._rising,
            "nan_fired": self._nan_fired,
            "stuck_fired": self._stuck_fired,
            "stuck_at": self._stuck_at,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self._blocks.set_state(state["blocks"])
        self._first = list(state["first"])
        self._initial = state["initial"]
        self._initial_se = state.get("initial_se", 0.0)
        self._best = state.get("best", math.inf)
        self._died_fired = state.get("died_fired", False)
        self._rising = state["rising"]
        self._nan_fired = state["nan_fired"]
        self._stuck_fired = state["stuck_fired"]
        self._stuck_at = state.get("stuck_at", 0)

    def _nonfinite(self, step: int, value: float) -> Detection | None:
        if not self.config.nonfinite or self._nan_fired:
            return None
        self._nan_fired = True
        return Detection(
            step,
            "divergence",
            f"divergence: {self.config.series} is {value} at step {step}",
            {"cause": "nonfinite", "value": str(value)},
        )

    def _update(self, step: int, value: float) -> Detection | None:
        c = self.config
        self._nan_fired = False
        if c.stuck_after == 0 and math.isinf(c.rise):
            return None  # only non-finite values can fire (the grad-norm watch): no levels
        if self._initial is None:
            self._collect_initial((value,))
        if not self._blocks.add(step, value):
            return None
        return self._on_block(step)

    def feed_checked(self, steps: Sequence[int], values: Sequence[float]) -> list[Detection]:
        """The batch path: a batch of finite values is cut at the points that complete a
        block, and only those run the tests (every other point only joins its block)."""
        if not values or not all_finite(values):
            return super().feed_checked(steps, values)
        c = self.config
        n = len(values)
        self._nan_fired = False
        if c.stuck_after == 0 and math.isinf(c.rise):  # the grad-norm watch: nothing to test
            self._last_step = steps[-1]
            self.points += n
            return []
        found: list[Detection] = []
        points = self.points
        i = 0
        while i < n:
            j = self._blocks.fill(steps, values, i)
            end = n if j < 0 else j + 1
            if self._initial is None:
                self._collect_initial(values[i:end])
            self.points = points + end  # the tests read the counters as at point j
            self._last_step = steps[end - 1]
            if j < 0:
                break
            hit = self._on_block(steps[j])
            if hit is not None:
                found.append(hit)
            i = end
        return found

    def _collect_initial(self, values: Sequence[float]) -> None:
        """Take the first ``initial_points`` values; their median is the initial level."""
        want = self.config.initial_points
        self._first += values[: want - len(self._first)]
        if len(self._first) == want:
            self._set_initial(self._first)
            self._first = []

    def _on_block(self, step: int) -> Detection | None:
        """The tests, run when the point at ``step`` completed a block."""
        c = self.config
        blocks = self._blocks
        if len(blocks.ys) >= 3:  # a median of three levels: the minimum of noisy levels is low
            self._best = min(self._best, median(blocks.ys[-3:]))
        detection = self._fast_rise_test(step) or self._died_test(step)
        if detection is not None or not blocks.full:
            return detection
        if math.isinf(c.rise):  # the rise test is off: it cannot hold
            self._rising = 0
            return self._stuck_test(step)
        line = _Line(blocks.xs, blocks.ys)
        detection = self._rise_test(step, line)
        if detection is None:
            detection = self._stuck_test(step, line)
        return detection

    def _set_initial(self, first: list[float]) -> None:
        self._initial = median(first)
        n = len(first)
        if n > 1:  # standard error of a median: 1.2533 sigma / sqrt(n), sigma from the MAD
            mad = median([abs(v - self._initial) for v in first])
            self._initial_se = 1.2533 * 1.4826 * mad / math.sqrt(n)

    def _recent(self) -> tuple[list[float], list[float]] | None:
        """(steps, levels) of the blocks covering the last ``patience`` points and one more."""
        c = self.config
        blocks = self._blocks
        m = min(c.blocks, max(4, -(-c.patience // blocks.size) + 1))
        if len(blocks.ys) < m:
            return None
        return blocks.xs[-m:], blocks.ys[-m:]

    def _fast_rise_test(self, step: int) -> Detection | None:
        c = self.config
        if math.isinf(c.rise):  # rise tests off (the grad-norm and early stuck detectors)
            return None
        recent = self._recent()
        if recent is None:
            return None
        line = _Line(*recent)
        rel = line.rise()
        if rel < c.rise:  # too small a rise whatever its p: spare the t tail
            return None
        p, t = line.p_t()
        if p >= c.alpha:
            return None
        self._rising = 0
        self._blocks.clear()
        start, end = line.start, line.end
        return Detection(
            step,
            "divergence",
            f"divergence: {c.series} rising {start:.4g} -> {end:.4g} (+{rel:.0%}) over the "
            f"last {line.span:g} steps along a line (p={p:.1g})",
            {"cause": "rise", "start": start, "end": end, "rise": rel, "p": p, "t": t},
        )

    def _died_test(self, step: int) -> Detection | None:
        c = self.config
        init = self._initial
        if c.stuck_after == 0 or init is None:
            return None
        gap = init - self._best
        if self._died_fired:
            if self._blocks.ys[-1] < self._best + 0.5 * gap:  # learning again: re-arm
                self._died_fired = False
            return None
        recent = self._recent()
        if recent is None or gap < c.improved * abs(init):
            return None
        back = init - 0.25 * gap
        low = min(recent[1])
        if low < back:
            return None
        self._died_fired = True
        self._stuck_fired = True  # the stuck test waits another stuck_after points
        self._stuck_at = self.points
        self._rising = 0
        self._blocks.clear()  # the jump must not also pass for a sustained rise
        span = recent[0][-1] - recent[0][0]
        what = "reference" if c.reference is not None else "initial level"
        return Detection(
            step,
            "divergence",
            f"divergence: {c.series} back at {low:.4g} or above for {span:g} steps, near its "
            f"{what} {init:.4g} after it had reached {self._best:.4g}: the net may have died",
            {"cause": "died", "level": low, "initial": init, "best": self._best},
        )

    def _rise_test(self, step: int, line: _Line) -> Detection | None:
        c = self.config
        rel = line.rise()
        if rel < c.rise:  # too small a rise whatever its p: spare the t tail
            self._rising = 0
            return None
        p, t = line.p_t()
        if p >= c.alpha:
            self._rising = 0
            return None
        self._rising += self._blocks.size
        if self._rising < max(c.patience, 1):
            return None
        rising = self._rising
        self._rising = 0
        self._blocks.clear()
        start, end = line.start, line.end
        return Detection(
            step,
            "divergence",
            f"divergence: {c.series} rising {start:.4g} -> {end:.4g} (+{rel:.0%}) over "
            f"{line.span:g} steps (p={p:.1g}), for {rising} steps",
            {"cause": "rise", "start": start, "end": end, "rise": rel, "p": p, "t": t},
        )

    def _stuck_due(self) -> bool:
        """Whether the stuck test may fire at this point (it is on and its time has come)."""
        c = self.config
        if c.stuck_after == 0 or self._initial is None:
            return False
        return self.points >= c.stuck_after + (self._stuck_at if self._stuck_fired else 0)

    def _stuck_test(self, step: int, line: _Line | None = None) -> Detection | None:
        c = self.config
        init = self._initial
        if init is None or not self._stuck_due():
            return None
        # "not improving": the fall is not significant at 5%; "no better than the initial
        # level": not better by more than the tolerance at the one-sided 5% level of an
        # estimated initial level's own noise (1.645 standard errors). The level is the
        # cheaper test, so the line is fit (``line``: already fit, or None) only if it passes.
        blocks = self._blocks
        window_level = median(blocks.ys)
        tolerance = c.stuck_tolerance * abs(init) + 1.645 * self._initial_se
        if init - window_level > tolerance:
            return None
        if line is None:
            line = _Line(blocks.xs, blocks.ys)
        p_fall = 1.0 - line.p_t()[0]
        if p_fall < 0.05:
            return None
        self._stuck_fired = True
        self._stuck_at = self.points
        what = "reference" if c.reference is not None else "initial level"
        return Detection(
            step,
            "divergence",
            f"divergence: {c.series} stuck at {window_level:.4g}, within {tolerance:.2g} of "
            f"its {what} {init:.4g} after {self.points} points "
            f"and not falling (p={p_fall:.2f}): the net may have died",
            {"cause": "stuck", "level": window_level, "initial": init, "p_fall": p_fall},
        )


class _Line:
    """A least-squares line through block levels, read from the first block to the last: its
    ends, span, relative rise, and the one-sided p of the rise (worked out once, when first
    asked: the rise test and the stuck test read the same line)."""

    __slots__ = ("_p_t", "end", "fit", "span", "start")

    def __init__(self, xs: Sequence[float], ys: Sequence[float]) -> None:
        self.fit = fit = linear_trend(xs, ys)
        self.span = xs[-1] - xs[0]
        self.start, self.end = fit.at(xs[0]), fit.at(xs[-1])
        self._p_t: tuple[float, float] | None = None

    def rise(self) -> float:
        """(end - start) / |start|."""
        return _relative(self.start, self.end)

    def p_t(self) -> tuple[float, float]:
        """(one-sided p of the rise, t)."""
        if self._p_t is None:
            fit = self.fit
            self._p_t = _rise_p(fit.se * self.span, self.end - self.start, fit.n)
        return self._p_t


def _rise_p(se_change: float, change: float, n: int) -> tuple[float, float]:
    """(one-sided p of a rise, t) for a fitted change with standard error ``se_change``."""
    if se_change > 0.0:
        t = change / se_change
        return t_sf(t, n - 2), t
    # the levels lie exactly on a line: the sign of the change says it all
    t = math.copysign(math.inf, change) if change else 0.0
    return (0.0 if change > 0 else 1.0), t


def _relative(start: float, end: float) -> float:
    """(end - start) / |start|, +inf for a rise from exactly 0."""
    if start:
        return (end - start) / abs(start)
    return math.inf if end > start else 0.0
