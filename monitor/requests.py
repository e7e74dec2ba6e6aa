"""Requests from the CLI and the dashboard: each ``op`` is a ``_op_<name>`` method whose
keyword arguments are the request's ``args``; errors a user can cause come back as one line.

:class:`RequestHandlers` is a part of :class:`~lrpilot.monitor.server.Controller`, kept in its
own module; it reads the store and acts on live runs through the controller.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..client.protocol import Reply, Request, check_lr
from .control import Decision
from .errors import ControllerError, LrpilotError

if TYPE_CHECKING:
    from .checkpoint import Checkpointer
    from .detection import Detection
    from .sessions import ControllerStats, Session
    from .store import Store

__all__ = ["RequestHandlers"]

#: Longest error text sent back (a reply must stay within the protocol's bounds).
_MAX_ERROR = 500


def _short(text: str) -> str:
    """An error line cut to what a Reply may carry (a stranger's input can be huge)."""
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "..."


class RequestHandlers:
    """Answers requests (a Controller part); a request never waits behind more than one commit."""

    if TYPE_CHECKING:
        store: Store | None
        stats: ControllerStats
        endpoint: str
        db_path: Path
        _sessions: dict[str, Session]
        _detection: Detection
        _checkpointer: Checkpointer | None

        def _reject(self, reason: str, detail: str = "") -> None: ...
        def _record_results(self) -> None: ...
        def _record_decision(self, session: Session, d: Decision, source: str = "auto") -> None: ...
        def _send_command(
            self, session: Session, cid: int, action: str, value: float, source: str,
            reason: str, trigger: str = "",
        ) -> None: ...  # fmt: skip

    def _on_request(self, req: Request) -> Reply:
        handler = getattr(self, f"_op_{req.op}", None)
        if handler is None:
            self._reject("unknown request")
            return Reply(ok=False, error=_short(f"unknown request {req.op!r}"))
        try:
            return Reply(ok=True, data=handler(**req.args))
        except LrpilotError as exc:
            return Reply(ok=False, error=_short(str(exc)))
        except (TypeError, ValueError, OverflowError) as exc:  # e.g. id=1e300 from a stranger
            self._reject("bad request")
            return Reply(ok=False, error=_short(f"bad request {req.op[:64]!r}: {exc}"))

    def _live_run(self, run: str) -> Session:
        assert self.store is not None
        record = self.store.find_run(str(run))
        session = self._sessions.get(record.id)
        if record.status == "finished" or (session is not None and session.finished):
            raise ControllerError(
                f"run {record.name!r} ({record.id}) has finished; its LR can no longer change"
            )
        if record.status == "stale":
            age = time.time() - record.last_seen
            raise ControllerError(
                f"run {record.name!r} ({record.id}) is stale: nothing heard from it for "
                f"{age:.0f} s (its process may have died); its LR can change again once it "
                "reconnects"
            )
        if session is None:
            raise ControllerError(
                f"run {record.name!r} ({record.id}) is not connected to this controller "
                f"(status {record.status}); it reconnects by itself if it is still training"
            )
        return session

    def _op_ping(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "db": str(self.db_path.resolve()), "pid": os.getpid()}

    def _op_runs(self) -> list[dict[str, Any]]:
        assert self.store is not None
        return [asdict(r) for r in self.store.runs()]  # the store keeps "paused" in sync

    def _op_history(self, run: str) -> list[dict[str, Any]]:
        assert self.store is not None
        return [asdict(c) for c in self.store.commands(self.store.find_run(str(run)).id)]

    def _op_events(self, run: str) -> list[dict[str, Any]]:
        assert self.store is not None
        return [asdict(e) for e in self.store.events(self.store.find_run(str(run)).id)]

    def _op_command(self, id: int) -> dict[str, Any]:
        assert self.store is not None
        return asdict(self.store.command(int(id)))

    def _op_set_lr(self, run: str, value: Any, who: str = "cli") -> dict[str, Any]:
        return self._manual(run, "set", check_lr(value, "LR"), who)

    def _op_scale_lr(self, run: str, factor: Any, who: str = "cli") -> dict[str, Any]:
        return self._manual(run, "scale", check_lr(factor, "scale factor"), who)

    def _manual(self, run: str, action: str, value: float, who: str) -> dict[str, Any]:
        assert self.store is not None
        session = self._live_run(run)
        record = self.store.run(session.run_id)
        if not record.lrs:
            raise ControllerError(f"run {record.name!r} reports no optimizer; nothing to change")
        reason = f"manual {action} {value:g} by {who}"
        cid = self.store.add_command(
            session.run_id, action, value, source="manual", who=str(who), reason=reason,
            lrs_before=record.lrs,
        )  # fmt: skip
        if session.mode == "auto" and not session.paused:
            session.paused = True
            self._detection.pause(session.run_id)
            self.store.set_control(session.run_id, "paused")
            self.store.add_event(
                session.run_id, max(record.last_step, 0), "paused",
                "manual LR change: automatic control paused until `lrpilot resume`",
            )  # fmt: skip
        self._send_command(session, cid, action, value, "manual", reason)
        return {"command_id": cid, "run_id": session.run_id, "run": record.name}

    def _op_pause(self, run: str) -> dict[str, Any]:
        assert self.store is not None
        session = self._live_run(run)
        session.paused = True
        self._detection.pause(session.run_id)
        self.store.set_control(session.run_id, "paused")
        record = self.store.run(session.run_id)
        self.store.add_event(
            session.run_id, max(record.last_step, 0), "paused", "automatic control paused"
        )
        return {"run_id": session.run_id, "control": "paused"}

    def _op_approve(self, run: str, who: str = "cli") -> dict[str, Any]:
        assert self.store is not None
        session = self._live_run(run)
        try:
            decision = self._detection.approve(session.run_id)
        except TimeoutError:
            raise ControllerError(
                f"detection is busy; nothing approved for run {session.name!r}, try again"
            ) from None
        self._record_results()  # what detection decided before the approval comes first
        if decision is None or decision.command is None:
            raise ControllerError(
                f"run {session.name!r} has no advised LR change awaiting approval "
                "(`lrpilot events` shows what was detected)"
            )
        decision = Decision(decision.step, decision.kind, f"{decision.reason} (by {who})",
                            decision.command, "", decision.data)  # fmt: skip
        self._record_decision(session, decision, source="approved")
        cmd = self.store.commands(session.run_id)[-1]
        return {"command_id": cmd.id, "run_id": session.run_id, "run": session.name}

    def _op_resume(self, run: str) -> dict[str, Any]:
        assert self.store is not None
        session = self._live_run(run)
        session.paused = False
        self._detection.resume(session.run_id)
        self.store.set_control(session.run_id, session.mode)
        record = self.store.run(session.run_id)
        self.store.add_event(
            session.run_id, max(record.last_step, 0), "resumed", "automatic control resumed"
        )
        return {"run_id": session.run_id, "control": session.mode}

    def _op_status(self) -> dict[str, Any]:
        assert self.store is not None
        elapsed = max(time.time() - self.stats.started, 1e-9)
        live = sum(1 for r in self.store.runs() if r.status == "live")
        wal = Path(f"{self.db_path}-wal")
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        size = (self.db_path.stat().st_size if self.db_path.exists() else 0) + wal_bytes
        cp = self._checkpointer
        return {
            "endpoint": self.endpoint, "db": str(self.db_path.resolve()), "db_bytes": size,
            "uptime_s": elapsed, "messages": self.stats.messages, "points": self.stats.points,
            "points_per_s": self.stats.points / elapsed, "batches": self.stats.batches,
            "duplicates": self.stats.duplicates, "rejected": dict(self.stats.rejected),
            "live_runs": live, "commands_sent": self.stats.commands_sent,
            "runs_in_memory": len(self._sessions), "detection_backlog": self._detection.backlog,
            "wal_bytes": wal_bytes, "checkpoints": cp.checkpoints if cp is not None else 0,
            "checkpoint_error": cp.last_error if cp is not None else "",
        }  # fmt: skip
