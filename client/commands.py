"""Applying LR commands to a live optimizer, on the training thread, between steps.

A command either sets the LR of the first param group (the others keep their ratio to it)
or scales every group by a factor; both are kept as one multiplier per group.

With a user's scheduler passed to :class:`LrControl`, the multiplier sits on top of what the
scheduler sets: around each ``scheduler.step()`` the groups are shown the scheduler's own
values and the multiplier is put back afterwards, so chainable schedulers (StepLR, cosine)
and closed-form ones (LambdaLR, OneCycleLR) alike never undo a change.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["LrChange", "LrControl"]


@dataclass(frozen=True)
class LrChange:
    """An LR change as applied: passed to ``Monitor(on_lr_change=...)``.

    ``step`` is the first step that runs with ``lrs_after``; ``trigger`` names the detection
    behind an automatic change (e.g. ``"divergence"``) so a hook can restore a checkpoint.
    """

    command_id: int
    action: str
    value: float
    source: str
    reason: str
    trigger: str
    step: int
    lrs_before: list[float]
    lrs_after: list[float]
    rewind_step: int | None = None  # the client restored its snapshot of this step first


class LrControl:
    """Owns the controller's multiplier on each param group of ``optimizer``."""

    def __init__(self, optimizer: Any, scheduler: Any = None) -> None:
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.multipliers = [1.0] * len(optimizer.param_groups)
        self._original_step: Callable[..., Any] | None = None
        if scheduler is not None:
            if getattr(scheduler, "optimizer", optimizer) is not optimizer:
                raise ValueError("the scheduler given to Monitor drives another optimizer")
            self._original_step = scheduler.step
            self._had_own_step = "step" in vars(scheduler)
            scheduler.step = self._scheduler_step

    def lrs(self) -> list[float]:
        """Current LR of every param group."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def _scheduler_step(self, *args: Any, **kwargs: Any) -> Any:
        groups = self.optimizer.param_groups
        for g, m in zip(groups, self.multipliers, strict=False):
            g["lr"] = g["lr"] / m
        try:
            assert self._original_step is not None
            return self._original_step(*args, **kwargs)
        finally:
            for g, m in zip(groups, self.multipliers, strict=False):
                g["lr"] = g["lr"] * m

    def apply(self, action: str, value: float) -> list[float]:
        """Apply ``set`` or ``scale`` now; return the new LRs. Raises ValueError if the
        result would not be a finite LR > 0 (nothing is changed then)."""
        groups = self.optimizer.param_groups
        if len(self.multipliers) != len(groups):  # a group was added since
            self.multipliers += [1.0] * (len(groups) - len(self.multipliers))
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"LR command value must be finite and > 0, got {value!r}")
        if action == "set":
            first = float(groups[0]["lr"])
            if first <= 0:
                raise ValueError(f"cannot set the LR relative to a current LR of {first}")
            factor = value / first
        elif action == "scale":
            factor = value
        else:
            raise ValueError(f"unknown LR action {action!r}; expected 'set' or 'scale'")
        new = [float(g["lr"]) * factor for g in groups]
        if not all(math.isfinite(lr) and lr > 0 for lr in new):
            raise ValueError(f"LR command would give LRs {new}")
        for g, lr in zip(groups, new, strict=True):
            g["lr"] = lr
        if action == "set":
            new[0] = groups[0]["lr"] = value  # exactly the value asked for, no rounding
        self.multipliers = [m * factor for m in self.multipliers]
        return new

    def detach(self) -> None:
        """Give the scheduler its own ``step`` back (the multiplier stays in the LRs)."""
        if self.scheduler is not None and self._original_step is not None:
            if self._had_own_step:
                self.scheduler.step = self._original_step
            else:
                del self.scheduler.step  # the class's method shows through again
            self._original_step = None
