"""Component ids, in one place: the layout, the callbacks and the browser tests share them."""

from __future__ import annotations

__all__ = [
    "ACTION_BUTTONS",
    "CHART",
    "CHARTS",
    "CMD_TABLE",
    "CURSOR",
    "EMPTY",
    "LOSS_LOG",
    "LR_GROUPS",
    "LR_INPUT",
    "LR_MESSAGE",
    "LR_PANEL",
    "LR_RUN",
    "REBUILD",
    "RUN_COUNTS",
    "RUN_FILTER",
    "RUN_LIST",
    "RUN_STATUS_FILTER",
    "SIGNATURE",
    "SMOOTHING",
    "TICK",
    "TOKEN",
    "chart_id",
    "cursor_id",
]

TICK = "tick"  # dcc.Interval driving live updates
RUN_FILTER = "run-filter"  # text filter over run names
RUN_STATUS_FILTER = "run-status-filter"  # live / finished / stale checklist
RUN_LIST = "run-list"  # dcc.Checklist of runs; value = selected run ids
RUN_COUNTS = "run-counts"  # "3 live · 2 finished" summary
EMPTY = "empty-state"  # how to start a run, shown while there are no runs
CHARTS = "charts"  # container of the chart panels
SMOOTHING = "smoothing"  # loss smoothing slider
LOSS_LOG = "loss-log"  # loss y axis: log or linear
SIGNATURE = "panel-signature"  # dcc.Store: which panels/traces the charts were built for
REBUILD = "rebuild"  # dcc.Store: bumped by the tick when the charts must be rebuilt
CHART = "chart"  # pattern-matching type of each dcc.Graph: {"type": CHART, "panel": key}
CURSOR = "cursor"  # pattern-matching type of each panel's dcc.Store (what was sent)

LR_PANEL = "lr-panel"
LR_RUN = "lr-run"  # dropdown: which live run the LR panel acts on
LR_GROUPS = "lr-groups"  # current LR per param group + control mode
LR_INPUT = "lr-input"
TOKEN = "token-input"
LR_MESSAGE = "lr-message"  # validation / controller answer
CMD_TABLE = "command-table"  # recent commands and their state
#: Write-action buttons, by action name (see actions.ACTIONS).
ACTION_BUTTONS = {
    "set": "lr-set",
    "half": "lr-half",
    "double": "lr-double",
    "pause": "control-pause",
    "resume": "control-resume",
    "approve": "control-approve",
}


def chart_id(panel: str) -> dict[str, str]:
    """The id of a panel's graph."""
    return {"type": CHART, "panel": panel}


def cursor_id(panel: str) -> dict[str, str]:
    """The id of a panel's cursor store."""
    return {"type": CURSOR, "panel": panel}
