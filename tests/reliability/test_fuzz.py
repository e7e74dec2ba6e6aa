"""Hostile input against the live controller socket, with a well-behaved run streaming.

Every category is sent from attacker DEALER sockets to a real in-process controller while
a real Monitor streams beside it. After each category the controller must still answer a
``status`` request; at the end the well-behaved run must have every step stored and the
rejects must be counted under the right reasons. ``LRPILOT_SOAK=1`` multiplies the
examples by 20.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from harness import SOAK, fuzz_settings, step_counts
from hypothesis import given
from hypothesis import strategies as st
from lrpilot.client import protocol as p
from lrpilot.monitor.errors import ControllerError
from lrpilot.monitor.remote import ControllerClient
from streamer import Streamer
from support import ThreadedController, wait_for

EXAMPLES = 4000 if SOAK else 200
FLOOD = 10_000 if SOAK else 500
SETTINGS = fuzz_settings(EXAMPLES)
KINDS = [
    "hello",
    "welcome",
    "metrics",
    "ack",
    "heartbeat",
    "command",
    "command_ack",
    "rehello",
    "bye",
    "request",
    "reply",
    "nonsense",
    "",
]
FIELDS = [
    "run_id",
    "run",
    "seq",
    "names",
    "steps",
    "keys",
    "values",
    "dropped",
    "base_seq",
    "host",
    "pid",
    "lrs",
    "optimizer",
    "control",
    "config",
    "command_id",
    "step",
    "action",
    "value",
    "ok",
    "error",
    "op",
    "args",
    "last_seq",
    "committed_seq",
]
NUMBERS = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 2**62, 2**62 + 1, 2**63 - 1, math.nan, math.inf, -math.inf, 1e308]),
)
VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=300), st.binary(max_size=64)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=8), st.dictionaries(st.text(max_size=10), inner, max_size=6)
    ),
    max_leaves=30,
)


class Attacker:
    """A DEALER socket that sends anything and drains whatever comes back."""

    def __init__(self, endpoint: str, ctx: zmq.Context) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.connect(endpoint)
        self.sent = 0
        self.received: list[p.Message] = []

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)
        self.sent += 1
        self.drain()

    def drain(self, timeout_ms: int = 0) -> None:
        while self.sock.poll(timeout_ms):
            timeout_ms = 0
            with contextlib.suppress(p.ProtocolError):
                self.received.append(p.decode(self.sock.recv_multipart()))

    def barrier(self, timeout: float = 120) -> None:
        """Wait until every metrics batch this socket sent has been judged: the controller
        queues batches and judges them in order, so a batch for a fresh unknown run is
        answered with its rehello only after all earlier ones (it counts one reject)."""
        marker = "barrier-" + uuid.uuid4().hex[:8]
        self.send(p.encode(p.Metrics(run_id=marker, seq=1, names=["x"], steps=[0], keys=[0],
                                     values=[0.0])))  # fmt: skip
        wait_for(
            lambda: (
                self.drain(50),
                any(isinstance(m, p.Rehello) and m.run_id == marker for m in self.received),
            )[1],
            timeout=timeout,
            what="the controller to judge every batch sent so far",
        )

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[ThreadedController, Streamer]]:
    """A live controller with a well-behaved run streaming to it."""
    with ThreadedController(tmp_path / "fuzz.db") as c:
        streamer = Streamer(c.endpoint, close_timeout=5).start()
        try:
            yield c, streamer
        finally:
            streamer._stop.set()
            assert streamer._thread is not None
            streamer._thread.join(30)


def answering(c: ThreadedController) -> dict[str, Any]:
    """The controller thread is alive and answers a status request."""
    assert c.thread.is_alive(), "the controller thread died"
    return ControllerClient(c.endpoint, timeout=5).request("status")


def rejected(c: ThreadedController, reason: str) -> int:
    return c.controller.stats.rejected.get(reason, 0)


def test_hostile_input_never_stops_the_controller_nor_costs_a_point(
    target: tuple[ThreadedController, Streamer],
) -> None:
    c, streamer = target
    ctx = zmq.Context.instance()
    atk = Attacker(c.endpoint, ctx)
    try:
        # -- raw random frames: any number of parts, any bytes, with and without the magic
        @SETTINGS
        @given(st.lists(st.binary(max_size=3000), min_size=1, max_size=12), st.booleans())
        def raw(frames: list[bytes], magic: bool) -> None:
            atk.send([p.MAGIC, *frames] if magic else frames)

        raw()
        atk.send([b""])  # one empty part
        atk.send([b""] * 200)  # many empty parts
        answering(c)

        # -- valid messages, truncated or with bytes flipped
        valid = [p.encode(m)[1] for m in _valid_messages()]

        @SETTINGS
        @given(st.sampled_from(valid), st.data())
        def corrupt(body: bytes, data: st.DataObject) -> None:
            cut = data.draw(st.integers(0, len(body)))
            flips = data.draw(
                st.lists(st.tuples(st.integers(0, len(body) - 1), st.integers(0, 255)), max_size=4)
            )
            b = bytearray(body[:cut] if data.draw(st.booleans()) else body)
            for i, v in flips:
                if i < len(b):
                    b[i] = v
            atk.send([p.MAGIC, bytes(b)])

        corrupt()
        answering(c)

        # -- every kind, with fields of every type (NaN, inf, huge, negative, nested...)
        @SETTINGS
        @given(
            st.sampled_from(KINDS),
            st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=len(FIELDS)),
        )
        def typed(kind: str, fields: dict[str, Any]) -> None:
            atk.send([p.MAGIC, msgspec.msgpack.encode({"kind": kind, **fields})])

        typed()
        answering(c)

        # -- well-formed messages for runs this peer does not own, and for its own run with
        #    hostile numbers; acks for commands that were never sent
        own = uuid.uuid4().hex[:12]
        atk.send(p.encode(p.Hello(run_id=own, run="attacker")))

        @SETTINGS
        @given(
            st.sampled_from([streamer.run_id, own, "nosuchrun"]),
            st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=50),
            st.integers(0, 2**62),
            st.integers(1, 2**62),
            st.integers(0, 2**62),
        )
        def metrics(run_id: str, values: list[float], step: int, seq: int, cid: int) -> None:
            n = len(values)
            atk.send(
                p.encode(
                    p.Metrics(
                        run_id=run_id,
                        seq=seq,
                        names=["loss", "x"],
                        steps=[step] * n,
                        keys=[i % 2 for i in range(n)],
                        values=values,
                        base_seq=seq,
                    )
                )
            )
            atk.send(
                p.encode(p.CommandAck(run_id=run_id, command_id=cid, step=step, lrs=values[:4]))
            )
            atk.send(p.encode(p.Heartbeat(run_id=run_id, step=step)))

        metrics()
        answering(c)

        # -- requests with unknown ops and bad arguments
        ops = st.one_of(
            st.sampled_from(
                [
                    "runs",
                    "set_lr",
                    "scale_lr",
                    "command",
                    "history",
                    "events",
                    "pause",
                    "resume",
                    "status",
                    "ping",
                    "_live_run",
                    "__init__",
                    "stop",
                ]
            ),
            st.text(max_size=64),
        )
        args = st.dictionaries(
            st.sampled_from(["run", "value", "factor", "id", "who", "x"]),
            st.one_of(VALUES, st.just(streamer.run_id)),
            max_size=4,
        )

        @SETTINGS
        @given(ops, args)
        def requests(op: str, kwargs: dict[str, Any]) -> None:
            atk.send(
                [p.MAGIC, msgspec.msgpack.encode({"kind": "request", "op": op, "args": kwargs})]
            )

        requests()
        answering(c)

        # -- oversized frame: the socket's max message size drops that peer, nobody else
        big = Attacker(c.endpoint, ctx)
        try:
            big.send([p.MAGIC, b"\x00" * (p.MAX_MESSAGE_BYTES + 1)])
            answering(c)
        finally:
            big.close()

        # -- a flood of hellos with new run names, each answered
        flood = Attacker(c.endpoint, ctx)
        try:
            for i in range(FLOOD):
                flood.send(p.encode(p.Hello(run_id=uuid.uuid4().hex[:12], run=f"flood-{i}")))
            wait_for(
                lambda: (
                    flood.drain(50),
                    sum(isinstance(m, p.Welcome) for m in flood.received) >= FLOOD,
                )[1],
                timeout=60,
                what="every flooding hello to be welcomed",
            )
        finally:
            flood.close()

        # -- exact counts by reason, for inputs whose verdict is known; the earlier
        #    categories' batches may still be queued (thousands in soak mode), so wait for
        #    them to be judged before counting
        atk.barrier()
        before = {
            r: rejected(c, r)
            for r in ("undecodable", "unknown run or wrong peer", "unknown request", "bad request")
        }
        body = p.encode(p.Heartbeat(run_id=own, step=1))[1]
        for header in (b"LRP2", b"LRP0", b"", b"LRP1 "):
            atk.send([header, body])
        for _ in range(5):
            atk.send(
                p.encode(
                    p.Metrics(
                        run_id=streamer.run_id,
                        seq=1,
                        names=["loss"],
                        steps=[0],
                        keys=[0],
                        values=[666.0],
                    )
                )
            )
        for _ in range(3):
            atk.send(p.encode(p.Request(op="no_such_op")))
        for _ in range(2):
            atk.send(p.encode(p.Request(op="runs", args={"unexpected": 1})))
        expected = {
            "undecodable": 4,
            "unknown run or wrong peer": 5,
            "unknown request": 3,
            "bad request": 2,
        }
        wait_for(
            lambda: all(rejected(c, r) - before[r] >= n for r, n in expected.items()),
            what=f"rejects {expected} to be counted",
        )
        assert {r: rejected(c, r) - before[r] for r in expected} == expected
        status = answering(c)
        for reason in expected:
            assert status["rejected"][reason] > 0
        atk.drain(200)
        assert any(
            isinstance(m, p.Rehello) and m.run_id == streamer.run_id for m in atk.received
        ), "a foreign peer's batch must be answered rehello"
    finally:
        atk.close()

    # The well-behaved run lost nothing: every step stored, count equals sent.
    report = streamer.stop()
    assert streamer.steps > 100
    assert (report.dropped_points, report.unacked_points) == (0, 0)
    assert report.acked_points == 2 * streamer.steps
    counts = step_counts(c.db, streamer.run_id)
    missing = [s for s in range(streamer.steps) if counts.get(s) != 2]
    assert missing == [], f"{len(missing)} steps not stored exactly once, first {missing[:5]}"
    from lrpilot.monitor.store import Store

    with Store(c.db, readonly=True) as store:
        assert 666.0 not in store.points(streamer.run_id, "loss")[1]
    print(
        f"\nfuzz: {c.controller.stats.messages} messages, rejected "
        f"{dict(c.controller.stats.rejected)}, well-behaved run {streamer.steps} steps intact"
    )


def _valid_messages() -> list[p.Message]:
    return [
        p.Hello(run_id="abc123", run="r", lrs=[0.1], config={"a": 1}),
        p.Metrics(
            run_id="abc123",
            seq=3,
            names=["loss", "lr"],
            steps=[0, 0, 1],
            keys=[0, 1, 0],
            values=[2.3, 0.1, 1.0],
            base_seq=3,
        ),
        p.CommandAck(run_id="abc123", command_id=4, step=11, lrs=[0.05]),
        p.Heartbeat(run_id="abc123", step=10),
        p.Bye(run_id="abc123", last_seq=3),
        p.Request(op="set_lr", args={"run": "r", "value": 0.003}),
    ]


# Requests that must each be answered (ok or a one-line error), never left hanging.
BAD_REQUESTS = [
    ("command", {"id": "x"}),
    ("command", {"id": None}),
    ("command", {"id": -1}),
    ("command", {"id": 2**63 - 1}),
    ("command", {"id": 1e300}),
    ("command", {"id": 2**64 - 1}),
    ("set_lr", {"run": "nosuchrun", "value": 0.1}),
    ("set_lr", {"run": ["a"], "value": "0.1"}),
    ("set_lr", {"value": 0.1}),
    ("scale_lr", {"run": "x", "factor": math.inf}),
    ("history", {"run": {"a": 1}}),
    ("events", {"run": None}),
    pytest.param("pause", {"run": "x" * 10_000}, id="pause-long-name"),
    ("runs", {"x": 1}),
    ("no_such_op", {}),
]


@pytest.mark.parametrize("op, args", BAD_REQUESTS)
def test_every_bad_request_gets_a_one_line_error(
    controller: ThreadedController, op: str, args: dict[str, Any]
) -> None:
    client = ControllerClient(controller.endpoint, timeout=3)
    with pytest.raises(ControllerError) as err:
        client.request(op, **args)
    assert "\n" not in str(err.value)
    assert controller.controller.stats.rejected.get("internal error", 0) == 0
    answering(controller)


def test_invalid_utf8_in_a_string_field_is_rejected(controller: ThreadedController) -> None:
    body = p.encode(p.Heartbeat(run_id="abc123", step=1))[1].replace(b"abc123", b"ab\x92123")
    atk = Attacker(controller.endpoint, zmq.Context.instance())
    try:
        atk.send([p.MAGIC, body])
        wait_for(lambda: controller.controller.stats.messages >= 1, what="the message")
        answering(controller)
        assert controller.controller.stats.rejected["undecodable"] == 1
    finally:
        atk.close()


def _own_run(endpoint: str, name: str) -> tuple[Attacker, str]:
    """A peer with a run of its own (hello answered by welcome)."""
    peer = Attacker(endpoint, zmq.Context.instance())
    run_id = uuid.uuid4().hex[:12]
    peer.send(p.encode(p.Hello(run_id=run_id, run=name, lrs=[0.1])))
    wait_for(
        lambda: (peer.drain(50), any(isinstance(m, p.Welcome) for m in peer.received))[1],
        what=f"{name} to be welcomed",
    )
    return peer, run_id


def test_a_peer_cannot_ack_another_runs_command(controller: ThreadedController) -> None:
    victim, victim_id = _own_run(controller.endpoint, "victim")
    attacker, attacker_id = _own_run(controller.endpoint, "attacker")
    try:
        sent = ControllerClient(controller.endpoint).request("set_lr", run="victim", value=0.01)
        cid = sent["command_id"]
        wait_for(
            lambda: (victim.drain(50), any(isinstance(m, p.Command) for m in victim.received))[1],
            what="the command",
        )
        for command_id in (cid, cid + 1000):  # another run's command, and one never sent
            attacker.send(
                p.encode(
                    p.CommandAck(run_id=attacker_id, command_id=command_id, step=5, lrs=[123.0])
                )
            )
        wait_for(lambda: controller.controller.stats.messages >= 5, what="the acks")
        state = ControllerClient(controller.endpoint).request("command", id=cid)
        assert state["status"] == "sent", f"another peer's ack changed the command: {state}"
        runs = {r["id"]: r for r in ControllerClient(controller.endpoint).request("runs")}
        assert runs[victim_id]["lrs"] == [0.1]
        assert sum(controller.controller.stats.rejected.values()) >= 2
    finally:
        victim.close()
        attacker.close()


def test_a_peer_cannot_take_over_another_runs_id(
    controller: ThreadedController, streamer_factory: list[Streamer]
) -> None:
    streamer = Streamer(controller.endpoint)
    streamer_factory.append(streamer)
    streamer.start()
    wait_for(lambda: controller.controller.stats.points > 100, what="the run to stream")
    hijacker = Attacker(controller.endpoint, zmq.Context.instance())
    try:
        hijacker.send(p.encode(p.Hello(run_id=streamer.run_id, run="evil")))
        hijacker.send(
            p.encode(
                p.Metrics(
                    run_id=streamer.run_id,
                    seq=10**6,
                    base_seq=10**6,
                    names=["loss"],
                    steps=[0],
                    keys=[0],
                    values=[666.0],
                )
            )
        )
        hijacker.drain(500)
    finally:
        hijacker.close()
    wait_for(lambda: streamer.steps > 500, what="more steps")
    report = streamer.stop()
    counts = step_counts(controller.db, streamer.run_id)
    assert report.acked_points == 2 * streamer.steps
    assert all(counts.get(s) == 2 for s in range(streamer.steps))


def test_lr_requests_for_a_stale_or_finished_run_are_refused(tmp_path: Path) -> None:
    """A run that went silent (its process died) or said bye: set_lr, scale_lr, pause and
    approve each get one clear error line, and no command is left pending."""
    ctx = zmq.Context()
    with ThreadedController(tmp_path / "stale.db", stale_after=0.5) as c:
        client = ControllerClient(c.endpoint, timeout=5)
        runs = {}
        try:
            for name in ("silent", "done"):
                atk = Attacker(c.endpoint, ctx)
                run_id = uuid.uuid4().hex[:12]
                atk.send(p.encode(p.Hello(run_id=run_id, run=name, lrs=[0.1], control="auto")))
                wait_for(lambda a=atk: (a.drain(50), bool(a.received))[1], what="a welcome")
                runs[name] = (atk, run_id)
            atk, run_id = runs["done"]
            atk.send(p.encode(p.Bye(run_id=run_id, last_seq=0)))
            wait_for(lambda: {r["name"]: r["status"] for r in client.request("runs")}
                     == {"silent": "stale", "done": "finished"}, what="staleness")  # fmt: skip
            for name, word in (("silent", "is stale"), ("done", "has finished")):
                for op, args in (("set_lr", {"value": 0.01}), ("scale_lr", {"factor": 0.5}),
                                 ("pause", {}), ("approve", {})):  # fmt: skip
                    with pytest.raises(ControllerError, match=word) as err:
                        client.request(op, run=name, **args)
                    assert "\n" not in str(err.value)
            assert client.request("history", run="silent") == []
            assert client.request("history", run="done") == []
        finally:
            for atk, _ in runs.values():
                atk.close()
            ctx.term()
