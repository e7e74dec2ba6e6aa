"""The dashboard's read layer: the store's public read API plus in-memory, incremental caches.

Why a cache: re-reading a 1,000,000-point series from SQLite costs about half a second, and a
live page asks for every chart once a second. :class:`DataSource` keeps each series it has
read in growable arrays and afterwards asks the store only for the steps beyond what it has
(``Store.points(run, name, start=last + 1)``, an indexed range read), and only for runs whose
committed sequence number moved. Zooming then slices memory instead of querying.

The smoothed loss is cached the same way: an exponential moving average continues from its
last value, so a live tick smooths only the new points.

The store's connection is shared by Waitress's worker threads, so every store call and cache
update happens under one lock; a cache that would exceed ``max_points`` forgets the least
recently used series first.

A run restarted under the same id that sends steps below what was cached is not merged
backwards; the cache is cleared for it when its point count shrinks (a new database file) and
otherwise the page reload shows the full picture.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..monitor.store import CommandRecord, EventRecord, RunRecord, Store

__all__ = ["DataSource", "PanelSpec", "ema", "panel_spec", "plan_panels"]

#: Default bound on cached points over all series (16 bytes each: about 480 MB).
DEFAULT_MAX_POINTS = 30_000_000


def ema(values: np.ndarray, weight: float, prev: float | None = None) -> np.ndarray:
    """Exponential moving average ``s[i] = w*s[i-1] + (1-w)*v[i]``, vectorised.

    Args:
        values: finite float64 values.
        weight: smoothing in ``[0, 1)``; 0 returns the values unchanged.
        prev: the average just before ``values[0]`` (to continue a series); ``None`` starts
            at ``values[0]`` (no bias toward zero, unlike a zero start).

    Returns:
        The averages, same length as ``values``.

    Raises:
        ValueError: ``weight`` outside ``[0, 1)``.

    Works in chunks so that ``w**-k`` stays below 1e8: inside a chunk the recurrence is a
    cumulative sum (``s[i] = w**(i+1)*p + (1-w)*w**i * cumsum(v[j]*w**-j)``), accurate to
    about 1e-15 relative, without a Python loop per point.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight!r}")
    v = np.asarray(values, dtype=np.float64)
    if weight == 0.0 or not len(v):
        return v.copy()
    k = max(1, int(math.log(1e8) / -math.log(weight)))
    out = np.empty_like(v)
    p = v[0] if prev is None else float(prev)
    powers = weight ** np.arange(min(k, len(v)), dtype=np.float64)
    for lo in range(0, len(v), k):
        chunk = v[lo : lo + k]
        pw = powers[: len(chunk)]
        s = np.cumsum(chunk / pw)
        out[lo : lo + len(chunk)] = weight * pw * p + (1 - weight) * pw * s
        p = out[lo + len(chunk) - 1]
    return out


class _Buffer:
    """Growable (steps, values) arrays: appends are amortised O(new points)."""

    __slots__ = ("n", "x", "y")

    def __init__(self) -> None:
        self.x = np.empty(0, dtype=np.int64)
        self.y = np.empty(0, dtype=np.float64)
        self.n = 0

    def append(self, x: np.ndarray, y: np.ndarray) -> None:
        need = self.n + len(x)
        if need > len(self.x):
            cap = max(need, 2 * len(self.x), 1024)
            nx = np.empty(cap, dtype=np.int64)
            ny = np.empty(cap, dtype=np.float64)
            nx[: self.n], ny[: self.n] = self.x[: self.n], self.y[: self.n]
            self.x, self.y = nx, ny
        self.x[self.n : need], self.y[self.n : need] = x, y
        self.n = need

    @property
    def last(self) -> int | None:
        return int(self.x[self.n - 1]) if self.n else None

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x[: self.n], self.y[: self.n]


@dataclass
class _Smooth:
    weight: float
    done: int  # raw points consumed
    buf: _Buffer


class DataSource:
    """Cached reads for the dashboard, on top of the store's public read API.

    Args:
        store: an open :class:`~lrpilot.monitor.store.Store` (usually ``readonly=True``).
        max_points: bound on cached points over all series; least recently used go first.

    Example:
        >>> data = DataSource(Store("runs.db", readonly=True))
        >>> steps, loss = data.series(run_id, "loss")
    """

    def __init__(self, store: Store, max_points: int = DEFAULT_MAX_POINTS) -> None:
        self.store = store
        self.max_points = max_points
        self._lock = threading.RLock()
        self._series: OrderedDict[tuple[str, str], _Buffer] = OrderedDict()
        self._seen_seq: dict[tuple[str, str], int] = {}
        self._smooth: dict[tuple[str, str], _Smooth] = {}
        self._names: dict[str, tuple[int, list[str]]] = {}
        self._events: dict[str, list[EventRecord]] = {}

    # --------------------------------------------------------------- runs and records

    def runs(self) -> list[RunRecord]:
        """All runs, newest first."""
        with self._lock:
            return self.store.runs()

    def runs_by_id(self, run_ids: Sequence[str]) -> list[RunRecord]:
        """The runs with these ids, in that order; unknown ids are skipped."""
        by_id = {r.id: r for r in self.runs()}
        return [by_id[i] for i in run_ids if i in by_id]

    def series_names(self, run: RunRecord) -> list[str]:
        """Series names of a run, re-read only when its committed sequence moved."""
        with self._lock:
            cached = self._names.get(run.id)
            if cached is None or cached[0] != run.last_seq:
                cached = (run.last_seq, self.store.series_names(run.id))
                self._names[run.id] = cached
            return cached[1]

    def events(self, run_id: str) -> list[EventRecord]:
        """Detections and decisions of a run, fetching only new ones (by id)."""
        with self._lock:
            have = self._events.setdefault(run_id, [])
            have.extend(self.store.events(run_id, since_id=have[-1].id if have else 0))
            return list(have)

    def commands(self, run_id: str) -> list[CommandRecord]:
        """LR commands of a run (re-read every time: their status changes)."""
        with self._lock:
            return self.store.commands(run_id)

    # --------------------------------------------------------------- series

    def series(self, run: RunRecord, name: str) -> tuple[np.ndarray, np.ndarray]:
        """All points of one series (steps int64, values float64), read incrementally.

        The returned arrays are views of the cache: treat them as read-only.
        """
        with self._lock:
            key = (run.id, name)
            buf = self._series.get(key)
            if buf is None:
                buf = self._series[key] = _Buffer()
            else:
                self._series.move_to_end(key)
            if self._seen_seq.get(key) != run.last_seq or buf.n == 0:
                last = buf.last
                x, y = self.store.points(run.id, name, start=None if last is None else last + 1)
                if len(x):
                    buf.append(x, y)
                    self._evict()
                self._seen_seq[key] = run.last_seq
            return buf.view()

    def smoothed(self, run: RunRecord, name: str, weight: float) -> tuple[np.ndarray, np.ndarray]:
        """The EMA of a series' finite points, continued incrementally (see :func:`ema`)."""
        x, y = self.series(run, name)
        with self._lock:
            key = (run.id, name)
            sm = self._smooth.get(key)
            if sm is None or sm.weight != weight or sm.done > len(x):
                sm = self._smooth[key] = _Smooth(weight, 0, _Buffer())
            if sm.done < len(x):
                nx, ny = x[sm.done :], y[sm.done :]
                ok = np.isfinite(ny)
                prev = float(sm.buf.y[sm.buf.n - 1]) if sm.buf.n else None
                sm.buf.append(nx[ok], ema(ny[ok], weight, prev))
                sm.done = len(x)
            return sm.buf.view()

    def lr_series(self, run: RunRecord, name: str = "lr") -> tuple[np.ndarray, np.ndarray]:
        """An LR series, extended flat to the run's last step.

        LRs are sent only when they change, so without this the step line would stop at the
        last change instead of reaching "now".
        """
        x, y = self.series(run, name)
        if len(x) and run.last_step > x[-1]:
            return np.append(x, run.last_step), np.append(y, y[-1])
        return x, y

    def _evict(self) -> None:
        total = sum(b.n for b in self._series.values())
        while total > self.max_points and len(self._series) > 1:
            key, buf = self._series.popitem(last=False)
            total -= buf.n
            self._seen_seq.pop(key, None)
            self._smooth.pop(key, None)

    def cached_points(self) -> int:
        """Points held in memory (for tests and the bench)."""
        with self._lock:
            return sum(b.n for b in self._series.values())


# ------------------------------------------------------------------- panels


@dataclass(frozen=True)
class PanelSpec:
    """One chart on the page.

    ``kind`` is ``loss`` (raw + smoothed, markers), ``lr`` (step lines per param group),
    ``lines`` (one series, runs overlaid) or ``heatmap`` (per-layer series of the first
    selected run: ``series`` is their common prefix, e.g. ``grad_norm/``).
    """

    key: str
    title: str
    kind: str
    series: str
    log_y: bool = False
    y_title: str = ""


_FIXED: tuple[PanelSpec, ...] = (
    PanelSpec("loss", "Loss", "loss", "loss", y_title="loss"),
    PanelSpec("lr", "Learning rate", "lr", "lr", log_y=True, y_title="LR"),
    PanelSpec("grad_norm", "Gradient norm (global)", "lines", "grad_norm", log_y=True),
    PanelSpec("layers:grad_norm", "Gradient norm per layer", "heatmap", "grad_norm/"),
    PanelSpec("layers:update_ratio", "Update / weight ratio per layer", "heatmap",
              "update_ratio/"),
    PanelSpec("layers:param_norm", "Parameter norm per layer", "heatmap", "param_norm/"),
    PanelSpec("cos_grad_update", "cos(gradient, update)", "lines", "cos_grad_update"),
    PanelSpec("samples_per_s", "Throughput (samples/s)", "lines", "samples_per_s"),
    PanelSpec("step_time", "Step time (s)", "lines", "step_time"),
)  # fmt: skip
_KNOWN_PREFIXES = ("lr/", "grad_norm/", "param_norm/", "update_ratio/")


def plan_panels(names: Sequence[str]) -> list[PanelSpec]:
    """The charts to show for the union of the selected runs' series names.

    Fixed panels come first in a sensible reading order (loss, LR, gradients, throughput),
    then one panel per other scalar the runs send (``acc``, ``val_loss``...), sorted.
    """
    have = set(names)
    out = []
    for p in _FIXED:
        present = (
            any(n.startswith(p.series) for n in have) if p.kind == "heatmap" else p.series in have
        )
        if present:
            out.append(p)
    fixed = {p.series for p in _FIXED}
    for n in sorted(have):
        if n in fixed or n.startswith(_KNOWN_PREFIXES):
            continue
        out.append(PanelSpec(f"scalar:{n}", n, "lines", n))
    return out


def panel_spec(key: str) -> PanelSpec:
    """The spec of a panel from its key (the key is what the page's component ids carry).

    Raises:
        KeyError: a key no panel has.
    """
    for p in _FIXED:
        if p.key == key:
            return p
    if key.startswith("scalar:") and len(key) > len("scalar:"):
        name = key[len("scalar:") :]
        return PanelSpec(key, name, "lines", name)
    raise KeyError(f"no chart panel {key!r}")
