"""lrpilot's dashboard: watch runs live in a browser and change a running job's LR from it.

>>> from lrpilot.dashboard import create_app, serve_dashboard
>>> server = serve_dashboard(create_app(store, controller), "127.0.0.1", 8050)
"""

from __future__ import annotations

from .app import create_app
from .security import DashboardSecurityError
from .serve import DashboardServer, serve_dashboard

__all__ = ["DashboardSecurityError", "DashboardServer", "create_app", "serve_dashboard"]
