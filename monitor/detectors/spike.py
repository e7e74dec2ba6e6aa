"""Spike: a sudden jump far above the recent level, which may recover by itself.

The recent level is the median of the last ``window`` points and the noise scale their MAD
(times 1.4826, the normal-consistent factor), both robust: a few wild points move neither.
The jump is judged on the median of the last ``recent`` points, not on one point, so a single
bad minibatch (which heavy-tailed noise produces every few thousand steps) is not a spike,
while a jump that holds for ``recent // 2 + 1`` points is. A spike fires once; its points are
kept out of the reference window until the series is back within ``k / 2`` scales, and if it
never comes back within ``window`` points the new level becomes the reference.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .base import Detection, Detector, all_finite, check_int, check_real, check_series, median

__all__ = ["SpikeConfig", "SpikeDetector"]

_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class SpikeConfig:
    """Settings of :class:`SpikeDetector`.

    Args:
        window: points in the reference window (the recent level and scale).
        recent: points whose median is compared to the reference (odd is natural).
        k: how many robust scales above the level that median must be.
        min_rel_scale: the scale is never taken below this fraction of the level, so an
            almost constant series does not call a 1% wobble a spike.
        series: the series' name, used in the reason line only.
    """

    window: int = 100
    recent: int = 5
    k: float = 6.0
    min_rel_scale: float = 0.005
    series: str = "loss"

    def __post_init__(self) -> None:
        check_int("spike.window", self.window, low=10, high=100_000)
        check_int("spike.recent", self.recent, low=1, high=self.window)
        check_real("spike.k", self.k, low=0.0, low_open=True)
        check_real("spike.min_rel_scale", self.min_rel_scale, low=0.0)
        check_series("spike.series", self.series)


class SpikeDetector(Detector):
    """Robust jump detector; see the module docstring."""

    name = "spike"
    config: SpikeConfig

    def __init__(self, config: SpikeConfig | None = None) -> None:
        super().__init__(config or SpikeConfig())
        self._min_ref = max(10, self.config.window // 2)
        self._rescale_every = max(1, self.config.window // 10)

    def _reset_state(self) -> None:
        self._recent: deque[float] = deque()
        self._ref: deque[float] = deque()
        self._sorted: list[float] = []
        self._scale = 0.0
        self._since_scale = 0
        self._in_spike = False
        self._spike_len = 0

    def _get_state(self) -> dict[str, Any]:
        return {
            "recent": list(self._recent),
            "ref": list(self._ref),
            "scale": self._scale,
            "since_scale": self._since_scale,
            "in_spike": self._in_spike,
            "spike_len": self._spike_len,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self._recent = deque(state["recent"])
        self._ref = deque(state["ref"])
        self._sorted = sorted(self._ref)
        self._scale = state["scale"]
        self._since_scale = state["since_scale"]
        self._in_spike = state["in_spike"]
        self._spike_len = state["spike_len"]

    def _update(self, step: int, value: float) -> Detection | None:
        found = self._scan((step,), (value,))
        return found[0] if found else None

    def feed_checked(self, steps: Sequence[int], values: Sequence[float]) -> list[Detection]:
        """The batch path: a batch of finite values goes through :meth:`_scan` in one call."""
        if not values or not all_finite(values):
            return super().feed_checked(steps, values)
        found = self._scan(steps, values)
        self.points += len(values)
        self._last_step = steps[-1]
        return found

    def _scan(self, steps: Sequence[int], values: Sequence[float]) -> list[Detection]:
        """Feed finite points in order; the detections, in order.

        One loop with its state in local names: the detector runs on every loss point of
        every run, and the method calls and attribute lookups of a per-point step were most
        of its cost.
        """
        c = self.config
        window, n_recent, k = c.window, c.recent, c.k
        min_ref, rescale_every = self._min_ref, self._rescale_every
        recent, ref, srt = self._recent, self._ref, self._sorted
        insort, bisect_left = bisect.insort, bisect.bisect_left
        found: list[Detection] = []
        for step, value in zip(steps, values, strict=True):
            recent.append(value)
            if len(recent) > n_recent:
                leaving = recent.popleft()
                if not self._in_spike:  # a spike's points stay out of the reference
                    ref.append(leaving)
                    insort(srt, leaving)
                    if len(ref) > window:
                        del srt[bisect_left(srt, ref.popleft())]
                    self._since_scale += 1
            if len(recent) < n_recent or len(ref) < min_ref:
                continue
            m = len(srt)
            level = srt[m // 2] if m % 2 else 0.5 * (srt[m // 2 - 1] + srt[m // 2])
            if self._since_scale >= rescale_every or self._scale == 0.0:
                self._scale = _MAD_TO_SIGMA * median([abs(v - level) for v in srt])
                self._since_scale = 0
            scale = max(self._scale, c.min_rel_scale * abs(level))
            now = median(recent) if n_recent > 1 else value
            # A constant series at exactly zero has no scale: any rise is infinitely many scales.
            z = (now - level) / scale if scale > 0.0 else (math.inf if now > level else 0.0)
            if self._in_spike:
                self._spike_len += 1
                if z < 0.5 * k:
                    self._in_spike = False
                elif self._spike_len >= window:  # it never came back: this is the level now
                    self._in_spike = False
                    ref.clear()
                    srt.clear()
                    self._scale = 0.0
                continue
            if z <= k:
                continue
            self._in_spike = True
            self._spike_len = 0
            found.append(
                Detection(
                    step,
                    "spike",
                    f"spike: {c.series} {now:.4g} (median of last {n_recent}) vs level "
                    f"{level:.4g} ± {scale:.2g}, {z:.1f} scales above (limit {k:g})",
                    {"value": now, "level": level, "scale": scale, "z": z, "k": k},
                )
            )
        return found
