"""lrpilot's client: stream a training run's scalars to the controller and apply its LR changes.

Imports nothing of the monitor or the dashboard (and neither dash nor plotly). ``Monitor`` and
the names that need torch load on first use, so the controller and the CLI can use the
protocol module without paying for a torch import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import LrpilotError, MonitorConfigError
from .protocol import DEFAULT_ENDPOINT

if TYPE_CHECKING:
    from .commands import LrChange
    from .monitor import Monitor
    from .stats import StatsConfig
    from .transport import TransportReport

__all__ = [
    "DEFAULT_ENDPOINT",
    "LrChange",
    "LrpilotError",
    "Monitor",
    "MonitorConfigError",
    "StatsConfig",
    "TransportReport",
]

_LAZY = {
    "Monitor": "monitor",
    "LrChange": "commands",
    "StatsConfig": "stats",
    "TransportReport": "transport",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lrpilot.client' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
