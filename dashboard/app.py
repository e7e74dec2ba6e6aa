"""Build the dashboard: ``create_app(store, controller, token, readonly) -> dash.Dash``.

Each call builds a fresh app with its own layout and callbacks registered on it (nothing is
registered on a global app), so tests, the controller and ``lrpilot dashboard`` can each build
their own.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import Counter
from pathlib import Path

import dash
import flask
from werkzeug.exceptions import HTTPException

from ..monitor.store import Store
from . import callbacks, layout
from .actions import Controller
from .data import DataSource
from .envelope import MAX_BODY_BYTES, problem
from .security import Guard

__all__ = ["create_app"]

_ASSETS = Path(__file__).with_name("assets")
_WARN_EVERY = 10.0  # seconds between two log lines of the same kind
log = logging.getLogger("lrpilot.dashboard")


def create_app(
    store: Store,
    controller: Controller | None = None,
    token: str | None = None,
    readonly: bool = False,
) -> dash.Dash:
    """Create the Dash app for ``store``.

    Args:
        store: the run store to read (open it with ``readonly=True``; the controller is the
            only writer).
        controller: a :class:`~lrpilot.monitor.remote.ControllerClient` for the write actions
            (set / scale LR, pause / resume, approve); None shows them disabled.
        token: when set, every write action must carry it (typed into the page's token
            field); required to serve on a non-loopback address (see :mod:`.security`).
        readonly: no LR panel at all (``lrpilot dashboard --db FILE``).

    Returns:
        The app; serve it with :func:`~lrpilot.dashboard.serve.serve_dashboard` (Waitress),
        or mount ``app.server`` (a Flask WSGI app) in any WSGI server.

    Raises:
        DashboardSecurityError: the token is too short to be a secret.

    Example:
        >>> app = create_app(Store("runs.db", readonly=True), readonly=True)
        >>> server = serve_dashboard(app, "127.0.0.1", 8050)
    """
    guard = Guard(token)
    app = dash.Dash(
        __name__,
        title="lrpilot",
        assets_folder=str(_ASSETS),
        update_title=None,  # no "Updating..." flicker in the tab title each tick
        suppress_callback_exceptions=True,  # chart panels are created by a callback
        serve_locally=True,  # no CDN: the dashboard works offline and on air-gapped clusters
    )
    app.layout = layout.page(readonly=readonly, token_required=guard.required)
    app.server.config["LRPILOT_GUARD"] = guard
    callbacks.register(app, DataSource(store), controller, guard, readonly)
    _refuse_malformed(app)
    return app


def _refuse_malformed(app: dash.Dash) -> None:
    """Answer malformed or failing callback requests with one status and one log line.

    A body over :data:`MAX_BODY_BYTES` gets a 413, a request that is not a well-formed call of
    one of our callbacks a 400 (see :mod:`.envelope`), and a callback that still fails a 500
    whose log line names the exception and where it was raised, at most once per kind every
    ``_WARN_EVERY`` seconds: a flood of bad requests cannot flood the log. The counts are in
    ``app.server.config["LRPILOT_REJECTED"]``.
    """
    server = app.server
    server.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    rejected: Counter[str] = Counter()
    server.config["LRPILOT_REJECTED"] = rejected
    last: dict[str, float] = {}

    def note(kind: str, line: str) -> None:
        rejected[kind] += 1
        now = time.monotonic()
        if now - last.get(kind, -_WARN_EVERY) >= _WARN_EVERY:
            last[kind] = now
            log.warning("%s", line)

    @server.before_request
    def check_callback_request():  # type: ignore[no-untyped-def]
        req = flask.request
        if req.method != "POST" or not req.path.endswith("/_dash-update-component"):
            return None
        reason = problem(req.get_json(silent=True), app.callback_map)
        if reason is None:
            return None
        note("malformed", f"refused a malformed callback request from {req.remote_addr}: {reason}")
        return flask.jsonify(error=f"malformed callback request: {reason}"), 400

    @server.errorhandler(Exception)
    def one_line(exc: Exception):  # type: ignore[no-untyped-def]
        if isinstance(exc, HTTPException):  # 404, 405, 413...: Werkzeug's own answer
            return exc
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
        note(
            type(exc).__name__,
            f"a dashboard request failed: {type(exc).__name__}: {str(exc)[:200]}{where} "
            "(answered 500; please report it)",
        )
        return flask.jsonify(error="internal error"), 500
