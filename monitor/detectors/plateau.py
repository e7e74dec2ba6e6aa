"""Plateau: the metric has stopped improving.

Two methods share one config:

``trend`` (the default, for the noisy per-step training loss)
    Decides on windowed statistics, never on one noisy comparison. Points are cut into blocks
    of ``patience // blocks`` points; a block's level is its interquartile mean (robust to
    outliers, heavy tails and a zig-zag). The last ``2 * patience`` points are kept (two
    windows, ``2 * blocks`` levels). After each completed block:

    1. The last window (``blocks`` levels) must show no significant improvement: the
       one-sided Mann-Kendall test that the levels improve faster than ``threshold``
       requires has p >= ``alpha``. Otherwise the metric is improving and nothing happens.
    2. Then it is a plateau when either

       * **no improvement**: the same test on all the kept levels (up to two windows) has
         p >= ``alpha`` too, or
       * **improvement stopped**: a whole window before the last one is in hand and the
         least-squares slope of the last window's levels is worse than that of the window
         before with p < ``break_alpha`` (one-sided t-test on the difference of the two
         slopes): the descent broke off.

    The first rule needs two quiet windows when the history is long; the second calls a
    clear break in the trend after one. A slowly but steadily improving metric (a power-law
    tail under heavy noise) passes neither: its last window may look flat by chance, but its
    slope has not dropped against the window before, and two windows together show the
    improvement. A metric that flattens gradually is caught by the first rule.
    After a detection the next test waits for a whole new window (one detection per
    ``patience`` points on a lasting plateau); the kept levels stay, so a chance detection
    is not followed by a second one judged on one window alone.

``torch`` (for an eval metric reported every N steps, or to reproduce a known recipe)
    :class:`torch.optim.lr_scheduler.ReduceLROnPlateau`'s state machine, counter for counter:
    one point is one ``scheduler.step(metric)``, and a detection is emitted exactly where torch
    would call ``_reduce_lr``. NaN and inf count as bad points, as they do in torch.
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
    check_choice,
    check_int,
    check_real,
    check_series,
    linear_trend,
    mann_kendall,
    t_sf,
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
            improvement (two windows are kept, see the module docstring). torch: the number
            of bad points tolerated, as in ReduceLROnPlateau (with ``patience=2`` the third
            bad point in a row triggers).
        threshold: the smallest improvement that counts, relative (``rel``: a fraction of the
            metric's level) or absolute (``abs``). trend: over the whole window. torch: per
            point, exactly as ReduceLROnPlateau's ``threshold``.
        threshold_mode: ``rel`` or ``abs``.
        cooldown: points after a detection during which nothing is counted (torch's cooldown).
        alpha: trend only: the significance level of the improvement test; a window with
            p >= alpha is "not improving". A truly flat window still passes for improving
            with probability alpha at one test, but it is tested again after every block,
            so alpha costs a block or two of delay, never a missed plateau; what it buys is
            fewer false plateaus on a slow but real improvement (at most 0.5: a constant
            window has p = 0.5).
        break_alpha: trend only: the significance level of the trend-break test (the last
            window's slope is worse than the window before's).
        blocks: trend only: how many blocks one window is cut into (the test's sample size).
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
    alpha: float = 0.25
    break_alpha: float = 1e-3
    blocks: int = 16
    series: str = "loss"

    def __post_init__(self) -> None:
        check_choice("plateau.method", self.method, ("trend", "torch"))
        check_choice("plateau.mode", self.mode, ("min", "max"))
        check_choice("plateau.threshold_mode", self.threshold_mode, ("rel", "abs"))
        check_real("plateau.threshold", self.threshold, low=0.0)
        check_int("plateau.cooldown", self.cooldown, low=0)
        check_real("plateau.alpha", self.alpha, low=0.0, high=0.5, low_open=True)
        check_real("plateau.break_alpha", self.break_alpha, low=0.0, high=0.5, low_open=True)
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
        self._blocks = BlockLevels(max(1, c.patience // c.blocks), 2 * c.blocks)
        self._wait = 0  # blocks to complete before the next test (a new window after a hit)
        self.best = math.inf if c.mode == "min" else -math.inf
        self.num_bad = 0
        self.cooldown_counter = 0

    def _get_state(self) -> dict[str, Any]:
        return {
            "blocks": self._blocks.get_state(),
            "wait": self._wait,
            "best": self.best,
            "num_bad": self.num_bad,
            "cooldown_counter": self.cooldown_counter,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self._blocks.set_state(state["blocks"])
        self._wait = state.get("wait", 0)
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
        if not self._blocks.add(step, value):
            return None
        return self._on_block(step)

    def feed_checked(self, steps: Sequence[int], values: Sequence[float]) -> list[Detection]:
        """The trend test's batch path: finite points skip the cooldown a slice at a time and
        join their block a slice at a time; only the points that complete a block are tested.
        """
        if self.config.method == "torch" or not values or not all_finite(values):
            return super().feed_checked(steps, values)
        n = len(values)
        found: list[Detection] = []
        i = 0
        while i < n:
            if self.cooldown_counter > 0:  # cooldown: these points join no block
                skip = min(self.cooldown_counter, n - i)
                self.cooldown_counter -= skip
                i += skip
                continue
            j = self._blocks.fill(steps, values, i)
            if j < 0:
                break
            hit = self._on_block(steps[j])
            if hit is not None:
                found.append(hit)
            i = j + 1
        self.points += n
        self._last_step = steps[-1]
        return found

    def _on_block(self, step: int) -> Detection | None:
        """The test, run when the point at ``step`` completed a block."""
        c = self.config
        blocks = self._blocks
        if self._wait > 0:
            self._wait -= 1
            return None
        if len(blocks.ys) < c.blocks:
            return None
        verdict = self.trend_test()
        if verdict["path"] is None:
            return None
        self._wait = c.blocks - 1  # this block counts: a whole new window before the next test
        self.cooldown_counter = c.cooldown
        if verdict["path"] == "no improvement":
            reason = (
                f"plateau: {c.series} {verdict['start']:.4g} -> {verdict['end']:.4g} over "
                f"{verdict['span']:g} steps, slope {verdict['slope']:.2g} "
                f"(p={verdict['p_all']:.2f}), patience {c.patience}"
            )
        else:
            reason = (
                f"plateau: {c.series} improvement stopped: slope {verdict['slope_before']:.2g} "
                f"-> {verdict['slope']:.2g} per step (break p={verdict['p_break']:.1g}), "
                f"{verdict['start']:.4g} -> {verdict['end']:.4g} over the last "
                f"{verdict['span']:g} steps (p={verdict['p']:.2f}), patience {c.patience}"
            )
        return Detection(step, "plateau", reason, verdict)

    def _levels_test(self, xs: list[float], ys: list[float], required: float) -> float:
        """P-value of "the levels improve by more than ``required`` per window" (Mann-Kendall)."""
        c = self.config
        # Improving by more than `required` per window means the levels, tilted by the
        # required rate, still fall (min) or rise (max); Mann-Kendall tests that fall.
        window_span = (xs[-1] - xs[0]) / (len(xs) - 1) * (c.blocks - 1)
        rate = required / window_span if window_span > 0 else 0.0
        sign = 1.0 if c.mode == "min" else -1.0
        return mann_kendall([sign * y + rate * (x - xs[0]) for x, y in zip(xs, ys, strict=True)])

    def trend_test(self) -> dict[str, Any]:
        """The plateau tests on the kept levels (at least one window of them).

        Returns the robust (Theil-Sen) start and end levels, span in steps and slope per step
        of the levels the deciding test judged (all kept levels when the path is "no
        improvement", else the last window), their improvement (positive = better, in the
        metric's units), the improvement ``threshold`` requires over one window, the
        p-values of the improvement test on the last window (``p``) and on all kept levels
        (``p_all``), the least-squares
        slope of the window before (``slope_before``, None until one is in hand) and the
        p-value of the trend-break test (``p_break``, None when not run), and ``path``: the
        rule that calls a plateau ("no improvement" or "improvement stopped"), or None.
        """
        c = self.config
        n = c.blocks
        xs_all, ys_all = self._blocks.xs, self._blocks.ys
        xs, ys = xs_all[-n:], ys_all[-n:]
        slope, intercept = theil_sen(xs, ys)
        span = xs[-1] - xs[0]
        start, end = intercept + slope * xs[0], intercept + slope * xs[-1]
        improvement = (start - end) if c.mode == "min" else (end - start)
        required = c.threshold * abs(end) if c.threshold_mode == "rel" else c.threshold
        p = self._levels_test(xs, ys, required)
        p_all = self._levels_test(xs_all, ys_all, required) if len(ys_all) > n else p
        slope_before = p_break = None
        path = None
        if p >= c.alpha and p_all >= c.alpha:
            path = "no improvement"
        elif p >= c.alpha and len(ys_all) == 2 * n:
            before = linear_trend(xs_all[:n], ys_all[:n])
            last = linear_trend(xs, ys)
            slope_before = before.slope
            # How much worse (min: higher, max: lower) the last window's slope is.
            worse = (last.slope - before.slope) * (1.0 if c.mode == "min" else -1.0)
            se = math.hypot(before.se, last.se)
            # (when both windows lie exactly on lines, the sign of the change says it all)
            p_break = t_sf(worse / se, 2 * n - 4) if se > 0.0 else float(worse <= 0)
            if p_break < c.break_alpha:
                path = "improvement stopped"
        if path == "no improvement" and len(ys_all) > n:  # quote the line the test judged
            slope, intercept = theil_sen(xs_all, ys_all)
            span = xs_all[-1] - xs_all[0]
            start, end = intercept + slope * xs_all[0], intercept + slope * xs_all[-1]
            improvement = (start - end) if c.mode == "min" else (end - start)
        return {
            "start": start,
            "end": end,
            "span": span,
            "slope": slope,
            "improvement": improvement,
            "required": required,
            "p": p,
            "p_all": p_all,
            "slope_before": slope_before,
            "p_break": p_break,
            "path": path,
            "patience": c.patience,
        }
