"""The detector contract, and the small statistics the detectors share.

A detector is a pure streaming object: :meth:`Detector.update` takes one ``(step, value)``
point of one series and returns a :class:`Detection` or None. No optimizer, no clock, no I/O:
acting on a detection is the policy's job. Memory is O(window), never O(steps).

The public :meth:`Detector.update` validates once (steps only move forward, values are
numbers) and sends finite values to the subclass's ``_update`` and non-finite ones (NaN, inf)
to ``_nonfinite``, which ignores them unless the subclass says otherwise (the divergence
detector fires on them; the ReduceLROnPlateau-compatible plateau mode counts them as torch
does). ``state_dict()`` carries a schema version, the detector's name and its config, so a
state can only be loaded into a detector that would have produced it.
"""

from __future__ import annotations

import bisect
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

__all__ = [
    "STATE_VERSION",
    "BlockLevels",
    "Detection",
    "Detector",
    "Trend",
    "all_finite",
    "all_of_type",
    "check_choice",
    "check_int",
    "check_real",
    "check_series",
    "interquartile_mean",
    "linear_trend",
    "mann_kendall",
    "median",
    "t_sf",
    "theil_sen",
]

STATE_VERSION = 1


# ------------------------------------------------------------------------ config checks


def check_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float, or raise ValueError naming it, the range and the value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    ok = True
    if low is not None:
        ok = ok and (value > low if low_open else value >= low)
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        lo_s = "-inf" if low is None else f"{low:g}"
        hi_s = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name} must be in {lo}{lo_s}, {hi_s}{hi}, got {value!r}")
    return float(value)


def check_int(name: str, value: Any, *, low: int = 0, high: int | None = None) -> int:
    """Return ``value`` if it is an int in ``[low, high]``, else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        hi = "inf" if high is None else str(high)
        raise ValueError(f"{name} must be an integer in [{low}, {hi}], got {value!r}")
    return value


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise ValueError listing them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def check_series(name: str, value: Any) -> str:
    """Return ``value`` if it is a usable series name, else raise echoing it."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


# ------------------------------------------------------------------------ statistics


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence (the mean of the middle two for an even count)."""
    s = sorted(values)
    n = len(s)
    mid = n // 2
    return s[mid] if n % 2 else 0.5 * (s[mid - 1] + s[mid])


def interquartile_mean(values: Sequence[float]) -> float:
    """Mean of the middle half of the sorted values (all of them when fewer than four)."""
    s = sorted(values)
    n = len(s)
    q = n // 4
    middle = s[q : n - q] if n >= 4 else s
    return sum(middle) / len(middle)


def theil_sen(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Robust line (slope, intercept): the median of pairwise slopes, the median residual."""
    n = len(xs)
    slopes = [
        (ys[j] - ys[i]) / (xs[j] - xs[i])
        for i in range(n)
        for j in range(i + 1, n)
        if xs[j] != xs[i]
    ]
    slope = median(slopes)
    return slope, median([y - slope * x for x, y in zip(xs, ys, strict=True)])


def mann_kendall(ys: Sequence[float]) -> float:
    """P(S <= observed) of the Mann-Kendall trend statistic under "no trend" (ordered ys).

    S counts rising minus falling pairs; its null variance is n(n-1)(2n+5)/18 and the normal
    approximation with a continuity correction is good from n = 8 on. Small means falling.
    """
    n = len(ys)
    # S = sum over i of (later values above ys[i]) - (later values below it), counted by
    # bisecting the sorted later values: O(n log n) C-level steps instead of n^2 / 2 Python
    # ones (the plateau test runs this on 32 levels at every block). Ties count 0 either way.
    s = 0
    later: list[float] = []
    for y in reversed(ys):
        s += len(later) - bisect.bisect_right(later, y) - bisect.bisect_left(later, y)
        bisect.insort(later, y)
    sd = math.sqrt(n * (n - 1) * (2 * n + 5) / 18.0)
    z = 0.0 if s == 0 else (s + 1) / sd if s < 0 else (s - 1) / sd
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _betacf(a: float, b: float, x: float) -> float:
    # Continued fraction of the regularized incomplete beta (modified Lentz), as in
    # Numerical Recipes 6.4; converges in a few dozen terms for x < (a + 1) / (a + b + 2).
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom (exact, no scipy).

    Uses P(|T| > t) = I_{df/(df+t^2)}(df/2, 1/2), the regularized incomplete beta function.
    """
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * _betainc(0.5 * df, 0.5, df / (df + t * t))
    return tail if t > 0 else 1.0 - tail


@dataclass(frozen=True)
class Trend:
    """An ordinary least-squares line through (x, y) points, with its slope's standard error."""

    slope: float
    intercept: float
    se: float  # standard error of the slope; 0.0 when the points lie exactly on the line
    n: int

    def at(self, x: float) -> float:
        """The fitted value at ``x``."""
        return self.intercept + self.slope * x


def linear_trend(xs: Sequence[float], ys: Sequence[float]) -> Trend:
    """Least-squares line through at least three points with distinct x values."""
    n = len(xs)
    mx = sum(xs) / n
    my = sum(ys) / n
    sxx = sxy = 0.0
    for x, y in zip(xs, ys, strict=True):
        dx = x - mx
        sxx += dx * dx
        sxy += dx * (y - my)
    slope = sxy / sxx
    intercept = my - slope * mx
    rss = 0.0
    for x, y in zip(xs, ys, strict=True):
        r = y - intercept - slope * x
        rss += r * r
    se = math.sqrt(rss / (n - 2) / sxx) if n > 2 else math.inf
    return Trend(slope, intercept, se, n)


def all_of_type(items: Sequence[Any], cls: type) -> bool:
    """Whether every item's type is exactly ``cls`` (a bool is not an int here), in C-level
    passes: a generator doing the same costs a Python step per item, on every batch."""
    return set(map(type, items)) <= {cls}


def all_finite(values: Sequence[float]) -> bool:
    """Whether every value is finite, in one C-level pass.

    A NaN or an infinity makes the sum NaN or infinite; a sum of finite floats is finite
    unless it overflows, and then this says False, which only sends the caller down its
    point-by-point path (which is right for every input).
    """
    return math.isfinite(sum(values))


# ------------------------------------------------------------------------ the contract


@dataclass(frozen=True)
class Detection:
    """What a detector saw at ``step``: its kind, a one-line reason with the numbers, the data.

    ``kind`` is the detector's name (plateau, oscillation, spike, divergence) or, for the
    alignment detector, ``lr_too_small``. ``data`` holds the numbers the reason quotes, as
    plain floats and ints, so it can be stored as JSON.
    """

    step: int
    kind: str
    reason: str
    data: dict[str, Any] = field(default_factory=dict)


class Detector(ABC):
    """Base of every detector: validates each point once, then calls the subclass.

    Subclasses set ``name``, keep their config in ``self.config`` (a frozen dataclass) and
    implement ``_update`` (finite values), ``_reset_state`` and ``_get_state`` /
    ``_set_state``; they may override ``_nonfinite``.
    """

    name: ClassVar[str] = "detector"

    def __init__(self, config: Any) -> None:
        self.config = config
        self._last_step: int | None = None
        self.points = 0  # finite points seen since the last reset
        self.nonfinite = 0  # NaN / inf points seen since the last reset
        self._reset_state()

    def update(self, step: int, value: float) -> Detection | None:
        """Feed one point; return a Detection when this point completes one, else None.

        Raises:
            ValueError: ``step`` is not an integer, or is not after the previous step
                (after a restart from a checkpoint, call :meth:`reset` first), or ``value``
                is not a number.
        """
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"{self.name}: step must be an integer, got {step!r}")
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(
                f"{self.name}: step {step} is not after the previous step {self._last_step}; "
                "steps must increase (call reset() after a restart from a checkpoint)"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{self.name}: value must be a number, got {value!r}")
        self._last_step = step
        value = float(value)
        if value - value != 0.0:  # NaN or +-inf, without two math.isfinite lookups
            self.nonfinite += 1
            return self._nonfinite(step, value)
        self.points += 1
        return self._update(step, value)

    def update_many(self, steps: Sequence[int], values: Sequence[float]) -> list[Detection]:
        """Feed points in order; return the detections they caused, in order.

        The same as :meth:`update` point by point (same decisions, same errors), but the
        checks run once per batch, in C-level passes, which is what makes a controller with a
        hundred runs keep up: the per-point checks were a third of a detector's time.

        Raises:
            ValueError: as :meth:`update`; the points before the bad one are fed.
        """
        n = len(steps)
        if n != len(values):
            raise ValueError(f"{self.name}: {n} steps but {len(values)} values")
        if n == 0:
            return []
        last = self._last_step
        if (
            not all_of_type(steps, int)
            or not all_of_type(values, float)
            or (last is not None and steps[0] <= last)
            or not all(map(int.__lt__, steps, steps[1:]))
        ):  # something is off: the point-by-point path finds it and raises as it would
            return [d for s, v in zip(steps, values, strict=True) if (d := self.update(s, v))]
        return self.feed_checked(steps, values)

    def feed_checked(self, steps: Sequence[int], values: Sequence[float]) -> list[Detection]:
        """:meth:`update_many` for a caller that has checked the batch itself: steps are ints,
        strictly increasing and after :attr:`last_step`, values are floats, lengths match.
        The run controller checks once per series for all of its detectors."""
        found: list[Detection] = []
        finite = self._update
        nonfinite = self._nonfinite
        for step, value in zip(steps, values, strict=True):
            # _update may read the counters (the divergence detector's stuck test does)
            self._last_step = step
            if value - value != 0.0:  # NaN or +-inf
                self.nonfinite += 1
                hit = nonfinite(step, value)
            else:
                self.points += 1
                hit = finite(step, value)
            if hit is not None:
                found.append(hit)
        return found

    @property
    def last_step(self) -> int | None:
        """The step of the last point fed since the last reset, or None."""
        return self._last_step

    def reset(self) -> None:
        """Forget every point: the detector is as if newly built with the same config."""
        self._last_step = None
        self.points = 0
        self.nonfinite = 0
        self._reset_state()

    def state_dict(self) -> dict[str, Any]:
        """The detector's state as plain data (JSON-able): version, name, config, counters."""
        return {
            "version": STATE_VERSION,
            "detector": self.name,
            "config": asdict(self.config),
            "last_step": self._last_step,
            "points": self.points,
            "nonfinite": self.nonfinite,
            "state": self._get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict` of a detector of the same kind and config.

        Raises:
            ValueError: the state has another schema version, another detector, or another
                config (a detector's counters mean nothing under different settings).
        """
        version = state.get("version")
        if version != STATE_VERSION:
            raise ValueError(
                f"{self.name}: state schema version {version!r} is not {STATE_VERSION}"
            )
        if state.get("detector") != self.name:
            raise ValueError(
                f"{self.name}: cannot load the state of a {state.get('detector')!r} detector"
            )
        if state.get("config") != asdict(self.config):
            raise ValueError(
                f"{self.name}: the state was saved with config {state.get('config')!r}, "
                f"this detector has {asdict(self.config)!r}"
            )
        self._last_step = state["last_step"]
        self.points = state["points"]
        self.nonfinite = state["nonfinite"]
        self._set_state(state["state"])

    # -- for subclasses

    @abstractmethod
    def _update(self, step: int, value: float) -> Detection | None:
        """Handle one finite value whose step has been validated."""

    def _nonfinite(self, step: int, value: float) -> Detection | None:
        """Handle a NaN or infinite value; ignored unless a subclass cares."""
        return None

    @abstractmethod
    def _reset_state(self) -> None:
        """Set the subclass's state to that of a new detector."""

    @abstractmethod
    def _get_state(self) -> dict[str, Any]:
        """The subclass's state as plain data."""

    @abstractmethod
    def _set_state(self, state: dict[str, Any]) -> None:
        """Restore what ``_get_state`` returned."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


class BlockLevels:
    """The levels of the last ``blocks`` complete blocks of ``size`` points each.

    A block's level is its interquartile mean (the mean of its middle half): it shrugs off the
    odd outlier and heavy-tailed noise like a median, but a zig-zag between two values gives
    their middle, not one of them at random. The (mean step, level) pairs are what the trend
    tests fit: ``blocks`` points, refreshed once per block, so a test costs O(blocks^2) every
    ``size`` points instead of O(window) every point.
    """

    __slots__ = ("_cur_steps", "_cur_values", "blocks", "size", "xs", "ys")

    def __init__(self, size: int, blocks: int) -> None:
        self.size = size
        self.blocks = blocks
        self.clear()

    def clear(self) -> None:
        """Drop every point and block."""
        self._cur_steps: list[int] = []
        self._cur_values: list[float] = []
        self.xs: list[float] = []
        self.ys: list[float] = []

    def fill(self, steps: Sequence[int], values: Sequence[float], start: int) -> int:
        """Add the points from index ``start`` on, up to the one that completes the current
        block; return that point's index, or -1 if the points ran out first (all added).

        The batch form of :meth:`add`: the points inside a block go in as one slice.
        """
        end = start + self.size - len(self._cur_values) - 1  # the completing point
        if end >= len(values):
            self._cur_steps += steps[start:]
            self._cur_values += values[start:]
            return -1
        self._cur_steps += steps[start:end]
        self._cur_values += values[start:end]
        self.add(steps[end], values[end])
        return end

    def add(self, step: int, value: float) -> bool:
        """Add a point; return True when it completed a block (the window moved)."""
        self._cur_steps.append(step)
        self._cur_values.append(value)
        if len(self._cur_values) < self.size:
            return False
        self.xs.append(sum(self._cur_steps) / self.size)
        self.ys.append(interquartile_mean(self._cur_values))
        if len(self.xs) > self.blocks:
            del self.xs[0], self.ys[0]
        self._cur_steps = []
        self._cur_values = []
        return True

    @property
    def full(self) -> bool:
        """Whether the window holds ``blocks`` complete blocks."""
        return len(self.xs) == self.blocks

    def get_state(self) -> dict[str, Any]:
        """Plain-data state."""
        return {
            "cur_steps": list(self._cur_steps),
            "cur_values": list(self._cur_values),
            "xs": list(self.xs),
            "ys": list(self.ys),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s output."""
        self._cur_steps = list(state["cur_steps"])
        self._cur_values = list(state["cur_values"])
        self.xs = list(state["xs"])
        self.ys = list(state["ys"])
