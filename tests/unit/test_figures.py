"""Figure builders: pure functions of arrays and records, checked without a browser."""

from __future__ import annotations

import numpy as np
from lrpilot.dashboard.figures import (
    MARKER_KINDS,
    Line,
    Marker,
    empty_figure,
    event_markers,
    heatmap_figure,
    line_figure,
    marker_arrays,
    xy_lists,
)
from lrpilot.monitor.store import CommandRecord, EventRecord


def _cmd(**kw: object) -> CommandRecord:
    base = dict(id=1, run_id="r", action="set", value=1e-3, source="manual", who="alice",
                reason="", created=0.0, sent=1.0, status="applied", applied_step=40,
                applied_time=2.0, lrs_before=[1e-2], lrs_after=[1e-3], error="")  # fmt: skip
    base.update(kw)
    return CommandRecord(**base)  # type: ignore[arg-type]


def test_line_figure_keeps_trace_order_and_adds_fixed_marker_traces() -> None:
    lines = [
        Line("a|loss|raw", "a", np.arange(4), np.array([4.0, 3, 2, 1]), "#111", "raw", "a"),
        Line("a|loss|smooth", "a", np.arange(4), np.array([4.0, 3.5, 3, 2.5]), "#111", "smooth"),
    ]
    fig = line_figure("Loss", lines, markers=[Marker(2, 3.0, "manual", "set LR")])
    assert [t.meta for t in fig.data] == ["a|loss|raw", "a|loss|smooth"] + [
        f"markers|{k}" for k in MARKER_KINDS
    ]
    assert list(fig.data[1].y) == [4.0, 3.5, 3.0, 2.5]
    assert fig.data[0].opacity < 1 and fig.data[0].showlegend is False
    manual = fig.data[2 + MARKER_KINDS.index("manual")]
    assert list(manual.x) == [2] and list(manual.text) == ["set LR"] and manual.showlegend
    assert fig.data[2].showlegend is False, "empty marker kinds stay out of the legend"


def test_log_axis_and_step_lines() -> None:
    fig = line_figure("LR", [Line("a|lr|step", "a", np.array([0, 10]), np.array([1e-3, 5e-4]),
                                  "#111", "step")], log_y=True)  # fmt: skip
    assert fig.layout.yaxis.type == "log"
    assert fig.data[0].line.shape == "hv"
    assert fig.layout.uirevision == "keep", "zoom must survive live updates"


def test_no_lines_gives_a_message_not_an_empty_axis() -> None:
    fig = line_figure("Loss", [])
    assert not fig.data and "no data yet" in fig.layout.annotations[0].text
    assert empty_figure("select a run").layout.annotations[0].text == "select a run"


def test_values_are_rounded_and_nan_becomes_null() -> None:
    x, y = xy_lists(np.array([1, 2, 3, 4], dtype=np.int64),
                    np.array([0.123456789, 1234567.89, np.nan, -2.5e-9]))  # fmt: skip
    assert x == [1, 2, 3, 4] and all(type(v) is int for v in x)
    assert y == [0.123457, 1234570.0, None, -2.5e-09]


def test_event_markers_sit_on_the_curve_and_say_why() -> None:
    ev = EventRecord(1, "r", 10, 0.0, "plateau", "loss <stuck> for 200 steps", {})
    cmds = [_cmd(), _cmd(id=2, status="sent", applied_step=None), _cmd(id=3, source="auto",
            action="scale", value=0.5, applied_step=20, lrs_after=[5e-4])]  # fmt: skip
    x, y = np.array([0, 20, 40]), np.array([2.0, 1.0, 0.5])
    ms = event_markers("run<1>", [ev], cmds, x, y)
    assert [(m.kind, m.step) for m in ms] == [("detection", 10), ("manual", 40), ("auto", 20)]
    assert ms[0].y == 1.5 and ms[1].y == 0.5  # interpolated on the curve
    assert "&lt;stuck&gt;" in ms[0].text and "run&lt;1&gt;" in ms[0].text, "user text escaped"
    assert "by alice" in ms[1].text and "applied at step 40" in ms[1].text
    on_lr = event_markers("r", [ev], cmds, x, y, lr_axis=True)
    assert [(m.kind, m.y) for m in on_lr] == [("manual", 1e-3), ("auto", 5e-4)]
    assert marker_arrays(ms, "auto") == {"x": [20], "y": [ms[2].y], "text": [ms[2].text]}


def test_heatmap_is_log_coloured_with_blank_cells() -> None:
    z = np.array([[1.0, 10.0], [np.nan, 0.01]])
    fig = heatmap_figure("grad norm per layer", ["a", "b"], np.array([5.0, 15.0]), z)
    assert fig.data[0].type == "heatmap"
    assert [list(r) for r in fig.data[0].z] == [[0.0, 1.0], [None, -2.0]]
    assert list(fig.data[0].y) == ["a", "b"]
    assert not heatmap_figure("t", [], np.empty(0), np.empty((0, 0))).data
