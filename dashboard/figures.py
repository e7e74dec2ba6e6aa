"""Figures as pure functions: arrays and records in, ``go.Figure`` out.

Nothing here queries the store, reads the clock or knows about Dash callbacks, so every chart
can be tested without a browser or a database. The trace order of a figure is part of its
contract: trace ``i`` draws ``lines[i]``, and marker traces follow the lines in the order of
:data:`MARKER_KINDS`. The live-update callbacks rely on it to append points with a
``dash.Patch`` instead of resending whole figures.

Data is sent as plain JSON lists, not plotly's base64 typed arrays, because a ``Patch`` can
``extend`` a list in the browser but not a typed array; values are rounded to 6 significant
digits (finer than a chart can show) to keep the payload small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from ..monitor.store import CommandRecord, EventRecord

__all__ = [
    "MARKER_KINDS",
    "PALETTE",
    "Line",
    "Marker",
    "empty_figure",
    "event_markers",
    "heatmap_figure",
    "line_figure",
    "marker_arrays",
    "run_color",
    "xy_lists",
]

#: Run colours (Okabe-Ito based, readable on white and for colour-blind readers).
PALETTE = (
    "#2563eb", "#e69f00", "#009e73", "#cc79a7", "#d55e00",
    "#56b4e9", "#7c3aed", "#0f766e", "#b45309", "#be123c",
)  # fmt: skip
#: Marker traces, in trace order after the lines: detections, manual and automatic LR changes.
MARKER_KINDS = ("detection", "manual", "auto")
_MARKER_STYLE = {
    "detection": {"symbol": "triangle-down", "color": "#f59e0b", "name": "detection"},
    "manual": {"symbol": "diamond", "color": "#dc2626", "name": "LR change (manual)"},
    "auto": {"symbol": "diamond", "color": "#7c3aed", "name": "LR change (auto)"},
}
_FONT = "Inter, system-ui, -apple-system, Segoe UI, Roboto, sans-serif"
_GRID = "#eef0f4"


def run_color(index: int) -> str:
    """The colour of the ``index``-th selected run (stable while the selection is)."""
    return PALETTE[index % len(PALETTE)]


@dataclass(frozen=True)
class Line:
    """One trace of a line chart.

    Attributes:
        key: a stable identity, e.g. ``"<run_id>|loss|raw"``; callbacks match traces by it.
        label: legend text.
        x: steps. y: values (NaN draws a gap).
        color: CSS colour.
        role: ``"raw"`` (thin, translucent; raw loss under its smoothed line), ``"line"``,
            ``"smooth"`` (bold) or ``"step"`` (a step function, for the LR).
        group: legend group (the run), so one click hides a run's traces together.
    """

    key: str
    label: str
    x: np.ndarray
    y: np.ndarray
    color: str
    role: str = "line"
    group: str = ""
    dash: str = "solid"


@dataclass(frozen=True)
class Marker:
    """A point event drawn on a chart: a detection or an LR change.

    ``kind`` is one of :data:`MARKER_KINDS`; ``y`` where on the chart's y axis to draw it;
    ``text`` the hover text (the reason, who, and the command's state).
    """

    step: int
    y: float
    kind: str
    text: str


def xy_lists(x: np.ndarray, y: np.ndarray) -> tuple[list, list]:
    """Steps and values as JSON-ready lists: ints, values at 6 significant digits, NaN -> None.

    Rounding is done so that each number's shortest repr is short (``0.123457``, not
    ``0.12345679104328156``): it roughly halves the payload and no chart shows more digits.
    """
    xs = np.asarray(x)
    xl = xs.astype(np.int64).tolist() if xs.dtype.kind in "iu" else xs.tolist()
    return xl, _round6(np.asarray(y, dtype=np.float64))


def _round6(y: np.ndarray) -> list:
    out = np.full(y.shape, np.nan)
    ok = np.isfinite(y) & (y != 0)
    v = y[ok]
    e = 5 - np.floor(np.log10(np.abs(v))).astype(np.int64)
    pos = e >= 0
    r = np.empty_like(v)
    # Divide by an exact power of ten (not multiply by its inexact inverse) so that the
    # result is the double nearest the rounded decimal.
    r[pos] = np.round(v[pos] * 10.0 ** e[pos]) / 10.0 ** e[pos]
    r[~pos] = np.round(v[~pos] / 10.0 ** (-e[~pos])) * 10.0 ** (-e[~pos])
    out[ok] = r
    out[y == 0] = 0.0
    return [None if math.isnan(f) else f for f in out.tolist()]


def _layout(title: str, *, log_y: bool, y_title: str = "", height: int = 300) -> dict:
    return {
        "title": {"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 14}},
        "height": height,
        "margin": {"l": 56, "r": 16, "t": 40, "b": 36},
        "font": {"family": _FONT, "size": 12, "color": "#1f2937"},
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "hovermode": "x unified",
        "hoverlabel": {"font": {"family": _FONT}},
        "showlegend": True,
        "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right",
                   "font": {"size": 11}},
        "xaxis": {"title": {"text": "step"}, "gridcolor": _GRID, "zeroline": False,
                  "showspikes": True, "spikethickness": 1, "spikecolor": "#9ca3af"},
        "yaxis": {"title": {"text": y_title}, "gridcolor": _GRID, "zeroline": False,
                  "type": "log" if log_y else "linear",
                  # Plain numbers on log axes: plotly's default labels minor digits 2..9.
                  **({"tickformat": ".2~g", "dtick": "D2"} if log_y else {})},
        # Keep the user's zoom and legend clicks across live updates.
        "uirevision": "keep",
        "template": "none",
    }  # fmt: skip


def empty_figure(message: str, title: str = "", height: int = 300) -> go.Figure:
    """A blank chart with a centred message (no run selected, no data yet)."""
    fig = go.Figure(layout=_layout(title, log_y=False, height=height))
    fig.update_layout(
        xaxis={"visible": False},
        yaxis={"visible": False},
        annotations=[{"text": message, "showarrow": False, "font": {"size": 13,
                      "color": "#6b7280"}, "xref": "paper", "yref": "paper", "x": 0.5,
                      "y": 0.5}],
    )  # fmt: skip
    return fig


def line_figure(
    title: str,
    lines: Sequence[Line],
    *,
    log_y: bool = False,
    y_title: str = "",
    markers: Sequence[Marker] = (),
    height: int = 300,
) -> go.Figure:
    """A line chart of several traces (runs overlaid) with detection / LR-change markers.

    Args:
        title: chart title.
        lines: the traces, drawn in this order (trace ``i`` is ``lines[i]``).
        log_y: logarithmic y axis (LR, gradient norms); non-positive values are not drawn.
        y_title: y axis title.
        markers: events to mark; always drawn as the ``len(MARKER_KINDS)`` traces after
            the lines (empty ones included), so their indices are fixed.
        height: pixels.

    Returns:
        The figure; an :func:`empty_figure` when there are no lines.

    Example:
        >>> line_figure("loss", [Line("r|loss|raw", "r", np.arange(3), np.ones(3), "#000")])
    """
    if not lines:
        return empty_figure("no data yet", title, height)
    traces: list[go.Scatter] = []
    for line in lines:
        x, y = xy_lists(line.x, line.y)
        style: dict = {"color": line.color, "width": 1.6, "dash": line.dash}
        extra: dict = {}
        if line.role == "raw":
            style["width"] = 1
            extra = {"opacity": 0.3, "showlegend": False, "hoverinfo": "skip"}
        elif line.role == "smooth":
            style["width"] = 2
        elif line.role == "step":
            style["shape"] = "hv"
        traces.append(
            go.Scatter(
                x=x, y=y, name=line.label, mode="lines", line=style, legendgroup=line.group,
                connectgaps=False, meta=line.key,
                hovertemplate="%{y:.4g}<extra>%{fullData.name}</extra>", **extra,
            )
        )  # fmt: skip
    traces.extend(_marker_traces(markers))
    return go.Figure(traces, _layout(title, log_y=log_y, y_title=y_title, height=height))


def marker_arrays(markers: Sequence[Marker], kind: str) -> dict[str, list]:
    """The ``x``, ``y`` and ``text`` of the marker trace for ``kind`` (for a Patch)."""
    chosen = [m for m in markers if m.kind == kind]
    return {
        "x": [m.step for m in chosen],
        "y": [None if not math.isfinite(m.y) else m.y for m in chosen],
        "text": [m.text for m in chosen],
    }


def event_markers(
    run_name: str,
    events: Sequence[EventRecord],
    commands: Sequence[CommandRecord],
    x: np.ndarray,
    y: np.ndarray,
    *,
    lr_axis: bool = False,
) -> list[Marker]:
    """Markers for a run's detections and applied LR changes.

    Args:
        run_name: shown in the hover text (several runs may be overlaid).
        events: detections and decisions; drawn at their step.
        commands: LR commands; only applied ones have a step and are drawn.
        x, y: the curve the markers sit on (the smoothed loss), used to place them at
            their step's height; ignored when ``lr_axis``.
        lr_axis: place LR changes at the new LR (the LR chart) and leave out detections.
    """
    out: list[Marker] = []
    run_name = _esc(run_name)
    if not lr_axis:
        for e in events:
            text = f"<b>{_esc(e.kind)}</b> · {run_name} · step {e.step}<br>{_wrap(e.reason)}"
            out.append(Marker(e.step, _height(x, y, e.step), "detection", text))
    for c in commands:
        if c.status != "applied" or c.applied_step is None:
            continue
        what = f"set LR {c.value:.3g}" if c.action == "set" else f"scale LR x{c.value:g}"
        after = f" -> {c.lrs_after[0]:.3g}" if c.lrs_after else ""
        who = f" by {_esc(c.who)}" if c.who else ""
        why = f"<br>{_wrap(c.reason)}" if c.reason else ""
        text = (
            f"<b>{what}</b>{after} · {c.source}{who} · {run_name}"
            f"<br>applied at step {c.applied_step}{why}"
        )
        kind = "auto" if c.source == "auto" else "manual"
        if lr_axis:
            height = c.lrs_after[0] if c.lrs_after else math.nan
        else:
            height = _height(x, y, c.applied_step)
        out.append(Marker(c.applied_step, height, kind, text))
    return out


def _height(x: np.ndarray, y: np.ndarray, step: int) -> float:
    """The curve's value at ``step`` (interpolated), or NaN without a curve."""
    if not len(x):
        return math.nan
    return float(np.interp(step, x, y))


def _esc(text: str) -> str:
    """User text in hover labels: keep plotly from reading it as its markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _wrap(text: str, width: int = 80) -> str:
    """Escape a reason and break it into hover lines (plotly does not wrap)."""
    words, lines, cur = _esc(text).split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    lines.append(cur)
    return "<br>".join(lines)


def _marker_traces(markers: Sequence[Marker]) -> list[go.Scatter]:
    out = []
    for kind in MARKER_KINDS:
        style = _MARKER_STYLE[kind]
        arrays = marker_arrays(markers, kind)
        out.append(
            go.Scatter(
                **arrays, mode="markers", name=style["name"], meta=f"markers|{kind}",
                marker={"symbol": style["symbol"], "size": 11, "color": style["color"],
                        "line": {"width": 1, "color": "#ffffff"}},
                hovertemplate="%{text}<extra></extra>", showlegend=bool(arrays["x"]),
            )
        )  # fmt: skip
    return out


def heatmap_figure(
    title: str,
    layers: Sequence[str],
    x: np.ndarray,
    z: np.ndarray,
    *,
    log_z: bool = True,
    height: int | None = None,
) -> go.Figure:
    """A layers x steps heatmap (per-layer gradient norms, update ratios...).

    Args:
        title: chart title (say which run it shows: a heatmap cannot overlay runs).
        layers: row labels, top to bottom.
        x: column centre steps.
        z: ``(len(layers), len(x))`` values; NaN cells are blank.
        log_z: colour by log10 of the value (norms span decades).
        height: pixels; by default it grows with the number of layers.
    """
    if not len(layers) or not len(x):
        return empty_figure("no per-layer statistics yet", title, height or 300)
    zz = np.asarray(z, dtype=np.float64)
    if log_z:
        with np.errstate(divide="ignore", invalid="ignore"):
            zz = np.where(zz > 0, np.log10(zz), np.nan)
    rows = [_round6(r) for r in zz]
    h = height or int(min(120 + 14 * len(layers), 640))
    fig = go.Figure(
        go.Heatmap(
            x=xy_lists(x, x)[1], y=list(layers), z=rows, colorscale="Viridis", hoverongaps=False,
            colorbar={"title": {"text": "log10" if log_z else ""}, "thickness": 12},
            hovertemplate="%{y}<br>step %{x:.0f}<br>%{z:.3g}<extra></extra>",
        ),
        _layout(title, log_y=False, height=h),
    )  # fmt: skip
    fig.update_layout(
        showlegend=False, hovermode="closest", margin={"l": 160}, yaxis={"autorange": "reversed",
        "type": "category", "tickfont": {"size": 10}}
    )  # fmt: skip
    return fig
