"""Per-run automatic control: feed a run's metrics in, get decisions (events and commands) out.

Pure: no sockets, no store, no clock. The server owns one :class:`RunController` per live run,
calls :meth:`RunController.observe` with every committed metrics batch, records each returned
:class:`Decision` as an event, and sends its command when there is one.

This is the spine's minimal rule (a plateau of the smoothed loss halves the LR); the real
detectors and the policy replace its inside, not its interface.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CONTROL_MODES", "Decision", "RunController"]

CONTROL_MODES = ("auto", "advise", "off")


@dataclass(frozen=True)
class Decision:
    """What the controller concluded at ``step``.

    ``kind`` names the detection (plateau, oscillation, spike, divergence...). ``command`` is
    ``("scale", factor)`` or ``("set", lr)`` when the LR should change *now*, else None, in
    which case ``why_not`` says why no command was sent (advise, off, paused, cooldown...).
    """

    step: int
    kind: str
    reason: str
    command: tuple[str, float] | None = None
    why_not: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class RunController:
    """Watches one run and decides on LR changes.

    Args:
        mode: ``auto`` (send commands), ``advise`` (record what would be done), ``off``.
        patience: steps without a relative improvement of ``threshold`` in the smoothed loss
            before a plateau is declared.
        factor: LR multiplier applied on a plateau.
        cooldown: steps after any change during which no new decision is taken.
        min_lr: never go below this LR.
    """

    def __init__(
        self,
        mode: str = "advise",
        *,
        patience: int = 200,
        threshold: float = 0.01,
        factor: float = 0.5,
        cooldown: int = 100,
        min_lr: float = 1e-7,
        smoothing: float = 0.98,
    ) -> None:
        if mode not in CONTROL_MODES:
            raise ValueError(f"mode must be one of {CONTROL_MODES}, got {mode!r}")
        self.mode = mode
        self.paused = False
        self.patience = patience
        self.threshold = threshold
        self.factor = factor
        self.cooldown = cooldown
        self.min_lr = min_lr
        self.smoothing = smoothing
        self._ema: float | None = None
        self._best = math.inf
        self._best_step = 0
        self._quiet_until = -1
        self._lr: float | None = None

    def pause(self) -> None:
        """A person took over the LR: stop automatic commands until :meth:`resume`."""
        self.paused = True

    def resume(self) -> None:
        """Hand the LR back to automatic control; the plateau clock starts afresh."""
        self.paused = False
        self._best = math.inf

    def lr_changed(self, step: int) -> None:
        """An LR change took effect at ``step``: restart the plateau clock, enter cooldown."""
        self._best = math.inf
        self._quiet_until = step + self.cooldown

    def observe(
        self,
        steps: Sequence[int],
        names: Sequence[str],
        keys: Sequence[int],
        values: Sequence[float],
    ) -> list[Decision]:
        """Feed one metrics batch (columnar, as on the wire); return the decisions it caused."""
        try:
            loss_key = names.index("loss")
        except ValueError:
            loss_key = -1
        lr_key = names.index("lr") if "lr" in names else -1
        out: list[Decision] = []
        for step, key, value in zip(steps, keys, values, strict=True):
            if key == lr_key:
                self._lr = value
            elif key == loss_key and math.isfinite(value):
                decision = self._update(step, value)
                if decision is not None:
                    out.append(decision)
        return out

    def _update(self, step: int, loss: float) -> Decision | None:
        a = self.smoothing
        self._ema = loss if self._ema is None else a * self._ema + (1 - a) * loss
        if self._ema < self._best * (1 - self.threshold) or self._best == math.inf:
            self._best, self._best_step = self._ema, step
            return None
        if step < self._quiet_until or step - self._best_step < self.patience:
            return None
        reason = (
            f"plateau: smoothed loss {self._ema:.4g} has not improved by {self.threshold:.0%}"
            f" on {self._best:.4g} for {step - self._best_step} steps (patience {self.patience})"
        )
        data = {"ema": self._ema, "best": self._best, "since": self._best_step}
        self._best, self._best_step = self._ema, step  # one decision per plateau
        command: tuple[str, float] | None = ("scale", self.factor)
        why_not = ""
        if self.mode != "auto":
            why_not = self.mode
        elif self.paused:
            why_not = "paused (manual override)"
        elif self._lr is not None and self._lr * self.factor < self.min_lr:
            why_not = f"bound: LR {self._lr:.3g} x {self.factor} is below min_lr {self.min_lr:.3g}"
        if why_not:
            command = None
        else:
            self._quiet_until = step + self.cooldown
        return Decision(step, "plateau", reason, command, why_not, data)
