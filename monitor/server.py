"""The controller: one ZeroMQ ROUTER socket, one SQLite store, one thread.

Clients (training runs) say Hello, stream Metrics batches and answer Commands; the CLI and
the dashboard send Requests on the same socket. Each loop turn reads everything that has
arrived, answering requests, command acks, heartbeats and hellos at once and queueing
metrics; then it commits at most ``_COMMIT_POINTS`` queued points in one transaction and
acknowledges them, so an ack always means "on disk" and a request never waits behind more
than one such commit. Committed batches feed each run's :class:`RunController` through a
detection backend (:mod:`.detection`; by default a child process on another core), whose
decisions come back in order and become events and, in auto mode, LR commands.

The WAL is copied into the database file by a thread of its own (:mod:`.checkpoint`), so
that no commit of the loop pays for a checkpoint.

Per-run state in memory is bounded: finished and long-silent runs are forgotten (the store
keeps everything), and at most ``_MAX_SESSIONS`` runs are held.

Anything that does not decode, or does not fit the run it claims, is counted by reason and
dropped; it never stops the loop.

This module holds the loop, the ingest path and the sessions' lifetime; two parts of the
:class:`Controller` live in modules of their own: :mod:`.commands` (decisions become events
and LR commands, acks close them) and :mod:`.requests` (the CLI's and dashboard's requests).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any

import zmq

from ..client.protocol import (
    MAX_MESSAGE_BYTES,
    BatchAck,
    Bye,
    CommandAck,
    Heartbeat,
    Hello,
    Metrics,
    ProtocolError,
    Rehello,
    Request,
    Welcome,
    check_endpoint,
    decode,
    encode,
)
from .checkpoint import Checkpointer
from .commands import CommandFlow
from .detection import Detection, InlineDetection, WorkerDetection
from .errors import (
    RunOwned,
    ServeError,
    StoreError,
    UnknownRun,
)
from .policy import RunPolicy
from .policy_file import DEFAULT_POLICY, PolicyFile, PolicyFileError, PolicyWatcher
from .requests import RequestHandlers
from .sessions import ControllerStats, Session
from .store import Store

__all__ = ["Controller", "ControllerStats"]

log = logging.getLogger("lrpilot.controller")

#: A turn reads at most this many messages before it commits.
_DRAIN_LIMIT = 5000
#: Points per turn's write (one executemany): a request or command ack read during it waits
#: for it. Under bench/ingest.py's load on 2 cores a 10,000-point commit took 56 ms at p90
#: (100 ms at p99), a 2,000-point one 9 ms (35 ms): requests wait a fifth as long.
_COMMIT_POINTS = 2_000
#: Points one transaction gathers, a turn's write at a time, before it is committed and its
#: batches acknowledged: with 100 runs streaming, a commit writes each run's changed pages
#: whatever the number of points; sharing commits took bench/ingest.py from 187k to 244k
#: records/s (median of 3, docs/reliability.md). It commits sooner when nothing is queued, after
#: ``_TXN_SECONDS``, and before any other message is handled, so a request waits for one
#: turn's write and the commit at most, and acknowledgements never wait long.
_TXN_POINTS = 20_000
_TXN_SECONDS = 0.05
#: Points read but not yet committed; metrics beyond it are dropped unacknowledged (counted
#: as "overloaded"; their clients resend). Well-behaved clients never get near it: each
#: keeps a bounded window of unacknowledged batches.
_PENDING_POINTS = 250_000
#: Points committed but not yet through detection; commits wait beyond it, so detection
#: sees every point and its backlog (memory, the delay of automatic commands) stays bounded.
_DETECT_BACKLOG = 60_000
#: Runs held in memory at most; beyond it the longest silent are forgotten first.
_MAX_SESSIONS = 1024
#: A finished run, or one silent this many times ``stale_after``, is forgotten after
#: ``_FORGET_AFTER`` seconds (at least): it says Hello again if it comes back.
_FORGET_AFTER = 60.0
_STALE_FACTOR = 4


def _is_loopback(endpoint: str) -> bool:
    if not endpoint.startswith("tcp://"):
        return endpoint.startswith(("ipc://", "inproc://"))
    host = endpoint[6:].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Controller(CommandFlow, RequestHandlers):
    """The lrpilot controller.

    Args:
        db: path of the SQLite database (created if missing).
        listen: ZeroMQ endpoint to bind, e.g. ``tcp://127.0.0.1:5555`` (``:*`` picks a port;
            read :attr:`endpoint` after :meth:`bind`).
        stale_after: seconds of silence after which a run is shown as stale.
        control_defaults: keyword arguments for every run's :class:`RunController`.
        policy: a policy TOML file (docs/policy.md), watched and hot-reloaded; a broken
            save keeps the last good policy.
        keys: a directory from ``lrpilot keys``: clients must then authenticate with ZMQ
            CURVE (a key in ``authorized/``); required to listen off loopback.
        detect: ``"process"`` runs detection in a child process, on another core (falls
            back to ``"inline"``, in the loop's thread, if the child cannot start).

    Raises:
        ServeError: on :meth:`bind`, if the endpoint is malformed, not loopback, in use, or
            the database is locked by another controller or cannot be written.
    """

    def __init__(
        self,
        db: str | Path,
        listen: str = "tcp://127.0.0.1:5555",
        *,
        stale_after: float = 15.0,
        control_defaults: dict[str, Any] | None = None,
        policy: str | Path | None = None,
        keys: str | Path | None = None,
        detect: str = "process",
    ) -> None:
        if detect not in ("process", "inline"):
            raise ValueError(f"detect must be 'process' or 'inline', got {detect!r}")
        self.detect = detect
        try:
            self.listen = check_endpoint(listen)
        except ValueError as exc:
            raise ServeError(str(exc)) from None
        self.keys = Path(keys) if keys is not None else None
        if not _is_loopback(self.listen) and self.keys is None:
            raise ServeError(
                f"refusing to listen on {self.listen} without authentication: it is not a "
                "loopback address; create keys with `lrpilot keys DIR` and pass --keys DIR, "
                "or listen on tcp://127.0.0.1:PORT"
            )
        self.db_path = Path(db)
        self.stale_after = stale_after
        self.control_defaults = dict(control_defaults or {})
        self.policy_path = Path(policy) if policy is not None else None
        self.policy: PolicyFile = DEFAULT_POLICY
        self._watcher: PolicyWatcher | None = None
        self._policy_updates: deque[PolicyFile] = deque()
        self.stats = ControllerStats()
        self.endpoint = ""
        self.store: Store | None = None
        self._sessions: dict[str, Session] = {}
        self._stop = threading.Event()
        self.ready = threading.Event()
        self._lock_file: Any = None
        self._sock: zmq.Socket | None = None
        self._ctx: zmq.Context | None = None
        self._auth: Any = None
        self._last_warned: dict[str, float] = {}
        self._detection: Detection = InlineDetection(self.control_defaults)
        self._pending: deque[tuple[bytes, Metrics, list[bytes]]] = deque()
        self._pending_points = 0
        # Written in the open transaction, not yet committed (nor acknowledged, nor detected).
        self._uncommitted: list[tuple[bytes, Metrics, list[bytes], str]] = []
        self._uncommitted_points = 0
        self._txn_started = 0.0
        self._poller = zmq.Poller()
        self._next_sweep = 0.0
        self._checkpointer: Checkpointer | None = None

    # ---------------------------------------------------------------- lifecycle

    def bind(self) -> str:
        """Load the policy, lock and open the database, bind the socket; returns the endpoint."""
        if self.policy_path is not None:
            try:
                self._watcher = PolicyWatcher(
                    self.policy_path, on_change=self._policy_updates.append,
                    on_error=lambda line: log.warning("policy not reloaded: %s", line),
                )  # fmt: skip
            except PolicyFileError as exc:
                raise ServeError(str(exc)) from None
            self.policy = self._watcher.policy
        lock_path = self.db_path.with_name(self.db_path.name + ".lock")
        try:
            self._lock_file = open(lock_path, "a+")  # noqa: SIM115 - held until close()
        except OSError as exc:
            raise ServeError(
                f"cannot create {lock_path}: {exc.strerror}; choose a writable --db"
            ) from None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise ServeError(
                f"{self.db_path} is in use by another lrpilot controller; stop it or use "
                "another --db"
            ) from None
        try:
            self.store = Store(self.db_path, stale_after=self.stale_after)
        except StoreError as exc:
            self._release_lock()
            raise ServeError(str(exc)) from None
        # Our own context: an authenticator must not judge other sockets of this process.
        ctx = self._ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.keys is not None:
            self._start_curve(sock)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unreachable run raises, not drops
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        try:
            sock.bind(self.listen)
        except zmq.ZMQError as exc:
            sock.close(0)
            self.store.close()
            self._release_lock()
            self._close_context()
            if exc.errno == zmq.EADDRINUSE:
                raise ServeError(
                    f"{self.listen} is already in use (another lrpilot serve?); "
                    "choose another --listen port"
                ) from None
            raise ServeError(f"cannot listen on {self.listen}: {exc}") from None
        self._sock = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._poller.register(sock, zmq.POLLIN)
        if self.detect == "process":
            self._start_worker()
        self._checkpointer = Checkpointer(self.db_path).start()
        if self._watcher is not None:
            self._watcher.start()  # now, so no save between bind and serve goes unseen
        return self.endpoint

    def _start_curve(self, sock: zmq.Socket) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        from .keys import server_curve

        assert self.keys is not None and self._ctx is not None
        try:
            public, secret, authorized = server_curve(self.keys)
        except ServeError:
            sock.close(0)
            assert self.store is not None
            self.store.close()
            self._release_lock()
            raise
        self._auth = ThreadAuthenticator(self._ctx)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(authorized))
        sock.curve_server = True
        sock.curve_publickey = public
        sock.curve_secretkey = secret

    def _start_worker(self) -> None:
        assert self._ctx is not None
        try:
            worker = WorkerDetection(self._ctx, self.control_defaults)
        except OSError as exc:
            log.warning("detection runs in the receive loop: no child process (%s)", exc)
            return
        self._detection = worker
        assert worker.socket is not None
        self._poller.register(worker.socket, zmq.POLLIN)

    def _check_worker(self) -> None:
        """A dead detection process is replaced by inline detection (detectors restart)."""
        worker = self._detection
        if not isinstance(worker, WorkerDetection) or worker.alive:
            return
        self._guarded(self._record_results)
        log.error("the detection process died; detecting in the receive loop from now on")
        if worker.socket is not None:
            self._poller.unregister(worker.socket)
        worker.close()
        self._detection = InlineDetection(self.control_defaults)
        for session in self._sessions.values():
            self._detection.open(session.run_id, session.requested, session.policy)
            if session.paused:
                self._detection.pause(session.run_id)

    def _close_context(self) -> None:
        self._detection.close()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def _close_store(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        if self.store is not None:
            self.store.close()

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def close(self) -> None:
        """Release socket, database and lock of a controller that was bound but not served."""
        if self._watcher is not None:
            self._watcher.stop()
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        self._close_store()
        self._release_lock()
        self._close_context()

    def stop(self) -> None:
        """Ask the loop to finish its turn, commit, and return (thread- and signal-safe)."""
        self._stop.set()

    def serve_forever(self) -> None:
        """Run until :meth:`stop`; binds first if needed; always releases socket and db."""
        if self._sock is None:
            self.bind()
        assert self._sock is not None and self.store is not None
        self.ready.set()
        try:
            while not self._stop.is_set():
                self._guarded(self._turn, 100)  # nothing a peer sends may end the loop
                while self._policy_updates:  # saved by the watcher's thread, applied here
                    self._apply_policy(self._policy_updates.popleft())
        finally:
            self._guarded(self._settle)  # what is written is committed and acknowledged
            if self._watcher is not None:
                self._watcher.stop()
            self._sock.close(0)
            self._sock = None
            self._close_store()
            self._release_lock()
            self._close_context()

    def _policy_for(self, name: str, total_steps: int) -> RunPolicy:
        """The policy file's policy for a run, with the length the run announced (which wins
        over a ``total_steps`` the file sets; the file's serves runs that do not say)."""
        policy = self.policy.for_run(name)
        if total_steps > 0:
            policy = replace(policy, rules=replace(policy.rules, total_steps=total_steps))
        return policy

    def _apply_policy(self, policy: PolicyFile) -> None:
        self.policy = policy
        for session in self._sessions.values():
            if not session.finished:
                session.policy = self._policy_for(session.name, session.total_steps)
                self._detection.set_policy(session.run_id, session.policy)
        self._detection.flush()
        log.info("policy reloaded from %s; applied to %d live run(s)", self.policy_path,
                 sum(not s.finished for s in self._sessions.values()))  # fmt: skip

    # ---------------------------------------------------------------- one turn

    def _turn(self, timeout_ms: int) -> None:
        busy = bool(self._pending) and self._detection.backlog < _DETECT_BACKLOG
        ready = dict(self._poller.poll(0 if busy else timeout_ms))
        if self._sock in ready:
            self._read()
        self._guarded(self._record_results)
        self._guarded(self._commit_next)
        self._detection.flush()
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + 1.0
            self._check_worker()
            self._guarded(self._forget_runs)

    def _read(self) -> None:
        """Read what has arrived: answer everything but metrics now, queue metrics."""
        sock = self._sock
        assert sock is not None
        for _ in range(_DRAIN_LIMIT):
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            received = time.time()
            self.stats.messages += 1
            if len(frames) < 2:
                self._reject("no routing frame")
                continue
            identity, body = frames[0], frames[1:]
            try:
                msg = decode(body)
            except ProtocolError as exc:
                self._reject("undecodable", str(exc))
                continue
            if isinstance(msg, Metrics):
                if self._pending_points >= _PENDING_POINTS:
                    self._reject("overloaded")  # unacknowledged: the client resends it
                    continue
                self._pending.append((identity, msg, body))
                self._pending_points += len(msg.steps)
                continue
            if isinstance(msg, Bye):  # its run's queued batches are committed first
                self._guarded(self._commit_run, msg.run_id)
            self._guarded(self._settle)  # it reads or writes what is committed
            self._guarded(self._dispatch, identity, msg, received)

    def _commit_next(self) -> None:
        """Write the oldest queued batches, up to ``_COMMIT_POINTS`` points, unless
        detection is too far behind; commit when the transaction is due (``_TXN_POINTS``)."""
        if not self._pending or self._detection.backlog >= _DETECT_BACKLOG:
            self._settle()
            return
        batch: list[tuple[bytes, Metrics, list[bytes]]] = []
        points = 0
        while self._pending and (not batch or points < _COMMIT_POINTS):
            item = self._pending.popleft()
            batch.append(item)
            points += len(item[1].steps)
        self._pending_points -= points
        self._write(batch)
        if (
            not self._pending
            or self._uncommitted_points >= _TXN_POINTS
            or time.monotonic() - self._txn_started >= _TXN_SECONDS
        ):
            self._settle()

    def _commit_run(self, run_id: str) -> None:
        """Commit the queued batches of one run now (it said bye: they come before it)."""
        mine = [item for item in self._pending if item[1].run_id == run_id]
        if not mine:
            return
        self._pending = deque(item for item in self._pending if item[1].run_id != run_id)
        self._pending_points -= sum(len(item[1].steps) for item in mine)
        self._write(mine)
        self._settle()

    def _guarded(self, fn: Any, *args: Any) -> None:
        """Run one message's handling; a failure is counted and logged, never fatal: one bad
        message (or a full disk) must not stop the service for every other run."""
        try:
            fn(*args)
        except StoreError as exc:
            self._reject("store error", str(exc))
        except Exception:
            self.stats.rejected["internal error"] += 1
            now = time.monotonic()
            if now - self._last_warned.get("internal error", -60.0) >= 10.0:
                self._last_warned["internal error"] = now
                log.exception("internal error while handling a message (counted, not fatal)")

    def _reject(self, reason: str, detail: str = "") -> None:
        self.stats.rejected[reason] += 1
        now = time.monotonic()
        if now - self._last_warned.get(reason, -60.0) >= 10.0:  # one line per kind per 10 s
            self._last_warned[reason] = now
            log.warning("dropped a message (%s)%s", reason, f": {detail[:200]}" if detail else "")

    def _send(self, identity: bytes, msg: Any) -> bool:
        assert self._sock is not None
        try:
            self._sock.send_multipart([identity, *encode(msg)], flags=zmq.NOBLOCK)
            return True
        except zmq.ZMQError:  # peer gone (ROUTER_MANDATORY) or its queue is full
            return False

    def _dispatch(self, identity: bytes, msg: Any, received: float | None = None) -> None:
        assert self.store is not None
        if isinstance(msg, Hello):
            self._on_hello(identity, msg)
            return
        if isinstance(msg, Request):
            self._send(identity, self._on_request(msg))
            return
        session = self._sessions.get(getattr(msg, "run_id", ""))
        if session is None or session.identity != identity:
            if isinstance(msg, (Heartbeat, CommandAck, Bye)):
                self._send(identity, Rehello(run_id=msg.run_id))
            self._reject("unknown run or wrong peer")
            return
        session.last_heard = time.time()
        if isinstance(msg, Heartbeat):
            try:
                self.store.touch(session.run_id)
            except StoreError as exc:  # not storing (disk full...): still answer
                self._reject("store error", str(exc))
            seq = self.store.committed_seq(msg.run_id)
            self._send(identity, BatchAck(run_id=msg.run_id, seq=seq, resend=session.needs_resend))
        elif isinstance(msg, CommandAck):
            self._on_command_ack(session, msg, received)
        elif isinstance(msg, Bye):
            self.store.finish_run(session.run_id)
            self.store.cancel_pending_commands(session.run_id, "the run finished first")
            session.finished = True
            committed = self.store.committed_seq(session.run_id)
            self._send(identity, BatchAck(run_id=msg.run_id, seq=committed))
            log.info("run %s (%s) finished", session.name, session.run_id)
        else:
            self._reject(f"unexpected {type(msg).__name__}")

    def _on_hello(self, identity: bytes, hello: Hello) -> None:
        assert self.store is not None
        session = self._sessions.get(hello.run_id)
        try:
            committed = self.store.open_run(
                hello.run_id, hello.run, host=hello.host, pid=hello.pid,
                optimizer=hello.optimizer, control=hello.control, lrs=hello.lrs,
                config=hello.config, secret=hello.secret,
            )  # fmt: skip
        except RunOwned:
            self._reject("run id owned by another client")
            return
        except StoreError as exc:
            self._reject("store error", str(exc))
            return
        if session is None:
            if len(self._sessions) >= _MAX_SESSIONS:
                self._forget_runs(room=1)
            session = Session(
                run_id=hello.run_id, name=hello.run, identity=identity, requested=hello.control,
                policy=self._policy_for(hello.run, hello.total_steps), last_heard=time.time(),
                total_steps=hello.total_steps,
            )  # fmt: skip
            self._detection.open(session.run_id, session.requested, session.policy)
            self._sessions[hello.run_id] = session
            log.info("run %s (%s) connected, control=%s", hello.run, hello.run_id, session.mode)
        elif hello.total_steps != session.total_steps:  # a resumed run with a new plan
            session.total_steps = hello.total_steps
            session.policy = self._policy_for(session.name, session.total_steps)
            self._detection.set_policy(session.run_id, session.policy)
        # open_run stored what the run asked for; store what is in force (a policy file's
        # override, or a pause that outlived a reconnect).
        state = "paused" if session.paused else session.mode
        if state != hello.control:
            self.store.set_control(hello.run_id, state)
        session.identity = identity
        session.finished = False
        session.last_heard = time.time()
        self._send(identity, Welcome(run_id=hello.run_id, committed_seq=committed))
        for cmd in self.store.pending_commands(hello.run_id):  # e.g. sent before a restart
            self._send_command(session, cmd.id, cmd.action, cmd.value, cmd.source, cmd.reason)

    def _write(self, pending: list[tuple[bytes, Metrics, list[bytes]]]) -> None:
        """Write metrics batches of known peers in the open transaction (see :meth:`_settle`)."""
        if not pending:
            return
        assert self.store is not None
        accepted: list[tuple[bytes, Metrics, list[bytes]]] = []
        now = time.time()
        for identity, batch, frames in pending:
            session = self._sessions.get(batch.run_id)
            if session is None or session.identity != identity:
                self._reject("unknown run or wrong peer")
                self._send(identity, Rehello(run_id=batch.run_id))
                continue
            session.last_heard = now
            accepted.append((identity, batch, frames))
        if not accepted:
            return
        try:
            results = self.store.write_batches([b for _, b, _ in accepted], commit=False)
        except (StoreError, UnknownRun) as exc:
            self._reject("store error", str(exc))
            self._resend([b for _, b, _ in accepted])
            # The failed write rolled back the open transaction: its batches are lost with
            # these, by the same failure, counted once.
            self._settle(counted=True)
            return
        if not self._uncommitted:
            self._txn_started = time.monotonic()
        for (identity, batch, frames), result in zip(accepted, results, strict=True):
            self._uncommitted.append((identity, batch, frames, result))
            self._uncommitted_points += len(batch.steps)

    def _settle(self, counted: bool = False) -> None:
        """Commit the open transaction, then acknowledge its batches and hand them to
        detection; if the commit fails, none of them is stored and their clients resend
        (``counted``: the failure that lost them is already counted)."""
        if not self._uncommitted:
            return
        assert self.store is not None
        done, self._uncommitted, self._uncommitted_points = self._uncommitted, [], 0
        try:
            self.store.commit()
        except StoreError as exc:
            if not counted:
                self._reject("store error", str(exc))
            self._resend([batch for _, batch, _, _ in done])
            return
        acks: dict[str, tuple[bytes, bool]] = {}
        seqs: dict[str, int] = {}
        detection = self._detection
        for identity, batch, frames, result in done:
            gap = result == "gap"
            prev = acks.get(batch.run_id)
            acks[batch.run_id] = (identity, gap or (prev is not None and prev[1]))
            if result == "written":
                self.stats.batches += 1
                self.stats.points += len(batch.steps)
                seqs[batch.run_id] = batch.seq
                detection.observe(batch.run_id, batch, frames)
            elif result == "duplicate":
                self.stats.duplicates += 1
        for run_id, (identity, gap) in acks.items():
            seq = seqs.get(run_id)
            if seq is None:  # nothing of it written in this commit
                seq = self.store.committed_seq(run_id)
            session = self._sessions.get(run_id)
            if session is not None:
                session.needs_resend = False
                session.streamed = session.streamed or run_id in seqs
            self._send(identity, BatchAck(run_id=run_id, seq=seq, resend=gap))

    def _resend(self, batches: list[Metrics]) -> None:
        """These batches are not stored: their clients keep them and resend them."""
        for batch in batches:
            session = self._sessions.get(batch.run_id)
            if session is not None:
                session.needs_resend = True

    # ---------------------------------------------------------------- memory

    def _forget_runs(self, room: int = 0) -> None:
        """Forget the in-memory state of finished and long-silent runs (the store keeps
        everything); with ``room``, also the longest silent until that many slots are free."""
        now = time.time()
        silent = max(_FORGET_AFTER, _STALE_FACTOR * self.stale_after)
        gone = [
            s.run_id for s in self._sessions.values()
            if now - s.last_heard > (_FORGET_AFTER if s.finished else silent)
        ]  # fmt: skip
        excess = len(self._sessions) - len(gone) + room - _MAX_SESSIONS
        if excess > 0:
            # Finished runs go first, then runs that never had a point stored (a flood of
            # hellos must not push out the live runs' state), then the longest silent.
            keep = sorted(
                (s for s in self._sessions.values() if s.run_id not in set(gone)),
                key=lambda s: (not s.finished, s.streamed, s.last_heard),
            )
            gone += [s.run_id for s in keep[:excess]]
        for run_id in gone:
            del self._sessions[run_id]
            self._detection.drop(run_id)
            if self.store is not None:
                self.store.forget(run_id)
        if gone:
            log.info("forgot the in-memory state of %d finished or silent run(s)", len(gone))
