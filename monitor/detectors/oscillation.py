"""Oscillation: the LR is too high and the metric zig-zags.

:class:`OscillationDetector` uses the turning-point test on the raw series. A point is a
turning point when it is above both neighbours or below both. For independent noise around
*any* trend the count over ``n`` points has mean ``2(n - 2)/3`` and variance
``(16n - 29)/90`` whatever the noise distribution (Gaussian, heavy-tailed...), so the test
accounts exactly for what trips the obvious statistic: the differences of white noise have a
lag-1 autocorrelation of -0.5, yet white noise gives 2/3 turning points, not more. A zig-zag
(the loss alternating up and down, as when the LR overshoots a valley) pushes the fraction
towards 1. A trend, a smooth curve or positively correlated noise only *removes* turning
points, so a noisy but descending curve can never look more oscillating than pure noise.
Decided once per point on the last ``window`` points at ``z`` standard deviations.

:class:`AlignmentDetector` watches the per-step cosine between the step's gradient and the
previous update (``cos_grad_update``, positive when successive steps agree): a mean reliably
below ``-threshold`` is overshoot (reported as oscillation), reliably above ``+threshold``
means the steps are too small (reported as ``lr_too_small``, the evidence the policy needs
before it dares increase the LR).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from .base import Detection, Detector, check_int, check_real, check_series, t_sf

__all__ = ["AlignmentConfig", "AlignmentDetector", "OscillationConfig", "OscillationDetector"]


@dataclass(frozen=True)
class OscillationConfig:
    """Settings of :class:`OscillationDetector`.

    Args:
        window: points whose turning points are counted (the test's sample).
        z: how many standard deviations above the noise expectation the count must be.
            The default 5 keeps pure noise, Gaussian or heavy-tailed, below one false alarm per
            100k points (measured in bench/detectors.py).
        series: the series' name, used in the reason line only.
    """

    window: int = 200
    z: float = 5.0
    series: str = "loss"

    def __post_init__(self) -> None:
        check_int("oscillation.window", self.window, low=20, high=100_000)
        check_real("oscillation.z", self.z, low=0.0, low_open=True)
        check_series("oscillation.series", self.series)


class OscillationDetector(Detector):
    """Turning-point test for a zig-zagging series; see the module docstring."""

    name = "oscillation"
    config: OscillationConfig

    def __init__(self, config: OscillationConfig | None = None) -> None:
        super().__init__(config or OscillationConfig())
        n = self.config.window + 2  # the flags of `window` middle points need two neighbours
        self._mean = 2.0 * (n - 2) / 3.0
        self._sd = math.sqrt((16.0 * n - 29.0) / 90.0)
        self._fire_at = self._mean + self.config.z * self._sd

    def _reset_state(self) -> None:
        self._prev2: float | None = None
        self._prev: float | None = None
        self._flags: deque[bool] = deque()
        self._count = 0

    def _get_state(self) -> dict[str, Any]:
        return {"prev2": self._prev2, "prev": self._prev, "flags": list(self._flags)}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._prev2 = state["prev2"]
        self._prev = state["prev"]
        self._flags = deque(state["flags"])
        self._count = sum(self._flags)

    def _update(self, step: int, value: float) -> Detection | None:
        a, b = self._prev2, self._prev
        self._prev2, self._prev = b, value
        if a is None or b is None:
            return None
        turn = (b > a and b > value) or (b < a and b < value)
        flags = self._flags
        flags.append(turn)
        self._count += turn
        if len(flags) > self.config.window:
            self._count -= flags.popleft()
        if len(flags) < self.config.window or self._count < self._fire_at:
            return None
        count = self._count
        z = (count - self._mean) / self._sd
        self._flags.clear()
        self._count = 0
        c = self.config
        return Detection(
            step,
            "oscillation",
            f"oscillation: {c.series} turns at {count} of {c.window} points "
            f"(noise gives {self._mean:.0f} ± {self._sd:.1f}), z={z:.1f} > {c.z:g}",
            {"turning_points": count, "window": c.window, "expected": self._mean, "z": z},
        )


@dataclass(frozen=True)
class AlignmentConfig:
    """Settings of :class:`AlignmentDetector`.

    Args:
        window: the most cosines averaged per test (the last ``window`` points).
        min_points: after a reset (the controller resets on every LR change) the first test
            comes at this many points; from there every point is tested on all the points so
            far (up to ``window``), so strong evidence acts fast and weak evidence still gets
            the full window. After a detection the next one needs a whole fresh window.
        threshold: the mean cosine must be reliably beyond ``±threshold``.
        alpha: one-sided significance level of the test of the mean against the threshold.
        series: the series' name, used in the reason line only.
    """

    window: int = 100
    min_points: int = 30
    threshold: float = 0.1
    alpha: float = 0.001
    series: str = "cos_grad_update"

    def __post_init__(self) -> None:
        check_int("alignment.window", self.window, low=10, high=100_000)
        check_int("alignment.min_points", self.min_points, low=5)
        check_real("alignment.threshold", self.threshold, low=0.0, high=1.0, high_open=True)
        check_real("alignment.alpha", self.alpha, low=0.0, high=0.5, low_open=True)
        check_series("alignment.series", self.series)


class AlignmentDetector(Detector):
    """Mean cosine between a step's gradient and the previous update, tested against ±threshold.

    Emits ``oscillation`` (overshoot) or ``lr_too_small``; values outside [-1, 1] are clipped.
    """

    name = "alignment"
    config: AlignmentConfig

    def __init__(self, config: AlignmentConfig | None = None) -> None:
        super().__init__(config or AlignmentConfig())

    def _reset_state(self) -> None:
        self._clear(min(self.config.min_points, self.config.window))

    def _clear(self, need: int) -> None:
        self._values: deque[float] = deque()
        self._sum = 0.0
        self._sumsq = 0.0
        self._need = need  # points before the next test

    def _get_state(self) -> dict[str, Any]:
        return {"values": list(self._values), "sum": self._sum, "sumsq": self._sumsq,
                "need": self._need}  # fmt: skip

    def _set_state(self, state: dict[str, Any]) -> None:
        self._values = deque(state["values"])
        self._sum = state["sum"]
        self._sumsq = state["sumsq"]
        self._need = state["need"]

    def window_mean(self) -> tuple[float, int]:
        """Mean of the cosines in the current (possibly partial) window and their count."""
        n = len(self._values)
        return (self._sum / n if n else 0.0), n

    def _update(self, step: int, value: float) -> Detection | None:
        value = min(1.0, max(-1.0, value))
        values = self._values
        values.append(value)
        self._sum += value
        self._sumsq += value * value
        c = self.config
        if len(values) > c.window:
            old = values.popleft()
            self._sum -= old
            self._sumsq -= old * old
        n = len(values)
        if n < self._need:
            return None
        mean = self._sum / n
        if abs(mean) <= c.threshold:
            return None
        var = max(0.0, (self._sumsq - n * mean * mean) / (n - 1))
        se = math.sqrt(var / n)
        t = (abs(mean) - c.threshold) / se if se > 0.0 else math.inf
        p = t_sf(t, n - 1)
        if p >= c.alpha:
            return None
        self._clear(c.window)
        if mean < 0:
            kind = "oscillation"
            what = "successive updates disagree (overshoot)"
        else:
            kind = "lr_too_small"
            what = "successive updates agree (steps too small)"
        return Detection(
            step,
            kind,
            f"{kind}: mean {c.series} {mean:+.2f} over {n} steps, beyond ±{c.threshold:g} "
            f"(p={p:.1g}): {what}",
            {"mean": mean, "threshold": c.threshold, "p": p, "window": n},
        )
