"""Callbacks, registered on an explicit app by :func:`register`; each one is a few lines.

A callback guards with ``no_update``, reads through :class:`~.data.DataSource`, and hands the
records to a layout or figure function (via :mod:`.panels` for charts). Live chart updates are
``dash.Patch`` objects that append points; whole figures are sent only when the selection or
the chart options change. No callback catches broad exceptions: a failing read should show up
as an error, not as a chart that quietly stops moving.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import flask
from dash import ALL, MATCH, Dash, Input, Output, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from . import ids, inputs, layout, panels
from .actions import ActionResult, Controller, perform
from .data import DataSource, PanelSpec, panel_spec, plan_panels
from .security import Guard

__all__ = ["register"]

_GRAPH_CONFIG = {
    "displaylogo": False,
    "responsive": True,
    "modeBarButtonsToRemove": ["lasso2d", "select2d"],
}


def _options(smoothing: Any, loss_axis: Any) -> panels.Options:
    return panels.Options(
        smoothing=inputs.smoothing(smoothing),
        loss_log=inputs.choice(loss_axis, ("linear", "log"), "linear") == "log",
    )


def _signature(data: DataSource, run_ids: list[str]) -> tuple[str, list]:
    """Which panels and traces the selection needs, and a digest of it.

    When the digest changes (a run reported a new series, an LR group appeared) the charts are
    rebuilt; otherwise live ticks only append.
    """
    runs = data.runs_by_id(run_ids)
    names = sorted({n for r in runs for n in data.series_names(r)})
    specs = plan_panels(names)
    desc = [r.id for r in runs] + [s.key for s in specs]
    desc += [n for n in names if n == "lr" or n.startswith("lr/")]
    return hashlib.blake2b("\n".join(desc).encode(), digest_size=8).hexdigest(), specs


def _panel(key: str) -> PanelSpec | None:
    """The panel a cursor names, or None for a key no panel has (a forged cursor)."""
    try:
        return panel_spec(key)
    except KeyError:
        return None


def register(
    app: Dash, data: DataSource, controller: Controller | None, guard: Guard, readonly: bool
) -> None:
    """Register every callback of the page on ``app``."""

    @app.callback(
        Output(ids.RUN_LIST, "options"),
        Output(ids.RUN_LIST, "value"),
        Output(ids.RUN_COUNTS, "children"),
        Output(ids.EMPTY, "className"),
        Output("layout", "className"),
        Input(ids.TICK, "n_intervals"),
        Input(ids.RUN_FILTER, "value"),
        Input(ids.RUN_STATUS_FILTER, "value"),
        State(ids.RUN_LIST, "value"),
        State(ids.RUN_LIST, "options"),
    )
    def refresh_runs(_n, text, statuses, selected, shown):
        now = time.time()
        runs = data.runs()
        wanted = inputs.choices(statuses, layout.STATUSES)
        needle = inputs.text(text).strip().lower()
        visible = [r for r in runs if r.status in wanted and needle in r.name.lower()]
        counts = {s: sum(r.status == s for r in runs) for s in layout.STATUSES}
        summary = " · ".join(f"{counts[s]} {s}" for s in layout.STATUSES if counts[s])
        value = no_update
        if not inputs.run_ids(selected) and not shown and runs:
            # First runs to appear: show the newest live one (or the newest) at once.
            live = [r for r in runs if r.status == "live"]
            value = [(live or runs)[0].id]
        has = bool(runs)
        return (
            layout.run_options(visible[:200], now),
            value,
            summary,
            "hidden" if has else "empty card",
            "layout" if has else "hidden",
        )

    @app.callback(
        Output(ids.CHARTS, "children"),
        Output(ids.SIGNATURE, "data"),
        Input(ids.RUN_LIST, "value"),
        Input(ids.SMOOTHING, "value"),
        Input(ids.LOSS_LOG, "value"),
        Input(ids.REBUILD, "data"),
    )
    def build_charts(selected, smoothing, loss_axis, _rebuild):
        selected = inputs.run_ids(selected)
        if not selected:
            return html.Div(
                "Select one or more runs on the left to see their charts.",
                className="placeholder card",
            ), None
        runs = data.runs_by_id(selected)
        digest, specs = _signature(data, selected)
        opts = _options(smoothing, loss_axis)
        children = []
        for spec in specs:
            fig, cursor = panels.build(data, spec, runs, opts)
            wide = " wide" if spec.kind in ("loss", "heatmap") else ""
            children.append(
                html.Div(
                    [
                        dcc.Graph(id=ids.chart_id(spec.key), figure=fig, config=_GRAPH_CONFIG),
                        dcc.Store(id=ids.cursor_id(spec.key), data=cursor),
                    ],
                    className="panel card" + wide,
                )
            )
        if not specs:
            children = [
                html.Div(
                    "The selected runs have not reported any metric yet.",
                    className="placeholder card",
                )
            ]
        return children, digest

    @app.callback(
        Output(ids.chart_id(ALL), "figure"),  # type: ignore[arg-type]
        Output(ids.cursor_id(ALL), "data"),  # type: ignore[arg-type]
        Output(ids.REBUILD, "data"),
        Input(ids.TICK, "n_intervals"),
        State(ids.RUN_LIST, "value"),
        State(ids.SMOOTHING, "value"),
        State(ids.LOSS_LOG, "value"),
        State(ids.SIGNATURE, "data"),
        State(ids.cursor_id(ALL), "data"),  # type: ignore[arg-type]
        State(ids.REBUILD, "data"),
        prevent_initial_call=True,
    )
    def live_tick(_n, selected, smoothing, loss_axis, signature, cursors, rebuild):
        n = len(cursors)
        if any(len(out) != n for out in ctx.outputs_list[:2]):  # not what our page sends
            raise PreventUpdate
        selected = inputs.run_ids(selected)
        if not selected or not isinstance(signature, str):
            return [no_update] * n, [no_update] * n, no_update
        digest, _ = _signature(data, selected)
        if digest != signature:
            bump = rebuild + 1 if isinstance(rebuild, int) and 0 <= rebuild < 2**31 else 1
            return [no_update] * n, [no_update] * n, bump
        opts = _options(smoothing, loss_axis)
        figures: list = []
        new_cursors: list = []
        for raw in cursors:
            cursor = inputs.cursor(raw)
            runs = data.runs_by_id(cursor["runs"]) if cursor else []
            if not runs or ("keys" not in cursor and "seq" not in cursor):
                figures.append(no_update)
                new_cursors.append(no_update)
                continue
            spec = _panel(cursor["panel"])
            if spec is None:
                figures.append(no_update)
                new_cursors.append(no_update)
                continue
            patch, updated = panels.tick(data, spec, runs, opts, cursor)
            figures.append(no_update if patch is None else patch)
            new_cursors.append(no_update if patch is None else updated)
        return figures, new_cursors, no_update

    @app.callback(
        Output(ids.chart_id(MATCH), "figure", allow_duplicate=True),  # type: ignore[arg-type]
        Output(ids.cursor_id(MATCH), "data", allow_duplicate=True),  # type: ignore[arg-type]
        Input(ids.chart_id(MATCH), "relayoutData"),  # type: ignore[arg-type]
        State(ids.cursor_id(MATCH), "data"),  # type: ignore[arg-type]
        State(ids.SMOOTHING, "value"),
        State(ids.LOSS_LOG, "value"),
        prevent_initial_call=True,
    )
    def zoom(relayout, cursor, smoothing, loss_axis):
        cursor = inputs.cursor(cursor)
        if not cursor:
            return no_update, no_update
        changed, x_range = inputs.x_range(relayout)
        runs = data.runs_by_id(cursor["runs"])
        if not changed or not runs or (x_range is None and cursor.get("range") is None):
            return no_update, no_update
        spec = _panel(cursor["panel"])
        if spec is None or ("keys" not in cursor and spec.kind != "heatmap"):
            return no_update, no_update
        return panels.zoom(data, spec, runs, _options(smoothing, loss_axis), cursor, x_range)

    if readonly:
        return

    @app.callback(
        Output(ids.LR_RUN, "options"),
        Output(ids.LR_RUN, "value"),
        Output(ids.LR_GROUPS, "children"),
        Output(ids.CMD_TABLE, "children"),
        Input(ids.TICK, "n_intervals"),
        Input(ids.RUN_LIST, "value"),
        State(ids.LR_RUN, "value"),
    )
    def refresh_lr_panel(_n, selected, target):
        runs = data.runs_by_id(inputs.run_ids(selected))
        target = inputs.run_id(target)
        options = [{"label": f"{r.name} ({r.status})", "value": r.id} for r in runs]
        if target not in {r.id for r in runs}:
            live = [r for r in runs if r.status == "live"]
            target = (live or runs)[0].id if runs else None
        run = next((r for r in runs if r.id == target), None)
        if run is None:
            return options, None, html.Div("select a run to control its LR", className="muted"), []
        return options, target, layout.lr_groups(run), layout.command_rows(data.commands(run.id))

    buttons = ids.ACTION_BUTTONS

    @app.callback(
        Output(ids.LR_MESSAGE, "children"),
        Output(ids.LR_MESSAGE, "className"),
        *(Input(bid, "n_clicks") for bid in buttons.values()),
        Input(ids.LR_INPUT, "n_submit"),
        State(ids.LR_RUN, "value"),
        State(ids.LR_INPUT, "value"),
        State(ids.TOKEN, "value"),
        prevent_initial_call=True,
    )
    def lr_action(*args):
        run_id, lr_text, token = args[-3:]
        run_id = inputs.run_id(run_id)
        token = token if isinstance(token, str) else None
        lr_text = lr_text if isinstance(lr_text, (str, int, float)) else None
        trigger = ctx.triggered_id
        action = (
            "set"
            if trigger == ids.LR_INPUT
            else next((a for a, bid in buttons.items() if bid == trigger), None)
        )
        if action is None:
            return no_update, no_update
        if not guard.allows(token):
            result = ActionResult(
                False,
                "refused: this dashboard needs its token for changes "
                "(ask whoever started `lrpilot serve`)",
            )
        elif not run_id:
            result = ActionResult(False, "select a live run first")
        else:
            who = f"dashboard {flask.request.remote_addr or ''}".strip()
            result = perform(controller, action, run_id, lr_text, who)
        return result.message, "message " + ("ok" if result.ok else "error")
