"""Chart panels: which traces a panel has, its full figure, its zoom and its live updates.

Each panel on the page is a ``dcc.Graph`` plus a small ``dcc.Store`` — its *cursor* — that
records what the browser holds: the trace keys in trace order, the last step sent per trace,
how many points each trace has, and the zoomed x range if any. With it a live tick sends only
what is new (``Patch`` ``extend``), and a trace that grew past its bound is re-downsampled
for the current view instead of growing without end. The browser holds the cursor, not the
server, so several people can watch the same dashboard.

This module joins the data layer to the pure figure functions; the callbacks call it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from dash import Patch
from plotly import graph_objects as go

from ..monitor.store import RunRecord
from .data import DataSource, PanelSpec
from .downsample import DEFAULT_POINTS, EXTRA_POINTS, bin_matrix, window
from .figures import (
    MARKER_KINDS,
    Line,
    Marker,
    event_markers,
    heatmap_figure,
    line_figure,
    marker_arrays,
    run_color,
    xy_lists,
)

__all__ = [
    "HEATMAP_BINS",
    "MAX_PANEL_POINTS",
    "Options",
    "build",
    "points_per_line",
    "tick",
    "zoom",
]

#: Points budget of one panel: more runs overlaid means fewer points per trace.
MAX_PANEL_POINTS = 8000
#: Columns of a per-layer heatmap.
HEATMAP_BINS = 300
_GROUP_DASH = ("solid", "dash", "dot", "dashdot", "longdash")


@dataclass(frozen=True)
class Options:
    """Page-wide chart options: loss smoothing weight and loss axis type."""

    smoothing: float = 0.9
    loss_log: bool = False


def points_per_line(n_lines: int) -> int:
    """Downsampling target per trace: the panel budget shared out, within [500, 2000]."""
    return int(min(DEFAULT_POINTS, max(500, MAX_PANEL_POINTS // max(n_lines, 1))))


# ------------------------------------------------------------------- traces of a panel


@dataclass(frozen=True)
class _TraceRef:
    run: RunRecord
    series: str
    role: str
    label: str
    color: str
    dash: str = "solid"

    @property
    def key(self) -> str:
        return f"{self.run.id}|{self.series}|{self.role}"


def _refs(data: DataSource, spec: PanelSpec, runs: Sequence[RunRecord]) -> list[_TraceRef]:
    """The traces of a line panel, in trace order."""
    refs: list[_TraceRef] = []
    for i, run in enumerate(runs):
        names = data.series_names(run)
        color = run_color(i)
        if spec.kind == "loss":
            if "loss" in names:
                refs.append(_TraceRef(run, "loss", "raw", run.name, color))
                refs.append(_TraceRef(run, "loss", "smooth", run.name, color))
        elif spec.kind == "lr":
            groups = sorted(
                (n for n in names if n == "lr" or (n.startswith("lr/") and n[3:].isdigit())),
                key=lambda n: 0 if n == "lr" else int(n[3:]),
            )
            for g, name in enumerate(groups):
                label = run.name if len(groups) == 1 else f"{run.name} · group {g}"
                refs.append(_TraceRef(run, name, "step", label, color, _GROUP_DASH[g % 5]))
        elif spec.series in names:
            refs.append(_TraceRef(run, spec.series, "line", run.name, color))
    return refs


def _full(data: DataSource, ref: _TraceRef, opts: Options) -> tuple[np.ndarray, np.ndarray]:
    """A trace's full-resolution points."""
    if ref.role == "smooth":
        return data.smoothed(ref.run, ref.series, opts.smoothing)
    if ref.role == "step":
        return data.lr_series(ref.run, ref.series)
    return data.series(ref.run, ref.series)


def _markers(
    data: DataSource, spec: PanelSpec, runs: Sequence[RunRecord], opts: Options
) -> list[Marker]:
    if spec.kind not in ("loss", "lr"):
        return []
    out: list[Marker] = []
    for run in runs:
        commands = data.commands(run.id)
        if spec.kind == "lr":
            out += event_markers(run.name, (), commands, np.empty(0), np.empty(0), lr_axis=True)
        else:
            x, y = data.smoothed(run, "loss", opts.smoothing)
            out += event_markers(run.name, data.events(run.id), commands, x, y)
    return out


def _marker_digest(markers: Sequence[Marker]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for m in markers:
        h.update(f"{m.kind}|{m.step}|{m.y}|{m.text}".encode())
    return h.hexdigest()


def _heat_rows(
    data: DataSource, spec: PanelSpec, run: RunRecord, x_range: Sequence[float] | None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    names = [n for n in data.series_names(run) if n.startswith(spec.series)]
    series = [data.series(run, n) for n in names]
    lo = min((s[0][0] for s in series if len(s[0])), default=0)
    hi = max((s[0][-1] for s in series if len(s[0])), default=0)
    if x_range is not None:
        lo, hi = max(lo, x_range[0]), min(hi, x_range[1])
    rows = [s[0] for s in series]
    vals = [s[1] for s in series]
    centers, z = bin_matrix(np.array([lo, hi]), rows, vals, HEATMAP_BINS)
    return [n[len(spec.series) :] for n in names], centers, z


# ------------------------------------------------------------------- full build


def build(
    data: DataSource, spec: PanelSpec, runs: Sequence[RunRecord], opts: Options
) -> tuple[go.Figure, dict[str, Any]]:
    """The full figure of a panel and its cursor (first load, selection or option change)."""
    cursor: dict[str, Any] = {"panel": spec.key, "runs": [r.id for r in runs], "range": None}
    if spec.kind == "heatmap":
        run = runs[0]
        layers, centers, z = _heat_rows(data, spec, run, None)
        title = spec.title if len(runs) == 1 else f"{spec.title} — {run.name}"
        cursor["seq"] = run.last_seq
        return heatmap_figure(title, layers, centers, z), cursor
    refs = _refs(data, spec, runs)
    n_out = points_per_line(len(refs))
    lines: list[Line] = []
    for ref in refs:
        x, y = window(*_full(data, ref, opts), None, None, n_out)
        lines.append(Line(ref.key, ref.label, x, y, ref.color, ref.role, ref.run.id, ref.dash))
    markers = _markers(data, spec, runs, opts)
    log_y = opts.loss_log if spec.kind == "loss" else spec.log_y
    fig = line_figure(spec.title, lines, log_y=log_y, y_title=spec.y_title, markers=markers)
    cursor.update(
        keys=[ln.key for ln in lines],
        last=[int(ln.x[-1]) if len(ln.x) else -1 for ln in lines],
        count=[len(ln.x) for ln in lines],
        n_out=n_out,
        markers=_marker_digest(markers),
    )
    return fig, cursor


# ------------------------------------------------------------------- zoom


def zoom(
    data: DataSource,
    spec: PanelSpec,
    runs: Sequence[RunRecord],
    opts: Options,
    cursor: dict[str, Any],
    x_range: Sequence[float] | None,
) -> tuple[Patch, dict[str, Any]]:
    """Re-downsample every trace for a new x range (``None``: the full view again).

    Only the traces' data are replaced; the layout (and so the user's zoom) is left alone.
    """
    patch = Patch()
    cursor = dict(cursor, range=None if x_range is None else [float(v) for v in x_range])
    if spec.kind == "heatmap":
        layers, centers, z = _heat_rows(data, spec, runs[0], x_range)
        fig = heatmap_figure("", layers, centers, z)
        if fig.data:
            patch["data"][0]["x"] = fig.data[0].x
            patch["data"][0]["z"] = fig.data[0].z
            patch["data"][0]["y"] = fig.data[0].y
        return patch, cursor
    refs = {r.key: r for r in _refs(data, spec, runs)}
    last, count = list(cursor["last"]), list(cursor["count"])
    lo, hi = (None, None) if x_range is None else (x_range[0], x_range[1])
    for i, key in enumerate(cursor["keys"]):
        ref = refs.get(key)
        if ref is None:
            continue
        fx, fy = _full(data, ref, opts)
        x, y = window(fx, fy, lo, hi, cursor["n_out"])
        xl, yl = xy_lists(x, y)
        patch["data"][i]["x"] = xl
        patch["data"][i]["y"] = yl
        # Points after the window were not sent: a live tick only extends the full view.
        last[i] = int(fx[-1]) if len(fx) else -1
        count[i] = len(xl)
    cursor.update(last=last, count=count)
    return patch, cursor


# ------------------------------------------------------------------- live tick


def tick(
    data: DataSource,
    spec: PanelSpec,
    runs: Sequence[RunRecord],
    opts: Options,
    cursor: dict[str, Any],
) -> tuple[Patch | None, dict[str, Any]]:
    """What changed since the cursor: a Patch appending new points, or None if nothing did.

    A zoomed panel is not extended (the new points are outside the view); zooming back out
    re-downsamples it. A trace whose point count would pass ``2 * n_out + EXTRA_POINTS`` is
    re-downsampled and replaced instead of extended.
    """
    patch = Patch()
    changed = False
    cursor = dict(cursor)
    if spec.kind == "heatmap":
        run = runs[0]
        if run.last_seq != cursor.get("seq") and cursor.get("range") is None:
            layers, centers, z = _heat_rows(data, spec, run, None)
            fig = heatmap_figure("", layers, centers, z)
            if fig.data:
                patch["data"][0]["x"] = fig.data[0].x
                patch["data"][0]["y"] = fig.data[0].y
                patch["data"][0]["z"] = fig.data[0].z
                changed = True
            cursor["seq"] = run.last_seq
        return (patch if changed else None), cursor

    refs = {r.key: r for r in _refs(data, spec, runs)}
    last, count = list(cursor["last"]), list(cursor["count"])
    n_out = cursor["n_out"]
    if cursor.get("range") is None:
        for i, key in enumerate(cursor["keys"]):
            ref = refs.get(key)
            if ref is None:
                continue
            fx, fy = _full(data, ref, opts)
            if not len(fx) or int(fx[-1]) <= last[i]:
                continue
            if ref.role == "step":
                # LR lines are tiny and their flat tail moves with the run: replace them.
                x, y = window(fx, fy, None, None, n_out)
                patch["data"][i]["x"], patch["data"][i]["y"] = xy_lists(x, y)
                count[i] = len(x)
            else:
                start = int(np.searchsorted(fx, last[i], side="right"))
                if count[i] + len(fx) - start > 2 * n_out + EXTRA_POINTS:
                    x, y = window(fx, fy, None, None, n_out)
                    patch["data"][i]["x"], patch["data"][i]["y"] = xy_lists(x, y)
                    count[i] = len(x)
                else:
                    xl, yl = xy_lists(fx[start:], fy[start:])
                    patch["data"][i]["x"].extend(xl)
                    patch["data"][i]["y"].extend(yl)
                    count[i] += len(xl)
            last[i] = int(fx[-1])
            changed = True
    markers = _markers(data, spec, runs, opts)
    digest = _marker_digest(markers)
    if digest != cursor.get("markers"):
        base = len(cursor["keys"])
        for k, kind in enumerate(MARKER_KINDS):
            arrays = marker_arrays(markers, kind)
            for field, values in arrays.items():
                patch["data"][base + k][field] = values
            patch["data"][base + k]["showlegend"] = bool(arrays["x"])
        cursor["markers"] = digest
        changed = True
    cursor.update(last=last, count=count)
    return (patch if changed else None), cursor
