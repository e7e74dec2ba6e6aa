"""The controller's side of LR commands: decisions become events and, when they carry a
command, a stored command sent to the run; the run's ack closes it (and records a rewind).

:class:`CommandFlow` is a part of :class:`~lrpilot.monitor.server.Controller`, kept in its own
module; it uses the controller's store, sessions, detection backend and socket.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..client.protocol import Command, CommandAck
from .control import Decision
from .errors import StoreError

if TYPE_CHECKING:
    from .detection import Detection
    from .sessions import ControllerStats, Session
    from .store import Store

__all__ = ["CommandFlow"]

log = logging.getLogger("lrpilot.controller")


class CommandFlow:
    """Records decisions, sends their commands and takes the acks (a Controller part)."""

    if TYPE_CHECKING:
        store: Store | None
        stats: ControllerStats
        _sessions: dict[str, Session]
        _detection: Detection

        def _guarded(self, fn: Any, *args: Any) -> None: ...
        def _reject(self, reason: str, detail: str = "") -> None: ...
        def _send(self, identity: bytes, msg: Any) -> bool: ...

    def _record_results(self) -> None:
        """Record the decisions detection has made since the last call, in order."""
        for run_id, decision in self._detection.results():
            session = self._sessions.get(run_id)
            if session is None:  # forgotten since: keep the event, send nothing
                assert self.store is not None
                self.store.add_event(run_id, decision.step, decision.kind, decision.reason,
                                     dict(decision.data))  # fmt: skip
                continue
            self._guarded(self._record_decision, session, decision)

    def _record_decision(self, session: Session, d: Decision, source: str = "auto") -> None:
        assert self.store is not None
        data = dict(d.data)
        if d.command is not None:
            data["command"] = list(d.command)
        if d.why_not:
            data["why_not"] = d.why_not
        self.store.add_event(session.run_id, d.step, d.kind, d.reason, data)
        if d.command is None:
            log.info(
                "run %s step %d: %s (no command: %s)", session.name, d.step, d.reason, d.why_not
            )
            return
        action, value = d.command
        run = self.store.run(session.run_id)
        cid = self.store.add_command(
            session.run_id, action, value, source=source, who="lrpilot", reason=d.reason,
            lrs_before=run.lrs,
        )  # fmt: skip
        log.info("run %s step %d: %s -> %s %g", session.name, d.step, d.reason, action, value)
        if session.finished:  # it said bye before detection caught up with its last points
            self.store.cancel_pending_commands(session.run_id, "the run finished first")
            return
        self._send_command(session, cid, action, value, source, d.reason, trigger=d.kind)

    def _send_command(
        self, session: Session, cid: int, action: str, value: float, source: str, reason: str,
        trigger: str = "",
    ) -> None:  # fmt: skip
        assert self.store is not None
        msg = Command(
            run_id=session.run_id, command_id=cid, action=action, value=value, source=source,
            reason=reason, trigger=trigger,
        )  # fmt: skip
        if self._send(session.identity, msg):
            self.stats.commands_sent += 1
            self.store.mark_command_sent(cid)

    def _on_command_ack(
        self, session: Session, ack: CommandAck, received: float | None = None
    ) -> None:
        assert self.store is not None
        if not self.store.mark_command_done(
            ack.command_id, run_id=session.run_id, step=ack.step, lrs=ack.lrs, ok=ack.ok,
            error=ack.error, now=received,
        ):  # fmt: skip
            try:
                known = self.store.command(ack.command_id).run_id == session.run_id
            except StoreError:
                known = False
            if not known:  # a repeat of an ack already recorded is fine; this is not
                self._reject("ack for unknown command")
            return
        if ack.ok:
            self._detection.lr_changed(session.run_id, ack.step)
        if ack.rewind_step is not None:
            cmd = self.store.command(ack.command_id)
            before = ", ".join(f"{x:.3g}" for x in cmd.lrs_before or [])
            after = ", ".join(f"{x:.3g}" for x in ack.lrs)
            lost = ack.step - ack.rewind_step
            why = cmd.reason.split(":", 1)[0] or "cut"
            self.store.add_event(
                session.run_id, ack.step, "rewind",
                f"rewind: restored the step {ack.rewind_step} snapshot after a {why}; "
                f"{lost} steps lost; lr {before} -> {after}",
                {"rewind_step": ack.rewind_step, "steps_lost": lost, "lrs_before":
                 cmd.lrs_before, "lrs_after": list(ack.lrs)},
            )  # fmt: skip
