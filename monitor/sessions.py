"""What the controller holds in memory per connected run, and its own counters."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from .policy import RunPolicy

__all__ = ["ControllerStats", "Session"]


@dataclass
class Session:
    """A run that said Hello to this controller process."""

    run_id: str
    name: str
    identity: bytes
    requested: str  # the control mode the run asked for
    policy: RunPolicy
    last_heard: float
    total_steps: int = 0  # the run's planned length, from its Hello (0: unknown)
    paused: bool = False  # a manual override; mirrors the run's RunController
    finished: bool = False
    needs_resend: bool = False  # a commit of its batches failed: ask for them again
    streamed: bool = False  # some of its points are stored: kept over hello-only runs

    @property
    def mode(self) -> str:
        """The mode in force (the policy's override, else what the run asked for)."""
        return self.policy.rules.mode or self.requested


@dataclass
class ControllerStats:
    """Counters shown by ``lrpilot status``."""

    started: float = field(default_factory=time.time)
    messages: int = 0
    points: int = 0
    batches: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    commands_sent: int = 0
