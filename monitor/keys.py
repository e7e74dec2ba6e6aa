"""CURVE keys for the controller: generating a key directory and loading the server's side.

Layout written by ``lrpilot keys DIR``::

    DIR/server.key          the controller's public key   (give to clients)
    DIR/server.key_secret   the controller's key pair     (stays with the controller)
    DIR/client.key          a client's public key
    DIR/client.key_secret   a client's key pair           (give to training machines)
    DIR/authorized/*.key    public keys the controller accepts (client.key to begin with)

Add a machine by generating another pair and copying its public ``.key`` into
``authorized/``; remove one by deleting its file there (read when the controller starts).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import ServeError

__all__ = ["generate_keys", "server_curve"]


def generate_keys(keys_dir: str | os.PathLike[str]) -> Path:
    """Write a new server and client key pair into ``keys_dir``; refuses to overwrite."""
    import zmq.auth

    d = Path(keys_dir)
    if (d / "server.key_secret").exists():
        raise ServeError(f"{d} already holds keys; remove them first or choose another DIR")
    try:
        (d / "authorized").mkdir(parents=True, exist_ok=True)
        zmq.auth.create_certificates(d, "server")
        _, client_secret = zmq.auth.create_certificates(d, "client")
        shutil.copy(d / "client.key", d / "authorized" / "client.key")
        os.chmod(d / "server.key_secret", 0o600)
        os.chmod(client_secret, 0o600)
    except OSError as exc:
        raise ServeError(f"cannot write keys to {d}: {exc.strerror}") from None
    return d


def server_curve(keys_dir: str | os.PathLike[str]) -> tuple[bytes, bytes, Path]:
    """Load (server public, server secret, authorized-keys directory) from ``keys_dir``."""
    import zmq.auth

    d = Path(keys_dir)
    try:
        public, secret = zmq.auth.load_certificate(d / "server.key_secret")
    except (OSError, ValueError) as exc:
        raise ServeError(
            f"cannot load the controller's CURVE keys from {d}: {exc}; create them with "
            "`lrpilot keys DIR`"
        ) from None
    authorized = d / "authorized"
    if secret is None or not authorized.is_dir() or not any(authorized.glob("*.key")):
        raise ServeError(f"{d} needs server.key_secret and at least one authorized/*.key")
    return public, secret, authorized
