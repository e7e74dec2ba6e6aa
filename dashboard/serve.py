"""Serve a dashboard with Waitress (a production WSGI server) on a background thread.

``serve_dashboard`` binds before it returns, so a port in use is an immediate, clear error
rather than a thread dying quietly, and ``port=0`` picks a free port (read it from ``.url``).
The server's event loop runs in small slices and checks a stop flag between them, so
:meth:`DashboardServer.stop` ends it promptly and joins the thread with a timeout that fails
loudly instead of hanging a test or the controller's shutdown.

Example:
    >>> server = serve_dashboard(create_app(store), "127.0.0.1", 0)
    >>> print(server.url)        # http://127.0.0.1:53211/
    >>> server.stop()
"""

from __future__ import annotations

import errno
import threading

import dash
from waitress import wasyncore
from waitress.server import create_server

from ..monitor.errors import ServeError
from .security import check_bind

__all__ = ["DashboardServer", "serve_dashboard"]


class DashboardServer:
    """A running dashboard: ``url``, ``host``, ``port``, and :meth:`stop`."""

    def __init__(self, server: object, host: str) -> None:
        self._server = server
        self.host = host
        self.port: int = server.effective_port  # type: ignore[attr-defined]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lrpilot-dashboard", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        server = self._server
        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=0.5, map=server._map, use_poll=True, count=1)  # type: ignore[attr-defined]
        finally:
            server.task_dispatcher.shutdown(timeout=2)  # type: ignore[attr-defined]
            wasyncore.close_all(server._map)  # type: ignore[attr-defined]

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, finish in-flight requests (bounded) and join the server thread.

        Raises:
            ServeError: the thread did not end within ``timeout`` seconds.
        """
        if self._stop.is_set() and not self._thread.is_alive():
            return
        self._stop.set()
        self._server.pull_trigger()  # type: ignore[attr-defined]  # wake the poll at once
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise ServeError(
                f"the dashboard server at {self.url} did not stop within {timeout:g} s"
            )

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_dashboard(
    app: dash.Dash, host: str = "127.0.0.1", port: int = 8050, *, threads: int = 4
) -> DashboardServer:
    """Serve ``app`` (from :func:`~lrpilot.dashboard.create_app`) at ``host:port`` in a thread.

    Args:
        app: the Dash app.
        host: address to bind; anything but loopback requires the app to have a token.
        port: TCP port; 0 picks a free one.
        threads: Waitress worker threads.

    Returns:
        The running server; call ``.stop()`` when done (or use it as a context manager).

    Raises:
        DashboardSecurityError: a non-loopback ``host`` and no token.
        ServeError: the address is in use or cannot be bound.
    """
    guard = app.server.config["LRPILOT_GUARD"]
    check_bind(host, guard.required)
    try:
        server = create_server(app.server, host=host, port=port, threads=threads, ident="lrpilot")
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(
                f"cannot serve the dashboard on {host}:{port}: the port is in use (another "
                "lrpilot, or another program); pick another with --http HOST:PORT"
            ) from None
        raise ServeError(f"cannot serve the dashboard on {host}:{port}: {exc.strerror}") from None
    return DashboardServer(server, host)
