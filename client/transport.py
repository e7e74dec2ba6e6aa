"""Moving a run's records to the controller and its commands back, off the training thread.

The training thread only appends to deques (:meth:`BaseTransport.put`, :meth:`put_ack`);
a daemon thread owns the ZeroMQ socket, turns records into columnar ``Metrics`` batches,
keeps a bounded window of unacknowledged batches, resends them after a reconnect, and
queues incoming ``Command`` messages for the training thread to apply between steps.

Transports are injectable (as httpx does with ``MockTransport``): :class:`MemoryTransport`
records what would be sent, so Monitor's unit tests need no socket.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import warnings
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import torch

from .protocol import (
    BatchAck,
    Bye,
    Command,
    CommandAck,
    Heartbeat,
    Hello,
    Metrics,
    ProtocolError,
    Rehello,
    Welcome,
    check_endpoint,
    decode,
    encode,
)

__all__ = [
    "BaseTransport",
    "Flush",
    "MemoryTransport",
    "TransportReport",
    "ZmqTransport",
]

# A record is (step, names, values): values is a tuple of floats or 0-dim tensors, or one 1-D
# tensor of len(names) values (a StatsCollector's statistics for that step); the flush's single
# host copy holds every tensor value of its records, in order.
Record = tuple[int, tuple[str, ...], "tuple[Any, ...] | torch.Tensor"]


@dataclass
class Flush:
    """Records handed over by the training thread at one flush.

    ``tensors`` is the one host copy of every tensor value in ``records`` (in order), made
    non-blocking; ``ready`` (a CUDA event or None) says when that copy has landed.
    """

    records: list[Record]
    tensors: Any = None
    ready: Any = None


@dataclass
class TransportReport:
    """What happened to a run's data, as known when the transport closed."""

    sent_points: int = 0
    acked_points: int = 0
    dropped_points: int = 0
    unacked_points: int = 0
    resent_batches: int = 0
    connected: bool = False
    errors: list[str] = field(default_factory=list)


class BaseTransport:
    """The contract between Monitor and a transport. Every method is safe to call from the
    training thread and returns at once."""

    def __init__(self) -> None:
        self.commands: deque[Command] = deque()
        self.report = TransportReport()

    def start(self, hello: Hello) -> None:
        """Begin delivering for the run described by ``hello``."""

    def put(self, flush: Flush) -> None:
        """Hand over a flush of records; never blocks."""
        raise NotImplementedError

    def put_ack(self, ack: CommandAck) -> None:
        """Queue a command acknowledgement; never blocks."""
        raise NotImplementedError

    def close(self, timeout: float) -> TransportReport:
        """Deliver what is pending (bounded by ``timeout``), say bye, and stop."""
        raise NotImplementedError


class MemoryTransport(BaseTransport):
    """Keeps everything in memory; tests push commands into ``commands`` by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.hello: Hello | None = None
        self.flushes: list[Flush] = []
        self.acks: list[CommandAck] = []
        self.closed = False

    def start(self, hello: Hello) -> None:
        self.hello = hello

    def put(self, flush: Flush) -> None:
        self.flushes.append(flush)

    def put_ack(self, ack: CommandAck) -> None:
        self.acks.append(ack)

    def close(self, timeout: float) -> TransportReport:
        self.closed = True
        return self.report

    def points(self) -> list[tuple[int, str, float]]:
        """Every point handed over so far, as (step, name, value)."""
        out: list[tuple[int, str, float]] = []
        for flush in self.flushes:
            names: list[str] = []
            batch = to_columns(flush, names)
            out.extend((s, names[k], v) for s, k, v in zip(*batch, strict=True))
        return out


def to_columns(flush: Flush, names: list[str]) -> tuple[list[int], list[int], list[float]]:
    """Turn a flush into columnar (steps, keys, values), interning series into ``names``."""
    index = {n: i for i, n in enumerate(names)}
    steps: list[int] = []
    keys: list[int] = []
    values: list[float] = []
    host = iter(flush.tensors.tolist()) if flush.tensors is not None else None
    for step, rec_names, rec_values in flush.records:
        if isinstance(rec_values, torch.Tensor):  # a statistics vector, already on the host
            rec_values = [next(host) for _ in rec_names]  # type: ignore[arg-type]
        for name, value in zip(rec_names, rec_values, strict=True):
            key = index.get(name)
            if key is None:
                key = index[name] = len(names)
                names.append(name)
            if type(value) is not float:
                value = next(host) if isinstance(value, torch.Tensor) else float(value)
            steps.append(step)
            keys.append(key)
            values.append(value)
    return steps, keys, values


class ZmqTransport(BaseTransport):
    """At-least-once delivery over a ZeroMQ DEALER socket, run by a daemon thread.

    Args:
        endpoint: the controller's endpoint.
        max_points: bound on points held (unsent or unacknowledged); beyond it the oldest
            batch is dropped and counted.
        ack_timeout: seconds without any answer before the controller is presumed gone and
            Hello is sent again (it then resends every unacknowledged batch).
        heartbeat: seconds between heartbeats while no metrics flow.
        poll_ms: longest wait between looks at the timers (heartbeat, resend, reconnect);
            records, command acks and close wake the thread at once.
        curve: optional (client_public, client_secret, server_public) Z85 keys for CURVE.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        max_points: int = 1_000_000,
        ack_timeout: float = 2.0,
        heartbeat: float = 1.0,
        poll_ms: int = 20,
        curve: tuple[bytes, bytes, bytes] | None = None,
    ) -> None:
        super().__init__()
        self.endpoint = check_endpoint(endpoint)
        self.max_points = max_points
        self.ack_timeout = ack_timeout
        self.heartbeat = heartbeat
        self.poll_ms = poll_ms
        self.curve = curve
        self._outbox: deque[Flush] = deque()
        self._acks: deque[CommandAck] = deque()
        self._applied: OrderedDict[int, CommandAck] = OrderedDict()  # re-ack resent commands
        self._queued_commands: set[int] = set()
        self._window: OrderedDict[int, tuple[Metrics, int]] = OrderedDict()  # seq -> batch
        self._window_points = 0
        self._names: list[str] = []
        self._seq = 0
        self._last_step = 0
        self._stop = threading.Event()
        self._closing = threading.Event()
        self._bye_acked = threading.Event()
        self._thread: threading.Thread | None = None
        self._hello: Hello | None = None
        self._warned: set[str] = set()
        # The write end of a pipe the sender thread polls beside its socket: one byte wakes
        # it (a command's ack must not wait for the next poll). Closed by that thread, under
        # the lock, so a late write never reaches a reused descriptor.
        self._wake_fd: int | None = None
        self._wake_lock = threading.Lock()

    # ---------------------------------------------------------------- training thread side

    def start(self, hello: Hello) -> None:
        self._hello = hello
        wake_r, self._wake_fd = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(self._wake_fd, False)
        self._thread = threading.Thread(
            target=self._run, args=(wake_r,), name=f"lrpilot-{hello.run_id}", daemon=True
        )
        self._thread.start()

    def put(self, flush: Flush) -> None:
        self._outbox.append(flush)
        self._wake()

    def put_ack(self, ack: CommandAck) -> None:
        self._acks.append(ack)
        self._wake()

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_fd is not None:
                with contextlib.suppress(OSError):  # a full pipe: a wake-up is pending anyway
                    os.write(self._wake_fd, b"\0")

    def close(self, timeout: float) -> TransportReport:
        if self._thread is None:
            return self.report
        self._closing.set()
        self._wake()
        # Wait for the final acks (bounded), then stop: linger alone is not trusted.
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(1.0)
        self.report.unacked_points = self._window_points
        return self.report

    # ---------------------------------------------------------------- sender thread

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"lrpilot: {message}", RuntimeWarning, stacklevel=1)

    def _run(self, wake_r: int) -> None:
        try:
            self._run_socket(wake_r)
        finally:
            with self._wake_lock:
                assert self._wake_fd is not None
                os.close(self._wake_fd)
                self._wake_fd = None
            os.close(wake_r)

    def _run_socket(self, wake_r: int) -> None:
        import zmq  # the socket lives and dies on this thread

        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue into a pipe that is not connected
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        if self.curve is not None:
            sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = self.curve
        try:
            sock.connect(self.endpoint)
            self._loop(sock, zmq, wake_r)
        except Exception as exc:  # a transport bug must not take the training loop down
            self.report.errors.append(repr(exc))
            self._warn_once("crash", f"the transport stopped: {exc!r}; metrics are not sent")
        finally:
            sock.close(linger=0)

    def _send(self, sock: Any, zmq: Any, msg: Any) -> bool:
        try:
            sock.send_multipart(encode(msg), flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def _loop(self, sock: Any, zmq: Any, wake_r: int) -> None:
        assert self._hello is not None
        hello = self._hello
        run_id = hello.run_id
        welcomed = False
        ever_welcomed = False
        last_heard = time.monotonic()
        last_hello = -math.inf
        last_sent = time.monotonic()
        hello_every = 0.25
        close_deadline: float | None = None
        bye_sent = False
        # Patience grows while the controller is slow to answer (a flood of resends from
        # every client would only slow it more) and shrinks back once acks flow again.
        patience = self.ack_timeout
        last_progress = time.monotonic()  # when the window last shrank (or became non-empty)
        last_resend = -math.inf
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(wake_r, zmq.POLLIN)

        while not self._stop.is_set():
            now = time.monotonic()
            if self._closing.is_set() and close_deadline is None:
                # Nothing will ever answer a controller that was never reached: don't wait.
                close_deadline = now + (0.5 if not ever_welcomed else math.inf)
            # -- incoming (or woken by put, put_ack, close)
            ready = dict(poller.poll(self.poll_ms))
            if wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 4096):
                        pass
            if sock in ready:
                while True:
                    try:
                        frames = sock.recv_multipart(flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    last_heard = time.monotonic()
                    try:
                        msg = decode(frames)
                    except ProtocolError as exc:
                        self._warn_once(
                            "decode", f"ignored a bad message from the controller: {exc}"
                        )
                        continue
                    if isinstance(msg, Welcome):
                        welcomed = ever_welcomed = True
                        self.report.connected = True
                        hello_every = 0.25
                        self._acked(msg.committed_seq)
                        self._resend(sock, zmq)
                        last_progress = last_resend = time.monotonic()
                    elif isinstance(msg, BatchAck):
                        if self._acked(msg.seq):
                            last_progress = time.monotonic()
                            patience = self.ack_timeout
                        # Asked for the rest again (a gap, or a store outage): at most once
                        # per half patience, not once per ack, or resends grow quadratically.
                        if msg.resend and time.monotonic() - last_resend >= patience / 2:
                            self._resend(sock, zmq)
                            last_resend = time.monotonic()
                        if bye_sent and not self._window:
                            self._bye_acked.set()
                    elif isinstance(msg, Command):
                        self._on_command(sock, zmq, msg)
                    elif isinstance(msg, Rehello):
                        welcomed = False
                        last_hello = -math.inf
            now = time.monotonic()
            # -- outgoing records
            while self._outbox:
                self._enqueue(self._outbox.popleft(), run_id, sock, zmq, welcomed)
            while self._acks:
                ack = self._acks.popleft()
                self._applied[ack.command_id] = ack
                while len(self._applied) > 1024:
                    self._applied.popitem(last=False)
                self._queued_commands.discard(ack.command_id)
                self._send(sock, zmq, ack)
            if not self._window:
                last_progress = now
            # -- (re)connect: no answer for a while means the controller went away
            if welcomed and now - last_heard > patience and (self._window or bye_sent):
                welcomed = False
                patience = min(patience * 2, 30.0)
            elif (
                welcomed and now - last_progress > patience and now - last_resend > patience
            ):  # it answers but our oldest batch is not getting through: send it again
                self._resend(sock, zmq)
                last_resend = now
            # Back off only after a hello went out: not sent means not connected yet (the
            # socket queues nothing then), so the next turn tries again.
            if not welcomed and now - last_hello >= hello_every and self._send(sock, zmq, hello):
                last_hello = now
                hello_every = min(hello_every * 2, 2.0)
                last_sent = now
            if welcomed and now - last_sent > self.heartbeat:
                self._send(sock, zmq, Heartbeat(run_id=run_id, step=self._last_step))
                last_sent = now
                if now - last_heard > self.heartbeat + patience:
                    welcomed = False
            # -- closing: wait for every batch to be acked, then bye and its ack
            if close_deadline is not None:
                if self._outbox or self._acks:
                    continue
                if not self._window and welcomed and not bye_sent:
                    self._send(
                        sock, zmq,
                        Bye(run_id=run_id, last_seq=self._seq, dropped=self.report.dropped_points),
                    )  # fmt: skip
                    bye_sent = True
                    last_sent = now
                if self._bye_acked.is_set() or now > close_deadline:
                    return

    def _enqueue(self, flush: Flush, run_id: str, sock: Any, zmq: Any, welcomed: bool) -> None:
        if flush.ready is not None:
            flush.ready.synchronize()  # the one device->host copy of this flush has landed
        steps, keys, values = to_columns(flush, self._names)
        if not steps:
            return
        self._seq += 1
        self._last_step = steps[-1]
        used = sorted(set(keys))
        remap = {k: i for i, k in enumerate(used)}
        batch = Metrics(
            run_id=run_id,
            seq=self._seq,
            names=[self._names[k] for k in used],
            steps=steps,
            keys=[remap[k] for k in keys],
            values=values,
        )
        n = len(steps)
        self._window[self._seq] = (batch, n)
        self._window_points += n
        while self._window_points > self.max_points and len(self._window) > 1:
            _, (_, dropped) = self._window.popitem(last=False)
            self._window_points -= dropped
            self.report.dropped_points += dropped
            self._warn_once(
                "drop",
                f"the controller at {self.endpoint} is not acknowledging; dropping the oldest "
                f"points beyond {self.max_points} (see Monitor.dropped)",
            )
        if welcomed:
            self._send_batch(sock, zmq, self._seq)

    def _send_batch(self, sock: Any, zmq: Any, seq: int) -> bool:
        batch, n = self._window[seq]
        base = next(iter(self._window))
        msg = Metrics(
            run_id=batch.run_id, seq=seq, names=batch.names, steps=batch.steps,
            keys=batch.keys, values=batch.values, dropped=self.report.dropped_points,
            base_seq=base,
        )  # fmt: skip
        if self._send(sock, zmq, msg):
            self.report.sent_points += n
            return True
        return False

    def _resend(self, sock: Any, zmq: Any) -> None:
        for seq in list(self._window):
            if not self._send_batch(sock, zmq, seq):
                break
            self.report.resent_batches += 1

    def _acked(self, seq: int) -> bool:
        """Drop batches up to ``seq`` from the window; True if any was dropped."""
        progressed = False
        while self._window and next(iter(self._window)) <= seq:
            _, (_, n) = self._window.popitem(last=False)
            self._window_points -= n
            self.report.acked_points += n
            progressed = True
        return progressed

    def _on_command(self, sock: Any, zmq: Any, cmd: Command) -> None:
        done = self._applied.get(cmd.command_id)
        if done is not None:  # a resend after a lost ack: answer again, never apply twice
            self._send(sock, zmq, done)
        elif cmd.command_id not in self._queued_commands:
            self._queued_commands.add(cmd.command_id)
            self.commands.append(cmd)
