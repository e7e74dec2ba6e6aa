"""Where detection runs: every run's :class:`RunController`, fed in commit order.

The controller commits metrics, acknowledges them, then hands each committed batch to a
detection backend, together with everything else that changes a run's controller (an LR
change took effect, pause, resume, a new policy, approve, forget). Two backends take the
same calls in the same order, so they make the same decisions:

- :class:`InlineDetection` runs the controllers in the calling thread;
- :class:`WorkerDetection` runs them in a child process (:func:`serve`), so the
  detectors' Python, most of the controller's CPU under load, uses another core while the
  receive loop keeps storing points and answering requests. Its decisions come back a few
  milliseconds later, in order.

The child is reached over a ZeroMQ PAIR socket on an ``ipc://`` path inside a private
(0700) temporary directory, so only this user can connect to it. Its messages are typed
msgspec Structs in msgpack (the operations below, and :class:`Done` / :class:`Approved`
back), checked on decoding like everything else lrpilot reads; nothing is pickled. Metrics
travel as the client's own msgpack frames and are decoded (and validated) again in the child.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import msgspec
import zmq

from ..client.protocol import MAGIC, Metrics, decode
from .control import Decision, RunController
from .policy import RunPolicy

__all__ = ["Detection", "InlineDetection", "WorkerDetection", "serve"]

log = logging.getLogger("lrpilot.detection")

#: The child's program (not ``-m``: this module is already imported by its package).
_CHILD = "import sys; from lrpilot.monitor.detection import serve; serve(*sys.argv[1:])"


class _Op(msgspec.Struct, array_like=True, tag=True, frozen=True):
    """An operation on one run's controller, in the order the controller made it."""

    run_id: str


class Open(_Op, tag="open"):
    """A run connected: give it a controller (a reconnecting run keeps its own)."""

    mode: str
    policy: RunPolicy


class Observe(_Op, tag="observe"):
    """A committed batch: the message's ``frame``-th metrics frame, ``points`` points."""

    frame: int
    points: int


class LrChanged(_Op, tag="lr_changed"):
    step: int


class Pause(_Op, tag="pause"):
    pass


class Resume(_Op, tag="resume"):
    pass


class SetPolicy(_Op, tag="policy"):
    policy: RunPolicy


class Approve(_Op, tag="approve"):
    """Return the advised decision awaiting approval, answered with :class:`Approved`."""

    token: int


class Drop(_Op, tag="drop"):
    pass


class Defaults(_Op, tag="defaults"):
    """Keyword arguments of every new :class:`RunController` (run_id unused)."""

    values: dict[str, float | int | None]


class Stop(_Op, tag="stop"):
    pass


Op = Open | Observe | LrChanged | Pause | Resume | SetPolicy | Approve | Drop | Defaults | Stop


class Done(msgspec.Struct, array_like=True, tag="done", frozen=True):
    """A message's operations are applied: its points, and the decisions they made in order."""

    points: int
    decisions: list[tuple[str, Decision]]


class Approved(msgspec.Struct, array_like=True, tag="approved", frozen=True):
    """The answer to :class:`Approve`, after the decisions made before it."""

    token: int
    decision: Decision | None
    decisions: list[tuple[str, Decision]]


_encode = msgspec.msgpack.Encoder().encode
_decode_ops = msgspec.msgpack.Decoder(list[Op]).decode
_decode_reply = msgspec.msgpack.Decoder(Done | Approved).decode


class _Runs:
    """The run controllers and the one function that applies an operation to them."""

    def __init__(self, control_defaults: dict[str, Any]) -> None:
        self.defaults = control_defaults
        self.controls: dict[str, RunController] = {}

    def apply(
        self, op: _Op, out: list[tuple[str, Decision]], batch: Metrics | None = None
    ) -> Decision | None:
        """Apply ``op`` (``batch``: an Observe's points); decisions go to ``out``; returns
        what an Approve returns."""
        run_id = op.run_id
        if isinstance(op, Open):
            if run_id not in self.controls:
                self.controls[run_id] = RunController(op.mode, policy=op.policy, **self.defaults)
            return None
        if isinstance(op, Drop):
            self.controls.pop(run_id, None)
            return None
        control = self.controls.get(run_id)
        if control is None:
            return None
        if isinstance(op, Observe):
            assert batch is not None
            for d in control.observe(batch.steps, batch.names, batch.keys, batch.values):
                out.append((run_id, d))
        elif isinstance(op, LrChanged):
            control.lr_changed(op.step)
        elif isinstance(op, Pause):
            control.pause()
        elif isinstance(op, Resume):
            control.resume()
        elif isinstance(op, SetPolicy):
            control.set_policy(op.policy)
        elif isinstance(op, Approve):
            return control.approve()
        return None


class Detection:
    """The backend interface; this base runs nothing and is never used alone."""

    #: Points handed over whose detection has not finished yet.
    backlog: int = 0
    #: A socket to poll for results, or None when results are ready at once.
    socket: zmq.Socket | None = None

    def open(self, run_id: str, mode: str, policy: RunPolicy) -> None:
        """A run connected: give it a controller (a reconnecting run keeps its own)."""
        self._put(Open(run_id, mode, policy))

    def observe(self, run_id: str, batch: Metrics, frames: list[bytes]) -> None:
        """Feed a committed batch (``frames``: the client's frames it was decoded from)."""
        raise NotImplementedError

    def lr_changed(self, run_id: str, step: int) -> None:
        """An LR change took effect at ``step``."""
        self._put(LrChanged(run_id, step))

    def pause(self, run_id: str) -> None:
        """A person took over the LR."""
        self._put(Pause(run_id))

    def resume(self, run_id: str) -> None:
        """Automatic control resumed."""
        self._put(Resume(run_id))

    def set_policy(self, run_id: str, policy: RunPolicy) -> None:
        """Put a reloaded policy in force."""
        self._put(SetPolicy(run_id, policy))

    def drop(self, run_id: str) -> None:
        """Forget the run's controller (a finished or long-silent run)."""
        self._put(Drop(run_id))

    def approve(self, run_id: str) -> Decision | None:
        """The advised decision awaiting approval, to send now, or None.

        Decisions caused before it are in :meth:`results` when this returns: record them
        first, to keep the order.
        """
        raise NotImplementedError

    def results(self) -> list[tuple[str, Decision]]:
        """Decisions made so far and not yet returned, in order, as (run id, decision)."""
        raise NotImplementedError

    def flush(self) -> None:
        """Hand over what has been queued (a turn's worth)."""

    def close(self) -> None:
        """Stop; what was not processed is lost (the points are stored)."""

    def _put(self, op: _Op) -> None:
        raise NotImplementedError


class InlineDetection(Detection):
    """Runs every run's controller in the calling thread."""

    def __init__(self, control_defaults: dict[str, Any] | None = None) -> None:
        self._runs = _Runs(dict(control_defaults or {}))
        self._out: list[tuple[str, Decision]] = []

    def observe(self, run_id: str, batch: Metrics, frames: list[bytes]) -> None:
        self._runs.apply(Observe(run_id, 0, len(batch.steps)), self._out, batch)

    def approve(self, run_id: str) -> Decision | None:
        return self._runs.apply(Approve(run_id, 0), self._out)

    def results(self) -> list[tuple[str, Decision]]:
        out, self._out = self._out, []
        return out

    def _put(self, op: _Op) -> None:
        self._runs.apply(op, self._out)


class WorkerDetection(Detection):
    """Runs every run's controller in a child process, fed over a private socket.

    Args:
        context: the ZeroMQ context of the controller.
        control_defaults: keyword arguments for every :class:`RunController`.
        approve_timeout: seconds :meth:`approve` waits for the child's answer.

    Raises:
        OSError: the child process could not be started.
    """

    def __init__(
        self,
        context: zmq.Context,
        control_defaults: dict[str, Any] | None = None,
        approve_timeout: float = 10.0,
    ) -> None:
        self.approve_timeout = approve_timeout
        self._dir = tempfile.mkdtemp(prefix="lrpilot-detect-")  # 0700: only this user
        endpoint = f"ipc://{os.path.join(self._dir, 'sock')}"
        sock = self.socket = context.socket(zmq.PAIR)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(endpoint)  # queues until the child has bound
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, endpoint, str(os.getpid())],
            stdin=subprocess.DEVNULL,
        )
        self._ops: list[_Op] = [Defaults("", dict(control_defaults or {}))]
        self._frames: list[bytes] = []
        self._out: list[tuple[str, Decision]] = []
        self._token = 0
        self._approved: dict[int, Decision | None] = {}
        self.backlog = 0

    def observe(self, run_id: str, batch: Metrics, frames: list[bytes]) -> None:
        self._ops.append(Observe(run_id, len(self._frames), len(batch.steps)))
        self._frames.append(frames[-1])
        self.backlog += len(batch.steps)

    def _put(self, op: _Op) -> None:
        self._ops.append(op)

    def flush(self) -> None:
        if not self._ops:
            return
        assert self.socket is not None
        self.socket.send_multipart([_encode(self._ops), *self._frames], copy=False)
        self._ops, self._frames = [], []

    def results(self) -> list[tuple[str, Decision]]:
        self._receive(0)
        out, self._out = self._out, []
        return out

    def approve(self, run_id: str) -> Decision | None:
        self._token += 1
        token = self._token
        self._put(Approve(run_id, token))
        self.flush()
        deadline = time.monotonic() + self.approve_timeout
        while token not in self._approved:
            left = deadline - time.monotonic()
            if left <= 0 or self._proc.poll() is not None:
                raise TimeoutError("the detection process did not answer")
            self._receive(int(left * 1000) + 1)
        return self._approved.pop(token)

    def _receive(self, timeout_ms: int) -> None:
        sock = self.socket
        assert sock is not None
        while sock.poll(timeout_ms):
            timeout_ms = 0
            reply = _decode_reply(sock.recv())
            self._out.extend(reply.decisions)
            if isinstance(reply, Done):
                self.backlog -= reply.points
            else:  # decisions made before the approval come first
                self._approved[reply.token] = reply.decision

    @property
    def alive(self) -> bool:
        """Whether the child process is running."""
        return self._proc.poll() is None

    def close(self) -> None:
        if self.socket is not None:
            with contextlib.suppress(zmq.ZMQError):
                self.socket.send(_encode([Stop("")]), zmq.NOBLOCK)
            self.socket.close(0)
            self.socket = None
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        shutil.rmtree(self._dir, ignore_errors=True)


def serve(endpoint: str, parent: str) -> None:
    """The child's loop: apply each operation in order; answer with decisions and progress.

    Runs until told to stop, or until ``parent`` (a pid) is no longer its parent.
    """
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind(endpoint)
    runs = _Runs({})
    failures = 0

    def send(reply: Done | Approved) -> None:
        # Never block: with no peer (the controller is gone) a PAIR send would wait forever.
        with contextlib.suppress(zmq.Again):
            sock.send(_encode(reply), zmq.NOBLOCK)

    try:
        while True:
            if os.getppid() != int(parent):  # the controller died without saying stop
                return
            if not sock.poll(1000):
                continue
            header, *frames = sock.recv_multipart(copy=True)
            out: list[tuple[str, Decision]] = []
            points = 0
            for op in _decode_ops(header):
                if isinstance(op, Stop):
                    return
                if isinstance(op, Defaults):
                    runs.defaults = op.values
                    continue
                try:
                    batch = None
                    if isinstance(op, Observe):
                        points += op.points
                        batch = decode([MAGIC, frames[op.frame]])
                    decision = runs.apply(op, out, batch)
                    if isinstance(op, Approve):
                        send(Approved(op.token, decision, out))
                        out = []
                except Exception:  # one run's bad batch must not stop every run's detection
                    failures += 1
                    if failures <= 10 or failures % 1000 == 0:
                        log.exception("detection failed on %s for run %s (%d so far)",
                                      type(op).__name__, op.run_id, failures)  # fmt: skip
            send(Done(points, out))
    finally:
        sock.close(0)
        ctx.term()
