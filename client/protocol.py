"""The lrpilot wire protocol, defined once and used by both the client and the controller.

Every message is a msgspec Struct, tagged with its ``kind``, encoded as msgpack and sent as
two ZeroMQ frames: ``[MAGIC, body]``. ``MAGIC`` carries the protocol version, so a peer
speaking another version is refused before its body is even parsed. Decoding validates types
and value ranges; anything that does not decode raises :class:`ProtocolError` (never pickle:
decoding acts on what a stranger sent).

Messages, by direction (see docs/protocol.md for the sequence diagrams):

client -> controller   Hello, Metrics, Heartbeat, CommandAck, Bye
controller -> client   Welcome, BatchAck, Command, Rehello
CLI/dashboard -> ctl   Request          (answered by Reply)
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Union

import msgspec

from .errors import MonitorConfigError

__all__ = [
    "DEFAULT_ENDPOINT",
    "MAGIC",
    "MAX_MESSAGE_BYTES",
    "MAX_RUN_NAME",
    "PROTOCOL_VERSION",
    "BatchAck",
    "Bye",
    "Command",
    "CommandAck",
    "Heartbeat",
    "Hello",
    "Message",
    "Metrics",
    "ProtocolError",
    "Rehello",
    "Reply",
    "Request",
    "Welcome",
    "check_endpoint",
    "check_lr",
    "check_run_name",
    "decode",
    "encode",
]

PROTOCOL_VERSION = 1
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
MAGIC = b"LRP%d" % PROTOCOL_VERSION
#: Largest frame the controller accepts (also set as ZMQ_MAXMSGSIZE on its socket).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_RUN_NAME = 200
CONTROL_MODES = ("auto", "advise", "off")
LR_ACTIONS = ("set", "scale")


class ProtocolError(ValueError):
    """A message could not be decoded: wrong version, corrupt bytes or invalid content."""


def check_run_name(name: object) -> str:
    """Return ``name`` if it is a usable run name, else raise ValueError saying why."""
    if not isinstance(name, str):
        raise ValueError(f"run name must be a string, got {type(name).__name__}")
    if not name.strip():
        raise ValueError("run name must not be empty")
    if len(name) > MAX_RUN_NAME:
        raise ValueError(f"run name is {len(name)} characters long; the limit is {MAX_RUN_NAME}")
    bad = [c for c in name if ord(c) < 32 or ord(c) == 127]
    if bad:
        raise ValueError(f"run name {name!r} contains control characters")
    return name


def check_lr(value: object, what: str = "learning rate") -> float:
    """Return ``value`` as a float if it is a finite number > 0, else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{what} must be finite and > 0, got {value!r}")
    return v


_ENDPOINT = re.compile(
    r"^(tcp://(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-*]+):(\d+|\*)|ipc://.+|inproc://.+)$"
)


def check_endpoint(endpoint: str) -> str:
    """Return ``endpoint`` if it looks like a ZeroMQ endpoint, else raise with an example."""
    if not isinstance(endpoint, str) or not _ENDPOINT.match(endpoint):
        raise MonitorConfigError(
            f"malformed endpoint {endpoint!r}: expected e.g. tcp://127.0.0.1:5555 or ipc:///tmp/x"
        )
    if endpoint.startswith("tcp://"):
        port = endpoint.rsplit(":", 1)[1]
        if port != "*" and not 0 < int(port) < 65536:
            raise MonitorConfigError(f"malformed endpoint {endpoint!r}: port must be 1-65535")
    return endpoint


# Bounds that keep hostile numbers out of SQLite's 64-bit integers and out of memory.
Count = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Text = Annotated[str, msgspec.Meta(max_length=2000)]


class _Base(msgspec.Struct, tag_field="kind", forbid_unknown_fields=True, frozen=True):
    pass


class Hello(_Base, tag="hello"):
    """A client introduces its run; sent at start and again after any reconnect."""

    run_id: Id
    run: str
    host: Text = ""
    pid: Count = 0
    lrs: list[float] = []
    optimizer: str | None = None
    control: str = "advise"
    config: dict[str, Any] = {}
    # The run's planned length in steps (0: unknown); auto control ends it with a decay.
    total_steps: Count = 0
    # Per-run secret made by the client: only its holder may hello again for this run id.
    secret: Annotated[str, msgspec.Meta(max_length=64)] = ""

    def __post_init__(self) -> None:
        check_run_name(self.run)
        _check_run_id(self.run_id)
        if self.control not in CONTROL_MODES:
            raise ValueError(f"control must be one of {CONTROL_MODES}, got {self.control!r}")


class Welcome(_Base, tag="welcome"):
    """The controller accepts a Hello; ``committed_seq`` is the last batch it has stored."""

    run_id: Id
    committed_seq: Count


class Metrics(_Base, tag="metrics"):
    """A batch of points, columnar: point i is (steps[i], names[keys[i]], values[i])."""

    run_id: Id
    seq: Count
    names: list[str]
    steps: list[Count]
    keys: list[Count]
    values: list[float]
    dropped: Count = 0  # points the client had to drop so far (bounded buffer)
    # Lowest seq still unacknowledged in the client's window when this batch was sent: every
    # seq below it is acknowledged or dropped for good, so the controller may skip a gap below
    # it but must not commit past a missing batch at or above it (it asks for a resend).
    base_seq: Count = 0

    def __post_init__(self) -> None:
        _check_run_id(self.run_id)
        if self.seq < 1:
            raise ValueError(f"seq must be >= 1, got {self.seq}")
        n = len(self.steps)
        if len(self.keys) != n or len(self.values) != n:
            raise ValueError("steps, keys and values must have the same length")
        if n and (min(self.keys) < 0 or max(self.keys) >= len(self.names)):
            raise ValueError("a key points outside names")
        if n and min(self.steps) < 0:
            raise ValueError("steps must be >= 0")
        for name in self.names:
            if not name or len(name) > MAX_RUN_NAME:
                raise ValueError(f"bad series name {name!r}")


class BatchAck(_Base, tag="ack"):
    """Batches up to and including ``seq`` are committed; ``resend`` asks for the rest again
    (a batch arrived after a gap, e.g. one lost in a reconnect)."""

    run_id: Id
    seq: Count
    resend: bool = False


class Heartbeat(_Base, tag="heartbeat"):
    """Liveness while no metrics flow; answered with a BatchAck."""

    run_id: Id
    step: Count


class Command(_Base, tag="command"):
    """Change the LR: ``set`` group 0 to ``value`` (others keep their ratio) or ``scale`` all."""

    run_id: Id
    command_id: Count
    action: str
    value: float
    source: Text = "manual"
    reason: Text = ""
    trigger: Text = ""  # the detection behind an automatic command (e.g. "divergence")

    def __post_init__(self) -> None:
        if self.action not in LR_ACTIONS:
            raise ValueError(f"action must be one of {LR_ACTIONS}, got {self.action!r}")
        check_lr(self.value, "command value")


class CommandAck(_Base, tag="command_ack"):
    """The client applied (or refused) a command; ``step`` is the first step run with it."""

    run_id: Id
    command_id: Count
    step: Count
    lrs: list[float] = []
    ok: bool = True
    error: Text = ""
    rewind_step: Count | None = None  # the snapshot the client rewound to, if it did


class Rehello(_Base, tag="rehello"):
    """The controller does not know this run in its current session: send Hello again."""

    run_id: Id


class Bye(_Base, tag="bye"):
    """The run finished; ``last_seq`` is the last batch the client sent."""

    run_id: Id
    last_seq: Count
    step: Count = 0
    dropped: Count = 0


class Request(_Base, tag="request"):
    """A CLI or dashboard request to the controller: ``op`` names it, ``args`` carries it."""

    op: Annotated[str, msgspec.Meta(max_length=64)]
    args: dict[str, Any] = {}


class Reply(_Base, tag="reply"):
    """The answer to a Request: ``ok`` and ``data``, or ``error`` in one line."""

    ok: bool
    data: Any = None
    error: Text = ""


Message = Union[  # noqa: UP007 - msgspec wants a typing.Union of tagged structs
    Hello, Welcome, Metrics, BatchAck, Heartbeat, Command, CommandAck, Rehello, Bye, Request, Reply
]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def _check_run_id(run_id: str) -> None:
    if not (1 <= len(run_id) <= 64) or not all(c.isalnum() or c in "-_" for c in run_id):
        raise ValueError(f"bad run id {run_id!r}")


def encode(msg: Message) -> list[bytes]:
    """Turn a message into the frames to send."""
    return [MAGIC, _encoder.encode(msg)]


def decode(frames: list[bytes]) -> Message:
    """Turn received frames (routing frames already removed) into a validated message."""
    if len(frames) != 2:
        raise ProtocolError(f"expected 2 frames, got {len(frames)}")
    magic, body = frames
    if bytes(magic) != MAGIC:
        raise ProtocolError(
            f"unsupported protocol header {bytes(magic)[:16]!r}, expected {MAGIC!r}"
        )
    try:
        return _decoder.decode(body)
    # MsgspecError covers decode and validation errors; invalid UTF-8 in a string field
    # surfaces as UnicodeDecodeError, a ValueError.
    except (msgspec.MsgspecError, ValueError) as exc:
        raise ProtocolError(f"invalid message: {str(exc)[:300]}") from None
