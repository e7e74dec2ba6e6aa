"""CURVE keys on the client side: who we are and which controller we trust.

``lrpilot keys DIR`` writes a key directory (see ``lrpilot.monitor.keys``); a training
machine needs two of its files: ``client.key_secret`` (our key pair) and ``server.key``
(the controller's public key, so no one else can pose as it).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import MonitorConfigError

__all__ = ["client_curve"]


def client_curve(keys_dir: str | os.PathLike[str]) -> tuple[bytes, bytes, bytes]:
    """Load (client public, client secret, server public) Z85 keys from ``keys_dir``.

    Raises:
        MonitorConfigError: a file is missing or is not a ZeroMQ certificate.
    """
    import zmq.auth

    d = Path(keys_dir)
    try:
        public, secret = zmq.auth.load_certificate(d / "client.key_secret")
        server_public, _ = zmq.auth.load_certificate(d / "server.key")
    except (OSError, ValueError) as exc:
        raise MonitorConfigError(
            f"cannot load CURVE keys from {d}: {exc}; it needs client.key_secret and "
            "server.key, as written by `lrpilot keys DIR`"
        ) from None
    if secret is None:
        raise MonitorConfigError(f"{d / 'client.key_secret'} holds no secret key")
    return public, secret, server_public
