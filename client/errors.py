"""Errors a user of the client can meet.

    LrpilotError            base of every error lrpilot raises on purpose
    └── MonitorConfigError  a bad argument to Monitor or Monitor.step (run name, scalar name...)

The controller's errors (monitor/errors.py) derive from the same base, so a CLI can catch
``LrpilotError`` alone and print its one-line message.
"""

from __future__ import annotations

__all__ = ["LrpilotError", "MonitorConfigError"]


class LrpilotError(Exception):
    """Base class: the message is one line that says what was wrong and what to do."""


class MonitorConfigError(LrpilotError, ValueError):
    """A Monitor was given a bad argument: an empty run name, a reserved scalar name..."""
