"""Rolling snapshots of model and optimizer state, to rewind a run that blew up.

With ``Monitor(rewind=True)`` the client copies the model's and the optimizer's state to host
memory when it starts (step 0: a far too high starting LR blows up within tens of steps) and
every ``every`` steps, and keeps the last two copies. When the controller cuts the LR
because of a spike or a divergence, the client restores the *older* copy (the newer one may
already hold the damage: detection lags the blow-up by up to a few hundred steps), keeps
the LRs it had, applies the cut, and carries on with the next batches, so the bad batches
are skipped, as people do by hand with large models.

Memory: two host copies of ``model.state_dict()`` and ``optimizer.state_dict()`` (for Adam,
3x the parameters each, so 6x in all). A budget bounds it; a model too large for the budget
gets no snapshots and a warning, and ``on_rewind`` (your own checkpoint restore) is the way.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch

__all__ = ["Rewinder", "Snapshot"]


def _to_host(obj: Any) -> Any:
    """A deep copy of a state dict with every tensor copied to CPU memory."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_host(v) for v in obj)
    return copy.deepcopy(obj)


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


class Snapshot:
    """Model and optimizer state at ``step``, on the host."""

    def __init__(self, step: int, model: dict[str, Any], optimizer: dict[str, Any]) -> None:
        self.step = step
        self.model = model
        self.optimizer = optimizer
        self.nbytes = _nbytes(model) + _nbytes(optimizer)


class Rewinder:
    """Takes snapshots every ``every`` steps within ``budget_bytes``; restores on demand.

    Args:
        model: the module whose weights are restored.
        optimizer: the optimizer whose state (moments, step counts) is restored; its LRs are
            kept as they are now, so a schedule or an earlier lrpilot change is not undone.
        every: steps between snapshots.
        budget_bytes: host memory the two snapshots may use together.
        max_rewinds: rewinds allowed over the run; later cuts only lower the LR.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        every: int = 200,
        budget_bytes: int = 2 * 1024**3,
        max_rewinds: int = 3,
    ) -> None:
        if every < 1 or budget_bytes <= 0 or max_rewinds < 0:
            raise ValueError(
                f"rewind needs every >= 1, budget_bytes > 0, max_rewinds >= 0; got {every}, "
                f"{budget_bytes}, {max_rewinds}"
            )
        self.model = model
        self.optimizer = optimizer
        self.every = every
        self.budget_bytes = budget_bytes
        self.max_rewinds = max_rewinds
        self.rewinds = 0
        self.snapshots: list[Snapshot] = []
        self.disabled = ""
        self._now = 0  # the latest step seen by maybe_snapshot
        self._rewound_at: int | None = None  # the step of the last divergence rewind

    def maybe_snapshot(self, step: int) -> None:
        """Take a snapshot if ``step`` is due (called at the end of each step)."""
        self._now = step
        if self.disabled or step % self.every:
            return
        snap = Snapshot(
            step, _to_host(self.model.state_dict()), _to_host(self.optimizer.state_dict())
        )
        if 2 * snap.nbytes > self.budget_bytes:
            self.disabled = (
                f"two snapshots need {2 * snap.nbytes / 2**20:.0f} MiB, over the rewind budget "
                f"of {self.budget_bytes / 2**20:.0f} MiB"
            )
            self.snapshots.clear()
            warnings.warn(
                f"lrpilot: rewind disabled: {self.disabled}; raise rewind_budget or pass "
                "on_rewind= to restore from your own checkpoints",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        self.snapshots = [*self.snapshots[-1:], snap]

    def restore(self, step: int | None = None, margin: int = 0) -> int | None:
        """Restore a snapshot; return its step, or None if there is nothing to restore or the
        rewind budget is spent.

        By default the older snapshot (the newest if there is one only): a divergence is
        detected long after it began. With ``step`` (now) and ``margin``, the newest snapshot
        taken at least ``margin`` steps before ``step`` is restored instead, falling back to
        the older one: a spike is detected within a flush or two, so a snapshot older than
        that predates it and restoring it loses fewer steps. Within ``2 * every`` steps of
        a divergence rewind the older one is restored even then: a run that blows up again
        so soon has not recovered, and a snapshot taken since may hold the new damage
        (digits SGD at lr 10: a spike 219 steps after a rewind to step 0 restored the
        step-400 snapshot, already dead, where step 0 trained). A spike rewind does not arm
        this: spikes come and go late in training, and each is caught within a flush or two.
        """
        if not self.snapshots or self.rewinds >= self.max_rewinds:
            return None
        snap = self.snapshots[0]
        now = self._now if step is None else step
        recent = self._rewound_at is not None and now - self._rewound_at < 2 * self.every
        if step is not None and not recent:
            snap = max((s for s in self.snapshots if s.step <= step - margin),
                       key=lambda s: s.step, default=snap)  # fmt: skip
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.model.load_state_dict(snap.model)
        self.optimizer.load_state_dict(snap.optimizer)
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self.snapshots = [snap]  # the newer one may hold the damage: never go back to it
        self.rewinds += 1
        self._rewound_at = now if step is None else None  # only a divergence arms the rule
        return snap.step
