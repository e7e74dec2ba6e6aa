"""Build the dashboard: ``create_app(store, controller, token, readonly) -> dash.Dash``.

Each call builds a fresh app with its own layout and callbacks registered on it (nothing is
registered on a global app), so tests, the controller and ``lrpilot dashboard`` can each build
their own.
"""

from __future__ import annotations

from pathlib import Path

import dash

from ..monitor.store import Store
from . import callbacks, layout
from .actions import Controller
from .data import DataSource
from .security import Guard

__all__ = ["create_app"]

_ASSETS = Path(__file__).with_name("assets")


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
    return app
