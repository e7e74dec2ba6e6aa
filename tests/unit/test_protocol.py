"""Round trips for every message kind, and the ways a frame can be wrong."""

from __future__ import annotations

import math

import msgspec
import pytest
from lrpilot.client import protocol as p

MESSAGES = [
    p.Hello(run_id="abc123", run="digits", host="h", pid=1, lrs=[0.1, 0.01], optimizer="SGD",
            control="auto", config={"batch": 64}),
    p.Welcome(run_id="abc123", committed_seq=7),
    p.Metrics(run_id="abc123", seq=3, names=["loss", "lr"], steps=[0, 0, 1], keys=[0, 1, 0],
              values=[2.3, 0.1, float("inf")], dropped=2, base_seq=3),
    p.BatchAck(run_id="abc123", seq=3, resend=True),
    p.Heartbeat(run_id="abc123", step=10),
    p.Command(run_id="abc123", command_id=4, action="scale", value=0.5, source="auto",
              reason="plateau", trigger="plateau"),
    p.CommandAck(run_id="abc123", command_id=4, step=11, lrs=[0.05], ok=True),
    p.Rehello(run_id="abc123"),
    p.Bye(run_id="abc123", last_seq=3, step=11, dropped=0),
    p.Request(op="set_lr", args={"run": "digits", "value": 0.003}),
    p.Reply(ok=False, error="unknown run"),
]  # fmt: skip


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: p.Message) -> None:
    frames = p.encode(msg)
    assert frames[0] == p.MAGIC
    assert p.decode(frames) == msg


def test_nan_survives_the_wire() -> None:
    msg = p.Metrics(run_id="r", seq=1, names=["loss"], steps=[0], keys=[0], values=[math.nan])
    assert math.isnan(p.decode(p.encode(msg)).values[0])


@pytest.mark.parametrize(
    "frames, match",
    [
        ([b"LRP9", msgspec.msgpack.encode({"kind": "rehello", "run_id": "r"})], "protocol header"),
        ([p.MAGIC], "expected 2 frames"),
        ([p.MAGIC, b"x", b"y"], "expected 2 frames"),
        ([p.MAGIC, b"\xc1\xc1"], "invalid message"),
        ([p.MAGIC, p.encode(MESSAGES[2])[1][:-5]], "invalid message"),  # truncated
        ([p.MAGIC, msgspec.msgpack.encode({"kind": "nope"})], "invalid message"),
        ([p.MAGIC, msgspec.msgpack.encode({"kind": "heartbeat", "run_id": "r", "step": "x"})],
         "invalid message"),
        ([p.MAGIC, msgspec.msgpack.encode({"kind": "ack", "run_id": "r", "seq": 1, "evil": 1})],
         "invalid message"),
    ],
)  # fmt: skip
def test_bad_frames_raise_protocol_error(frames: list[bytes], match: str) -> None:
    with pytest.raises(p.ProtocolError, match=match):
        p.decode(frames)


@pytest.mark.parametrize(
    "fields",
    [
        {"seq": 0},
        {"keys": [5]},
        {"steps": [-1]},
        {"values": []},
        {"run_id": "bad id!"},
        {"names": [""]},
    ],
)
def test_metrics_validation(fields: dict) -> None:
    base = {"kind": "metrics", "run_id": "r", "seq": 1, "names": ["loss"], "steps": [0],
            "keys": [0], "values": [1.0]}  # fmt: skip
    base.update(fields)
    with pytest.raises(p.ProtocolError):
        p.decode([p.MAGIC, msgspec.msgpack.encode(base)])


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, "0.1", True])
def test_command_value_must_be_a_positive_finite_number(value: object) -> None:
    raw = {"kind": "command", "run_id": "r", "command_id": 1, "action": "set", "value": value}
    with pytest.raises(p.ProtocolError):
        p.decode([p.MAGIC, msgspec.msgpack.encode(raw)])


@pytest.mark.parametrize("name", ["", "   ", "a" * 201, "bad\nname", "tab\there"])
def test_absurd_run_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        p.check_run_name(name)


def test_check_lr_messages_echo_the_value() -> None:
    with pytest.raises(ValueError, match="got -1"):
        p.check_lr(-1)
    assert p.check_lr(3) == 3.0
