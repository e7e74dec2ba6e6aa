"""Divergence: the run is breaking, with or without a NaN.

Three signs, each reported once per episode:

* **non-finite**: a NaN or infinite value fires at once; the next one fires again only after
  a finite value came in between.
* **sustained rise**: the least-squares line through the block medians of the last ``window``
  points rises significantly (one-sided t-test, p < ``alpha``) and by at least ``rise`` of its
  starting level, at every test for ``patience`` points in a row. A spike that recovers
  within ``patience`` points is the spike detector's business, not this one's.
* **stuck**: after ``stuck_after`` points the series is still no better than its initial
  level by more than ``stuck_tolerance`` (the level is the median of its first
  ``initial_points`` points, or ``reference`` when given, e.g. ``math.log(10)`` for ten
  classes) and not improving significantly: a net that died without a NaN, as a far too high
  LR leaves it, outputting the same prediction forever, or one thrown *above* its initial
  loss and kept there. It fires again after another ``stuck_after`` points if the run is
  still stuck (the cut did not help: cut again).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .base import (
    BlockLevels,
    Detection,
    Detector,
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
        rise: the fitted line must rise by at least this fraction of its starting level.
        alpha: significance level of the rise test.
        stuck_after: points before a series still at its initial level is called stuck;
            0 turns the stuck test off.
        stuck_tolerance: relative improvement on the initial level that still counts as stuck.
        initial_points: points whose median is the initial level.
        reference: the known level of a dead net (e.g. ``math.log(n_classes)``); None uses
            the initial level.
        nonfinite: whether NaN / inf fire.
        series: the series' name, used in the reason line only.
    """

    window: int = 200
    blocks: int = 10
    patience: int = 50
    rise: float = 0.2
    alpha: float = 1e-4
    stuck_after: int = 1000
    stuck_tolerance: float = 0.02
    initial_points: int = 20
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
        if self.reference is not None:
            check_real("divergence.reference", self.reference)
            if not math.isfinite(self.reference):
                raise ValueError(f"divergence.reference must be finite, got {self.reference!r}")
        if not isinstance(self.nonfinite, bool):
            raise ValueError(f"divergence.nonfinite must be true or false, got {self.nonfinite!r}")
        check_series("divergence.series", self.series)


class DivergenceDetector(Detector):
    """Non-finite values, a sustained rise, or a series stuck at its initial level."""

    name = "divergence"
    config: DivergenceConfig

    def __init__(self, config: DivergenceConfig | None = None) -> None:
        super().__init__(config or DivergenceConfig())

    def _reset_state(self) -> None:
        c = self.config
        self._blocks = BlockLevels(max(1, c.window // c.blocks), c.blocks)
        self._first: list[float] = []
        self._initial: float | None = c.reference
        self._rising = 0  # points over which the rise test has held
        self._nan_fired = False
        self._stuck_fired = False
        self._stuck_at = 0  # points seen when stuck last fired

    def _get_state(self) -> dict[str, Any]:
        return {
            "blocks": self._blocks.get_state(),
            "first": list(self._first),
            "initial": self._initial,
            "rising": self._rising,
            "nan_fired": self._nan_fired,
            "stuck_fired": self._stuck_fired,
            "stuck_at": self._stuck_at,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self._blocks.set_state(state["blocks"])
        self._first = list(state["first"])
        self._initial = state["initial"]
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
        if self._initial is None:
            self._first.append(value)
            if len(self._first) == c.initial_points:
                self._initial = median(self._first)
                self._first = []
        blocks = self._blocks
        if not blocks.add(step, value) or not blocks.full:
            return None
        fit = linear_trend(blocks.xs, blocks.ys)
        span = blocks.xs[-1] - blocks.xs[0]
        start, end = fit.at(blocks.xs[0]), fit.at(blocks.xs[-1])
        se = fit.se * span
        change = end - start
        if se > 0.0:
            t = change / se
            p_rise = t_sf(t, fit.n - 2)
            p_fall = 1.0 - p_rise
        else:  # the medians lie exactly on a line: the sign of the change says it all
            t = math.copysign(math.inf, change) if change else 0.0
            p_rise = 0.0 if change > 0 else 1.0
            p_fall = 0.0 if change < 0 else 1.0
        detection = self._rise_test(step, start, end, span, t, p_rise)
        if detection is None:
            detection = self._stuck_test(step, p_fall)
        return detection

    def _rise_test(
        self, step: int, start: float, end: float, span: float, t: float, p: float
    ) -> Detection | None:
        c = self.config
        grew = math.inf if end > start else 0.0
        rel = (end - start) / abs(start) if start else grew
        if p < c.alpha and rel >= c.rise:
            self._rising += self._blocks.size
        else:
            self._rising = 0
            return None
        if self._rising < max(c.patience, 1):
            return None
        rising = self._rising
        self._rising = 0
        self._blocks.clear()
        return Detection(
            step,
            "divergence",
            f"divergence: {c.series} rising {start:.4g} -> {end:.4g} (+{rel:.0%}) over "
            f"{span:g} steps (p={p:.1g}), for {rising} steps",
            {"cause": "rise", "start": start, "end": end, "rise": rel, "p": p, "t": t},
        )

    def _stuck_test(self, step: int, p_fall: float) -> Detection | None:
        c = self.config
        init = self._initial
        if c.stuck_after == 0 or init is None:
            return None
        if self.points < c.stuck_after + (self._stuck_at if self._stuck_fired else 0):
            return None
        # "not improving": the fall is not significant at 5%.
        window_level = median(self._blocks.ys)
        if init - window_level > c.stuck_tolerance * abs(init) or p_fall < 0.05:
            return None
        self._stuck_fired = True
        self._stuck_at = self.points
        what = "reference" if c.reference is not None else "initial level"
        return Detection(
            step,
            "divergence",
            f"divergence: {c.series} stuck at {window_level:.4g}, no better than "
            f"{1 - c.stuck_tolerance:.0%} of its {what} {init:.4g} after {self.points} points "
            f"and not falling (p={p_fall:.2f}): the net may have died",
            {"cause": "stuck", "level": window_level, "initial": init, "p_fall": p_fall},
        )
