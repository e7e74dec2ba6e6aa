"""Shared by the reliability tests and bench/ingest.py: soak switch, simulated clients,
the training subprocess, database checks and controller memory.

A :class:`SimClient` speaks the wire protocol on a raw DEALER socket the way
:class:`~lrpilot.client.transport.ZmqTransport` does (hello, a bounded window of
unacknowledged batches, resend on ``resend``/``welcome``, hello again on ``rehello`` or
silence, bye), without torch, so one thread can drive many of them with :func:`drive`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from hypothesis import HealthCheck, settings
from lrpilot.client.protocol import (
    BatchAck,
    Bye,
    Command,
    CommandAck,
    Hello,
    Metrics,
    ProtocolError,
    Rehello,
    Welcome,
    decode,
    encode,
)
from support import ServeProcess

#: ``LRPILOT_SOAK=1`` selects the long mode. Read at import: the suite's autouse fixture
#: removes LRPILOT_* variables before each test.
SOAK = os.environ.get("LRPILOT_SOAK", "") not in ("", "0")


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings of the fuzz tests: fixed inputs by default, fresh ones in soak mode,
    no deadline (a live server answers in its own time), no example database."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=not SOAK,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


TRAIN_SCRIPT = Path(__file__).with_name("train_until.py")
#: Extra ``lrpilot serve`` arguments: no dashboard (its default port may be taken).
SERVE_ARGS = ("--http", "off")
SCALARS = ("loss", "acc", "grad_norm", "lr")


@dataclass
class SimClient:
    """One simulated run: ``steps`` steps of 4 scalars in batches of ``batch_steps`` steps.

    Args:
        endpoint: the controller.
        run: the run name.
        steps: steps to send.
        batch_steps: steps per Metrics batch.
        window: most unacknowledged batches in flight (the real client's bounded window).
        ack_timeout: seconds of silence after which Hello is sent again.
    """

    endpoint: str
    run: str
    steps: int
    batch_steps: int = 20
    window: int = 16
    ack_timeout: float = 2.0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    sent_points: int = 0
    acked_points: int = 0
    resent: int = 0
    done: bool = False
    finished_at: float = 0.0
    sock: zmq.Socket | None = None
    _next_step: int = 0
    _seq: int = 0
    _unacked: OrderedDict[int, tuple[list[bytes], int]] = field(default_factory=OrderedDict)
    _welcomed: bool = False
    _last_heard: float = 0.0
    _last_hello: float = -1e9
    _bye_sent: bool = False

    def connect(self, ctx: zmq.Context) -> zmq.Socket:
        """Open and connect the DEALER socket; the caller polls it."""
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.connect(self.endpoint)
        self.sock = sock
        return sock

    def _hello(self, now: float) -> None:
        assert self.sock is not None
        self._last_hello = now
        self.sock.send_multipart(encode(Hello(run_id=self.run_id, run=self.run, lrs=[0.1])))

    def _batch(self) -> tuple[list[bytes], int]:
        first = self._next_step
        last = min(first + self.batch_steps, self.steps)
        self._next_step = last
        self._seq += 1
        n = last - first
        steps = [s for s in range(first, last) for _ in range(4)]
        values: list[float] = []
        for s in range(first, last):
            values += [1.0 / (1.0 + 0.01 * s), 0.5 + (s % 7) * 0.01, 1.0 + (s % 5) * 0.1, 0.1]
        msg = Metrics(
            run_id=self.run_id,
            seq=self._seq,
            names=list(SCALARS),
            steps=steps,
            keys=[0, 1, 2, 3] * n,
            values=values,
            base_seq=next(iter(self._unacked), self._seq),
        )
        return encode(msg), 4 * n

    def pump(self, now: float) -> None:
        """Send what the window allows, hello when needed, bye at the end."""
        assert self.sock is not None
        if self.done:
            return
        if (
            self._welcomed
            and now - self._last_heard > self.ack_timeout
            and (self._unacked or self._bye_sent)
        ):
            self._welcomed = False
        if not self._welcomed:
            if now - self._last_hello > 0.5:
                self._hello(now)
            return
        while len(self._unacked) < self.window and self._next_step < self.steps:
            frames, n = self._batch()
            self._unacked[self._seq] = (frames, n)
            self.sock.send_multipart(frames)
            self.sent_points += n
        if not self._unacked and self._next_step >= self.steps and not self._bye_sent:
            self.sock.send_multipart(encode(Bye(run_id=self.run_id, last_seq=self._seq)))
            self._bye_sent = True
            self._last_heard = now

    def _resend(self) -> None:
        assert self.sock is not None
        for frames, _ in self._unacked.values():
            self.sock.send_multipart(frames)
            self.resent += 1

    def on_frames(self, frames: list[bytes], now: float) -> None:
        """Handle one message from the controller."""
        try:
            msg = decode(frames)
        except ProtocolError:
            return
        self._last_heard = now
        if isinstance(msg, Welcome):
            self._welcomed = True
            self._acked(msg.committed_seq)
            self._resend()
        elif isinstance(msg, BatchAck):
            self._acked(msg.seq)
            if msg.resend:
                self._resend()
            if self._bye_sent and not self._unacked:
                self.done = True
                self.finished_at = now
        elif isinstance(msg, Rehello):
            self._welcomed = False
            self._last_hello = -1e9
        elif isinstance(msg, Command):  # a simulated run has no optimizer: refuse politely
            assert self.sock is not None
            ack = CommandAck(
                run_id=self.run_id,
                command_id=msg.command_id,
                step=self._next_step,
                ok=False,
                error="simulated run",
            )
            self.sock.send_multipart(encode(ack))

    def _acked(self, seq: int) -> None:
        while self._unacked and next(iter(self._unacked)) <= seq:
            _, (_, n) = self._unacked.popitem(last=False)
            self.acked_points += n


def drive(clients: list[SimClient], timeout: float, ctx: zmq.Context | None = None) -> float:
    """Run ``clients`` on this thread until all finished (bye acknowledged) or ``timeout``
    seconds; returns the elapsed seconds. Sockets are closed on return."""
    ctx = ctx or zmq.Context.instance()
    poller = zmq.Poller()
    by_sock: dict[zmq.Socket, SimClient] = {}
    for c in clients:
        by_sock[c.connect(ctx)] = c
        poller.register(c.sock, zmq.POLLIN)
    t0 = time.monotonic()
    try:
        while not all(c.done for c in clients):
            now = time.monotonic()
            if now - t0 > timeout:
                break
            for c in clients:
                c.pump(now)
            for sock, _ in poller.poll(50):
                client = by_sock[sock]
                now = time.monotonic()
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    client.on_frames(frames, now)
        return time.monotonic() - t0
    finally:
        for sock in by_sock:
            sock.close(0)


def start_training(endpoint: str, out: Path, stop_file: Path, *args: str) -> subprocess.Popen[str]:
    """Start tests/reliability/train_until.py: a real torch loop with Monitor that runs
    until ``stop_file`` exists, then writes ``out`` (JSON)."""
    return subprocess.Popen(
        [
            sys.executable,
            str(TRAIN_SCRIPT),
            "--endpoint",
            endpoint,
            "--out",
            str(out),
            "--stop-file",
            str(stop_file),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish_training(proc: subprocess.Popen[str], out: Path, timeout: float = 60) -> dict:
    """Wait for a training process started by :func:`start_training`; return its JSON."""
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
        raise AssertionError(f"training did not finish within {timeout} s:\n{log}") from None
    assert proc.returncode == 0, f"training failed ({proc.returncode}):\n{log}"
    return json.loads(out.read_text())


def stop_process(proc: subprocess.Popen[str] | None) -> None:
    """Kill a subprocess if it is still running (for ``finally`` blocks)."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.communicate(timeout=10)


def integrity(db: Path) -> str:
    """``PRAGMA integrity_check`` of ``db`` (read-only connection)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return ", ".join(r[0] for r in con.execute("PRAGMA integrity_check").fetchall())
    finally:
        con.close()


def orphan_points(db: Path) -> int:
    """Points whose series id has no row in ``series`` (they are invisible to every read)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(
            "SELECT COUNT(*) FROM points WHERE series NOT IN (SELECT id FROM series)"
        ).fetchone()[0]
    finally:
        con.close()


def step_counts(db: Path, run_id: str) -> dict[int, int]:
    """Number of stored points per step of one run."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT p.step, COUNT(*) FROM points p JOIN series s ON p.series = s.id"
            " WHERE s.run_id=? GROUP BY p.step",
            (run_id,),
        ).fetchall()
        return dict(rows)
    finally:
        con.close()


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


class Serve(ServeProcess):
    """``lrpilot serve`` without the dashboard, with optional extra arguments."""

    def __init__(self, db: Path, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        super().__init__(db, port, *SERVE_ARGS, *extra)
