"""Talk to a running controller: the CLI and the dashboard send it requests over ZeroMQ.

Each request opens a short-lived DEALER socket, sends one ``Request`` and waits (bounded) for
the ``Reply``; an endpoint where nothing answers gives :class:`ControllerUnreachable` after
``timeout`` seconds instead of hanging.
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from ..client.protocol import ProtocolError, Reply, Request, check_endpoint, decode, encode
from .errors import ControllerError, ControllerUnreachable

__all__ = ["ControllerClient"]


class ControllerClient:
    """A request/reply client for the controller at ``endpoint``.

    Args:
        endpoint: a ZeroMQ endpoint such as ``tcp://127.0.0.1:5555``.
        timeout: seconds to wait for each reply.
        context: a zmq.Context to share (defaults to the process's instance).

    Example:
        >>> ControllerClient("tcp://127.0.0.1:5555").request("set_lr", run="digits", value=3e-3)
    """

    def __init__(
        self,
        endpoint: str,
        timeout: float = 3.0,
        context: zmq.Context | None = None,
        keys: str | None = None,
    ) -> None:  # keys: a `lrpilot keys` directory, when the controller requires CURVE
        self.endpoint = check_endpoint(endpoint)
        self.timeout = timeout
        self._ctx = context or zmq.Context.instance()
        self._curve = None
        if keys:
            from ..client.keys import client_curve

            self._curve = client_curve(keys)

    def request(self, op: str, **args: Any) -> Any:
        """Send ``op`` with ``args``; return the reply's data or raise the controller's error."""
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self._curve is not None:
            sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = self._curve
        try:
            sock.connect(self.endpoint)
            sock.send_multipart(encode(Request(op=op, args=args)))
            deadline = time.monotonic() + self.timeout
            while (left := deadline - time.monotonic()) > 0:
                if not sock.poll(int(left * 1000) + 1):
                    break
                try:
                    reply = decode(sock.recv_multipart())
                except ProtocolError:
                    continue
                if isinstance(reply, Reply):
                    if not reply.ok:
                        raise ControllerError(reply.error)
                    return reply.data
            raise ControllerUnreachable(
                f"no controller answered at {self.endpoint} within {self.timeout:g} s; "
                "is `lrpilot serve` running there? (set --endpoint or LRPILOT_ENDPOINT)"
            )
        finally:
            sock.close(linger=0)

    def wait_applied(self, command_id: int, timeout: float = 30.0) -> dict[str, Any]:
        """Poll a command until the client applied or refused it; return its state."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            state = self.request("command", id=command_id)
            if state["status"] in ("applied", "failed"):
                return state
            if time.monotonic() + delay > deadline:
                raise ControllerError(
                    f"command {command_id} was sent but the run did not apply it within "
                    f"{timeout:g} s (status {state['status']}); the training loop may be paused "
                    "between steps — `lrpilot history` will show when it lands"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)
