"""The page's structure: header, run list, LR panel, chart area and the empty state.

Pure functions of records returning Dash components; no store access, no clock (the caller
passes ``now``), so they are testable like the figures.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from dash import dcc, html

from ..monitor.store import CommandRecord, RunRecord
from . import ids

__all__ = [
    "CLIENT_SNIPPET",
    "command_rows",
    "format_duration",
    "lr_groups",
    "page",
    "run_label",
    "run_options",
]

#: Shown in the empty state: the shortest way to get a run onto this page.
CLIENT_SNIPPET = """\
from lrpilot.client import Monitor

with Monitor(run="my-run", optimizer=optimizer, model=model) as mon:
    for batch in loader:
        loss = train_step(batch)        # your forward / backward / optimizer.step()
        mon.step(loss=loss)             # a tensor is fine: no .item(), no sync per step"""

STATUSES = ("live", "stale", "finished")
TICK_MS = 1000


def format_duration(seconds: float) -> str:
    """``42s``, ``3m 05s``, ``2h 14m``, ``3d 4h``: short and readable in a table."""
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _fmt(v: float | None, spec: str = ".4g") -> str:
    return "—" if v is None else format(v, spec)


def run_label(run: RunRecord, now: float) -> html.Div:
    """One row of the run list: name and badges, then step, loss, LR, age and duration."""
    end = (
        run.finished
        if run.finished is not None
        else (run.last_seen if run.status != "live" else now)
    )
    started = time.strftime("%b %d %H:%M", time.localtime(run.created))
    return html.Div(
        [
            html.Div(
                [
                    html.Span(run.name, className="run-name", title=f"id {run.id}"),
                    html.Span(run.status, className=f"badge status-{run.status}"),
                    html.Span(run.control, className=f"badge control-{run.control}"),
                ],
                className="run-line1",
            ),
            html.Div(
                [
                    html.Span(f"step {run.last_step:,}" if run.last_step >= 0 else "no steps"),
                    html.Span(f"loss {_fmt(run.last_loss)}"),
                    html.Span(f"LR {_fmt(run.lr, '.3g')}"),
                    html.Span(f"{started} · {format_duration(end - run.created)}"),
                ],
                className="run-line2",
            ),
        ],
        className="run-row",
    )


def run_options(runs: Sequence[RunRecord], now: float) -> list[dict]:
    """``dcc.Checklist`` options for the run list."""
    return [{"label": run_label(r, now), "value": r.id} for r in runs]


def lr_groups(run: RunRecord) -> list:
    """The LR panel's summary of a run: LR per param group and control mode."""
    if not run.lrs:
        groups: list = [html.Div("this run has no optimizer attached", className="muted")]
    else:
        groups = [
            html.Div(
                [html.Span(f"group {i}", className="muted"), html.Code(f"{lr:.4g}")],
                className="lr-group",
            )
            for i, lr in enumerate(run.lrs)
        ]
    return [
        html.Div(
            [
                html.Span(run.name, className="run-name"),
                html.Span(run.status, className=f"badge status-{run.status}"),
                html.Span(run.control, className=f"badge control-{run.control}"),
            ],
            className="run-line1",
        ),
        html.Div(groups, className="lr-groups"),
    ]


def command_rows(commands: Sequence[CommandRecord], limit: int = 6) -> html.Table | html.Div:
    """The newest commands of a run with their state: sent -> applied (at step N)."""
    if not commands:
        return html.Div("no LR commands yet", className="muted")
    rows = []
    for c in list(commands)[-limit:][::-1]:
        what = f"set {c.value:.3g}" if c.action == "set" else f"x{c.value:g}"
        if c.status == "applied":
            state = f"applied @ {c.applied_step:,}"
        elif c.status == "failed":
            state = f"failed: {c.error}" if c.error else "failed"
        else:
            state = c.status
        rows.append(
            html.Tr(
                [
                    html.Td(f"#{c.id}", className="muted"),
                    html.Td(what),
                    html.Td(c.source, className=f"src-{c.source}"),
                    html.Td(state, className=f"cmd-{c.status}"),
                ]
            )
        )
    return html.Table(html.Tbody(rows), className="cmd-table")


def _lr_panel(readonly: bool, token_required: bool) -> html.Div:
    btn = ids.ACTION_BUTTONS
    if readonly:
        body: list = [
            html.Div(
                "Read-only: this dashboard serves a database file. Start `lrpilot serve` to "
                "change LRs from here.",
                className="muted",
            )
        ]
    else:
        body = [
            dcc.Dropdown(id=ids.LR_RUN, placeholder="select a live run", clearable=False),
            html.Div(id=ids.LR_GROUPS, className="lr-summary"),
            html.Div(
                [
                    dcc.Input(
                        id=ids.LR_INPUT,
                        type="text",
                        placeholder="new LR, e.g. 3e-4",
                        debounce=False,
                        className="lr-input",
                        autoComplete="off",
                    ),
                    html.Button("Set", id=btn["set"], className="btn primary"),
                ],
                className="row",
            ),
            html.Div(
                [
                    html.Button("x0.5", id=btn["half"], className="btn"),
                    html.Button("x2", id=btn["double"], className="btn"),
                    html.Button("Pause auto", id=btn["pause"], className="btn"),
                    html.Button("Resume auto", id=btn["resume"], className="btn"),
                    html.Button("Approve advice", id=btn["approve"], className="btn"),
                ],
                className="row wrap",
            ),
            dcc.Input(
                id=ids.TOKEN,
                type="password",
                placeholder="dashboard token",
                className="token-input" + ("" if token_required else " hidden"),
                autoComplete="off",
            ),
            html.Div(id=ids.LR_MESSAGE, className="message", role="status"),
            html.H4("Commands"),
            html.Div(id=ids.CMD_TABLE),
        ]
    return html.Div([html.H3("Learning rate"), *body], id=ids.LR_PANEL, className="card")


def _empty_state() -> html.Div:
    return html.Div(
        [
            html.H2("No runs yet"),
            html.P(
                "Add five lines to your training loop and the run appears here live, with "
                "its loss, learning rate and gradient statistics:"
            ),
            html.Pre(html.Code(CLIENT_SNIPPET), className="snippet"),
            html.P(
                [
                    "The controller must be running: ",
                    html.Code("lrpilot serve"),
                    " (it serves this page too). Try it without your own model: ",
                    html.Code("lrpilot demo"),
                    ".",
                ]
            ),
        ],
        id=ids.EMPTY,
        className="empty card",
    )


def page(*, readonly: bool, token_required: bool) -> html.Div:
    """The whole page; its dynamic parts are filled in by the callbacks."""
    sidebar = html.Div(
        [
            html.Div(
                [
                    html.Div(
                        [html.H3("Runs"), html.Span(id=ids.RUN_COUNTS, className="muted")],
                        className="card-head",
                    ),
                    dcc.Input(
                        id=ids.RUN_FILTER,
                        type="search",
                        placeholder="filter by name",
                        className="filter",
                        debounce=False,
                    ),
                    dcc.Checklist(
                        id=ids.RUN_STATUS_FILTER,
                        options=list(STATUSES),
                        value=list(STATUSES),
                        inline=True,
                        className="status-filter",
                    ),
                    dcc.Checklist(id=ids.RUN_LIST, options=[], value=[], className="run-list"),
                ],
                className="card",
            ),
            _lr_panel(readonly, token_required),
        ],
        className="sidebar",
    )
    controls = html.Div(
        [
            html.Label("Loss smoothing", htmlFor=ids.SMOOTHING),
            html.Div(
                dcc.Slider(
                    id=ids.SMOOTHING,
                    min=0,
                    max=0.99,
                    step=0.01,
                    value=0.9,
                    marks={0: "0", 0.5: "0.5", 0.9: "0.9", 0.99: "0.99"},
                    updatemode="mouseup",
                    tooltip={"placement": "bottom"},
                ),
                className="slider",
            ),
            dcc.RadioItems(
                id=ids.LOSS_LOG,
                options=[{"label": "linear", "value": "linear"}, {"label": "log", "value": "log"}],
                value="linear",
                inline=True,
                className="radio",
            ),
        ],
        className="controls card",
    )
    main = html.Div([controls, html.Div(id=ids.CHARTS, className="charts")], className="main")
    return html.Div(
        [
            html.Header(
                [
                    html.Div(
                        [html.Span("lr", className="logo-a"), html.Span("pilot")], className="logo"
                    ),
                    html.Span("training monitor · automatic LR control", className="tagline"),
                    html.Span(
                        "read-only" if readonly else "",
                        className="badge readonly" if readonly else "hidden",
                    ),
                ],
                className="topbar",
            ),
            _empty_state(),
            html.Div([sidebar, main], className="layout", id="layout"),
            dcc.Interval(id=ids.TICK, interval=TICK_MS),
            dcc.Store(id=ids.SIGNATURE),
            dcc.Store(id=ids.REBUILD, data=0),
        ],
        className="page",
    )
