"""Errors of the controller, its store and its CLI.

LrpilotError (lrpilot.client.errors)
├── StoreError            the database cannot be opened, read or written
├── UnknownRun            no run has that name or id
├── RunOwned              a hello for a run id without that run's secret
├── ControllerError       the controller refused a request (bad LR, finished run...)
├── ControllerUnreachable no controller answered at the endpoint in time
└── ServeError            the controller cannot start (port in use, bad endpoint, db locked)
"""

from __future__ import annotations

from ..client.errors import LrpilotError

__all__ = [
    "ControllerError",
    "ControllerUnreachable",
    "LrpilotError",
    "OutputError",
    "RunOwned",
    "ServeError",
    "StoreError",
    "UnknownRun",
]


class StoreError(LrpilotError):
    """The database file cannot be opened, is not an lrpilot database, or cannot be written."""


class UnknownRun(LrpilotError, KeyError):
    """No run has that name or id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown run"


class RunOwned(LrpilotError):
    """A peer said hello with another run's id but not its secret."""


class ControllerError(LrpilotError):
    """The controller answered a request with an error (bad value, finished run...)."""


class ControllerUnreachable(LrpilotError):
    """No controller answered at the endpoint within the timeout."""


class ServeError(LrpilotError):
    """The controller cannot start: address in use, malformed endpoint, unwritable database."""


class OutputError(LrpilotError):
    """A file the CLI was asked to write (``lrpilot export --output``) cannot be written."""
