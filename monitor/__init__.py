"""lrpilot's controller: ingest, store, detect, decide, command; and the ``lrpilot`` CLI."""

from __future__ import annotations

from .control import Decision, RunController
from .errors import (
    ControllerError,
    ControllerUnreachable,
    LrpilotError,
    RunOwned,
    ServeError,
    StoreError,
    UnknownRun,
)
from .remote import ControllerClient
from .server import Controller
from .store import CommandRecord, EventRecord, RunRecord, Store

__all__ = [
    "CommandRecord",
    "Controller",
    "ControllerClient",
    "ControllerError",
    "ControllerUnreachable",
    "Decision",
    "EventRecord",
    "LrpilotError",
    "RunController",
    "RunOwned",
    "RunRecord",
    "ServeError",
    "Store",
    "StoreError",
    "UnknownRun",
]
