"""The LR panel's write actions: validate what the user typed, then ask the controller.

Validation happens here, in the page, so a typo gets a clear message at once; the controller
validates again (it is the authority, and the CLI goes through it too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from ..monitor.errors import ControllerError, ControllerUnreachable

__all__ = ["ACTIONS", "ActionResult", "Controller", "parse_lr", "perform"]

#: Button -> (controller op, fixed arguments).
ACTIONS: dict[str, tuple[str, dict[str, float]]] = {
    "set": ("set_lr", {}),
    "half": ("scale_lr", {"factor": 0.5}),
    "double": ("scale_lr", {"factor": 2.0}),
    "pause": ("pause", {}),
    "resume": ("resume", {}),
    "approve": ("approve", {}),
}
#: An LR above this is almost certainly a typo (1e3 for 1e-3).
MAX_LR = 10.0


class Controller(Protocol):
    """What the dashboard needs of :class:`lrpilot.monitor.remote.ControllerClient`."""

    def request(self, op: str, **args: Any) -> Any: ...


def parse_lr(text: str | float | None) -> float:
    """Parse the LR field: a finite number in ``(0, MAX_LR]``.

    Accepts what Python's ``float`` does (``3e-4``, ``0.0003``, ``3E-4``, surrounding spaces,
    ``1_000`` digit groups), nothing else.

    Raises:
        ValueError: with a message fit to show under the field.
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        raise ValueError("type a learning rate, e.g. 3e-4")
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a number")
    try:
        value = float(text)
    except ValueError:
        shown = str(text).strip()[:40]
        raise ValueError(f"{shown!r} is not a number; write e.g. 3e-4 or 0.0003") from None
    if not math.isfinite(value):
        raise ValueError(f"the learning rate must be finite, got {text!s}")
    if value <= 0:
        raise ValueError(f"the learning rate must be > 0, got {value:g}")
    if value > MAX_LR:
        raise ValueError(
            f"an LR of {value:g} is above {MAX_LR:g}: probably a typo (e.g. 1e3 for 1e-3)"
        )
    return value


@dataclass(frozen=True)
class ActionResult:
    """What to tell the user: ``ok``, a one-line ``message``, and the command id if one was made."""

    ok: bool
    message: str
    command_id: int | None = None


def perform(
    controller: Controller | None, action: str, run_id: str, lr_text: Any, who: str
) -> ActionResult:
    """Validate and send one write action; never raises for a user's mistake.

    Args:
        controller: the controller client, or None when the dashboard has none (a db file
            served alone).
        action: a key of :data:`ACTIONS`.
        run_id: the run to act on.
        lr_text: the LR field's content (used by ``set`` only).
        who: recorded with the command (shown in the audit log).

    Raises:
        KeyError: an unknown action (a programming error, not a user's).
    """
    op, fixed = ACTIONS[action]
    if controller is None:
        return ActionResult(False, "read-only: no controller is connected to this dashboard")
    args: dict[str, Any] = {"run": run_id, **fixed}
    if action == "set":
        try:
            args["value"] = parse_lr(lr_text)
        except ValueError as exc:
            return ActionResult(False, str(exc))
    if op in ("set_lr", "scale_lr"):
        args["who"] = who
    try:
        reply = controller.request(op, **args)
    except (ControllerError, ControllerUnreachable) as exc:
        return ActionResult(False, str(exc))
    command_id = reply.get("command_id") if isinstance(reply, dict) else None
    return ActionResult(True, _done_message(action, args), command_id)


def _done_message(action: str, args: dict[str, Any]) -> str:
    if action == "set":
        return f"sent: set LR to {args['value']:g}"
    if action in ("half", "double"):
        return f"sent: scale LR x{args['factor']:g}"
    return {
        "pause": "automatic control paused",
        "resume": "automatic control resumed",
        "approve": "advised change approved",
    }[action]
