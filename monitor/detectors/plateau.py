"""Plateau: the metric has stopped improving.

Two methods share one config:

``trend`` (the default, for the noisy per-step training loss)
    Decides on the last ``patience`` points, never on one noisy comparison. The window is cut
    into ``blocks`` blocks; each block's level is its interquartile mean (robust to outliers,
    heavy tails and a zig-zag). The window counts as *improving* when the one-sided
    Mann-Kendall trend test on those levels (a rank test: one wild block moves it little) says
    they fall faster than ``threshold`` requires with p < ``alpha``; otherwise it is a plateau.
    The reason quotes the Theil-Sen line through the levels (median of pairwise slopes).
    Tested once per completed block; after a detection the window starts empty, so one plateau
    gives one detection per ``patience`` points.

``torch`` (for an eval metric reported every N steps, or to reproduce a known recipe)
    :class:`torch.optim.lr_scheduler.ReduceLROnPlateau`'s state machine, counter for counter:
    one point is one ``scheduler.step(metric)``, and a detection is emitted exactly where torch
    would call ``_reduce_lr``. NaN and inf count as bad points, as they do in torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .base import (
    BlockLevels,
    Detection,
    Detector,
    check_choice,
    check_int,
    check_real,
    check_series,
    mann_kendall,
    theil_sen,
)

__all__ = ["PlateauConfig", "PlateauDetector"]


@dataclass(frozen=True)
class PlateauConfig:
    """Settings of :class:`PlateauDetector`; every field is checked on construction.

    Args:
        method: ``trend`` (windowed robust slope test) or ``torch`` (ReduceLROnPlateau's rule).
        mode: ``min`` (lower is better, a loss) or ``max`` (an accuracy).
        patience: trend: the window, in points, over which the metric must show a significant
            improvement. torch: the number of bad points tolerated, as in ReduceLROnPlateau
            (with ``patience=2`` the third bad point in a row triggers).
        threshold: the smallest improvement that counts, relative (``rel``: a fraction of the
            metric's level) or absolute (``abs``). trend: over the whole window. torch: per
            point, exactly as ReduceLROnPlateau's ``threshold``.
        threshold_mode: ``rel`` or ``abs``.
        cooldown: points after a detection during which nothing is counted (torch's cooldown).
        alpha: trend only: the significance level of the improvement test. A plateau is
            declared when p >= alpha, so a truly flat window is caught with probability
            1 - alpha per test.
        blocks: trend only: how many blocks the window is cut into (the test's sample size).
        series: the series' name, used in the reason line only.

    Example:
        >>> det = PlateauDetector(PlateauConfig(patience=64))
        >>> [d.step for s in range(200) if (d := det.update(s, 1.0))]
        [63, 127, 191]
    """

    method: str = "trend"
    mode: str = "min"
    patience: int = 500
    threshold: float = 0.0
    threshold_mode: str = "rel"
    cooldown: int = 0
    alpha: float = 0.05
    blocks: int = 16
    series: str = "loss"

    def __post_init__(self) -> None:
        check_choice("plateau.method", self.method, ("trend", "torch"))
        check_choice("plateau.mode", self.mode, ("min", "max"))
        check_choice("plateau.threshold_mode", self.threshold_mode, ("rel", "abs"))
        check_real("plateau.threshold", self.threshold, low=0.0)
        check_int("plateau.cooldown", self.cooldown, low=0)
        check_real("plateau.alpha", self.alpha, low=0.0, high=1.0, low_open=True, high_open=True)
        check_int("plateau.blocks", self.blocks, low=8, high=64)
        if self.method == "trend":
            check_int("plateau.patience", self.patience, low=self.blocks)
        else:
            check_int("plateau.patience", self.patience, low=0)
        check_series("plateau.series", self.series)


class PlateauDetector(Detector):
    """Detects that a metric stopped improving; see the module docstring for the two methods."""

    name = "plateau"
    config: PlateauConfig

    def __init__(self, config: PlateauConfig | None = None) -> None:
        super().__init__(config or PlateauConfig())

    # -- state

    def _reset_state(self) -> None:
        c = self.config
        self._blocks = BlockLevels(max(1, c.patience // c.blocks), c.blocks)
        self.best = math.inf if c.mode == "min" else -math.inf
        self.num_bad = 0
        self.cooldown_counter = 0

    def _get_state(self) -> dict[str, Any]:
        return {
            "blocks": self._blocks.get_state(),
            "best": self.best,
            "num_bad": self.num_bad,
            "cooldown_counter": self.cooldown_counter,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self._blocks.set_state(state["blocks"])
        self.best = state["best"]
        self.num_bad = state["num_bad"]
        self.cooldown_counter = state["cooldown_counter"]

    # -- points

    def _update(self, step: int, value: float) -> Detection | None:
        if self.config.method == "torch":
            return self._torch_step(step, value)
        return self._trend_step(step, value)

    def _nonfinite(self, step: int, value: float) -> Detection | None:
        # torch compares NaN like any number (it is never better); the trend fit skips it.
        if self.config.method == "torch":
            return self._torch_step(step, value)
        return None

    # -- ReduceLROnPlateau, in torch's order of counter updates

    def _is_better(self, a: float, best: float) -> bool:
        c = self.config
        if c.mode == "min" and c.threshold_mode == "rel":
            return a < best * (1.0 - c.threshold)
        if c.mode == "min":
            return a < best - c.threshold
        if c.threshold_mode == "rel":
            return a > best * (c.threshold + 1.0)
        return a > best + c.threshold

    def _torch_step(self, step: int, value: float) -> Detection | None:
        c = self.config
        if self._is_better(value, self.best):
            self.best = value
            self.num_bad = 0
        else:
            self.num_bad += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad = 0
        if self.num_bad <= c.patience:
            return None
        bad = self.num_bad
        self.cooldown_counter = c.cooldown
        self.num_bad = 0
        return Detection(
            step,
            "plateau",
            f"plateau: {c.series} {value:.4g} not better than best {self.best:.4g} "
            f"({c.threshold:g} {c.threshold_mode}) for {bad} points, patience {c.patience}",
            {"value": value, "best": self.best, "bad": bad, "patience": c.patience},
        )

    # -- windowed trend test

    def _trend_step(self, step: int, value: float) -> Detection | None:
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            return None
        blocks = self._blocks
        if not blocks.add(step, value) or not blocks.full:
            return None
        verdict = self.trend_test()
        if verdict["p"] < self.config.alpha:
            return None
        blocks.clear()
        self.cooldown_counter = self.config.cooldown
        c = self.config
        return Detection(
            step,
            "plateau",
            f"plateau: {c.series} {verdict['start']:.4g} -> {verdict['end']:.4g} over "
            f"{verdict['span']:g} steps, slope {verdict['slope']:.2g} "
            f"(p={verdict['p']:.2f}), patience {c.patience}",
            verdict,
        )

    def trend_test(self) -> dict[str, Any]:
        """The improvement test on the current window (which must be full).

        Returns the robust (Theil-Sen) start and end levels, the span in steps, the slope per
        step, the improvement (positive = better, in the metric's units), the improvement
        ``threshold`` requires, and the p-value of the one-sided Mann-Kendall test that the
        block levels improve faster than that requirement.
        """
        c = self.config
        xs, ys = self._blocks.xs, self._blocks.ys
        slope, intercept = theil_sen(xs, ys)
        span = xs[-1] - xs[0]
        start, end = intercept + slope * xs[0], intercept + slope * xs[-1]
        improvement = (start - end) if c.mode == "min" else (end - start)
        required = c.threshold * abs(end) if c.threshold_mode == "rel" else c.threshold
        # Improving by more than `required` over the span means the levels, tilted by the
        # required rate, still fall (min) or rise (max); Mann-Kendall tests that fall.
        rate = required / span
        sign = 1.0 if c.mode == "min" else -1.0
        tilted = [sign * y + rate * (x - xs[0]) for x, y in zip(xs, ys, strict=True)]
        p = mann_kendall(tilted)
        return {
            "start": start,
            "end": end,
            "span": span,
            "slope": slope,
            "improvement": improvement,
            "required": required,
            "p": p,
            "patience": c.patience,
        }
