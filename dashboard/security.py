"""Who may change a run's LR from the dashboard.

The rule (docs/dashboard.md, "Security"):

* Bound to a loopback address, the dashboard needs no token: only local users can reach it.
* Bound to any other address it refuses to start without a token.
* When a token is configured, every write action (set / scale the LR, pause / resume,
  approve) must carry it; viewing stays open. The token travels in the body of the callback
  request (a password field on the page), never in a URL, so access logs do not record it,
  and it is compared in constant time. Nothing here logs or echoes it.

Dash callbacks are JSON posts, which browsers will not send cross-origin without a CORS
preflight the server never grants, so another web page cannot drive the write actions of a
loopback dashboard either.
"""

from __future__ import annotations

import hmac
import ipaddress

from ..monitor.errors import LrpilotError

__all__ = ["DashboardSecurityError", "Guard", "check_bind", "is_loopback"]

#: Shortest token accepted; shorter ones are guessable.
MIN_TOKEN_LENGTH = 8


class DashboardSecurityError(LrpilotError):
    """The dashboard would be reachable by others without a token, or the token is weak."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token_required: bool) -> None:
    """Refuse to serve on a non-loopback address when write actions need no token.

    Raises:
        DashboardSecurityError: with the fix (``--token`` or ``LRPILOT_TOKEN``).
    """
    if not is_loopback(host) and not token_required:
        raise DashboardSecurityError(
            f"refusing to serve the dashboard on {host}, which is not a loopback address, "
            "without a token: anyone who can reach it could change your runs' LR. Pass "
            "--token or set LRPILOT_TOKEN, or bind to 127.0.0.1"
        )


class Guard:
    """Checks the token sent with a write action.

    Args:
        token: the configured token, or None when write actions are open (loopback only;
            :func:`check_bind` enforces that at serve time).

    Raises:
        DashboardSecurityError: the token is shorter than ``MIN_TOKEN_LENGTH``.
    """

    def __init__(self, token: str | None) -> None:
        if token is not None and len(token) < MIN_TOKEN_LENGTH:
            raise DashboardSecurityError(
                f"the dashboard token is {len(token)} characters long; use at least "
                f"{MIN_TOKEN_LENGTH}, e.g. from "
                "python -c 'import secrets; print(secrets.token_urlsafe())'"
            )
        self._token = None if token is None else token.encode()

    @property
    def required(self) -> bool:
        """Whether write actions need a token."""
        return self._token is not None

    def allows(self, offered: str | None) -> bool:
        """True when no token is configured, or ``offered`` equals it (constant time)."""
        if self._token is None:
            return True
        return hmac.compare_digest(self._token, (offered or "").encode())

    def __repr__(self) -> str:  # never show the token, even in a debugger or a log line
        return f"Guard(required={self.required})"
