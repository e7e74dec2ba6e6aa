"""``Monitor``: the five lines a training script adds to stream to lrpilot.

``Monitor.step()`` runs on the training thread and only appends a tuple to a list; every
``flush_every`` steps (or ``flush_interval`` seconds) the list is handed to the transport's
thread, with tensor values gathered into one tensor and copied to the host once, without
blocking. LR commands that arrived in the meantime are applied at the end of ``step()``, so
they take effect from the next optimizer step, and are acknowledged with that step.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .commands import LrChange, LrControl
from .errors import MonitorConfigError
from .keys import client_curve
from .protocol import (
    CONTROL_MODES,
    DEFAULT_ENDPOINT,
    CommandAck,
    Hello,
    check_endpoint,
    check_run_name,
)
from .rewind import Rewinder
from .stats import StatsCollector, StatsConfig
from .system import SystemSampler
from .transport import BaseTransport, Flush, TransportReport, ZmqTransport

__all__ = ["DEFAULT_ENDPOINT", "RESERVED_NAMES", "Monitor"]

#: Series names lrpilot writes itself; a user scalar may not take them.
RESERVED_NAMES = frozenset({
    "lr", "step", "step_time", "samples_per_s",
    "cos_grad_update", "nonfinite_grad_frac", "amp_scale", "amp_skipped",
})  # fmt: skip
_RESERVED_PREFIXES = ("lr/", "grad_norm", "param_norm/", "update_ratio/", "system/", "_")
_MAX_NAME = 200
_NO_OPTIMIZER = "this run has no optimizer (Monitor(optimizer=None))"
#: Detections whose LR cut comes with a rewind (the policy's hard cuts).
_EMERGENCIES = frozenset({"spike", "divergence"})


def _check_scalar_name(name: object) -> None:
    if not isinstance(name, str):
        raise MonitorConfigError(f"scalar names must be strings, got {name!r}")
    if name in RESERVED_NAMES or name.startswith(_RESERVED_PREFIXES):
        raise MonitorConfigError(
            f"scalar name {name!r} is reserved by lrpilot (reserved: {sorted(RESERVED_NAMES)} "
            f"and names starting with {_RESERVED_PREFIXES}); rename it"
        )
    if not name or len(name) > _MAX_NAME or any(ord(c) < 32 for c in name):
        raise MonitorConfigError(f"scalar name {name!r} is empty, too long or has control chars")


def _check_scalar_value(name: str, value: object) -> None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise MonitorConfigError(
                f"scalar {name!r} must be a single number; got a tensor of shape "
                f"{tuple(value.shape)} (reduce it, e.g. .mean())"
            )
        if value.is_complex():
            raise MonitorConfigError(f"scalar {name!r} is complex; send a real number")
    elif isinstance(value, bool) or not hasattr(value, "__float__"):
        raise MonitorConfigError(
            f"scalar {name!r} must be a number (float, int, numpy scalar or 1-element tensor), "
            f"got {type(value).__name__}"
        )


class Monitor:
    """Streams a run's scalars to the lrpilot controller and applies its LR changes.

    Args:
        run: a human name for the run (1-200 printable characters). Runs with the same
            name get distinct ids; the CLI resolves a name to its newest run.
        optimizer: any ``torch.optim.Optimizer`` (any number of param groups) whose LR the
            controller may change, or None to only report.
        model: the model, for gradient statistics (optional).
        endpoint: the controller, default ``$LRPILOT_ENDPOINT`` or ``tcp://127.0.0.1:5555``.
        control: ``"advise"`` (default: decisions are recorded, applied only when a person
            approves), ``"auto"`` (the controller changes the LR), or ``"off"`` (watch only).
        scheduler: the LR scheduler driving ``optimizer``, if any: lrpilot's changes then
            compose as a multiplier on top of it instead of being undone by its next step.
        total_steps: the steps the run will take, if known. Under ``control="auto"`` the
            controller then probes for the edge of stability in the first half of the run
            (``policy.probe_share``: x2 while the loss gets no worse) and ends the run with
            a linear LR decay over its last 20 % (``policy.decay_share``), which lowers the
            final loss below what any constant LR reaches. Leave it out when your own
            scheduler already decays the LR.
        config: JSON-able run configuration shown next to the run (hyperparameters...).
        flush_every: hand records to the sender every this many steps...
        flush_interval: ...or after this many seconds, whichever comes first.
        max_points: points held while the controller is unreachable; beyond, the oldest are
            dropped and counted in :attr:`dropped`.
        on_lr_change: called on the training thread with an :class:`LrChange` after each
            applied change (e.g. to restore a checkpoint after a divergence cut).
        close_timeout: seconds ``close()`` waits for the controller to acknowledge the tail.
        keys: a key directory from ``lrpilot keys`` (default ``$LRPILOT_KEYS``) when the
            controller requires CURVE authentication (it does whenever it is off loopback).
        rewind: keep host snapshots of model and optimizer at the start and every
            ``rewind_every`` steps (two at a time, within ``rewind_budget`` bytes); on a spike
            or divergence cut restore one (a spike: the newest taken two flushes or more
            before; a divergence, detected later: the older one), keep the LRs, apply the
            cut and go on with the next batches. At most ``max_rewinds`` per run. Needs
            ``model`` and ``optimizer``.
        on_rewind: instead of lrpilot's snapshots, called on the training thread with the
            :class:`LrChange` of a spike or divergence cut, before the cut is applied, to
            restore from your own checkpoint (large models).
        transport: a :class:`~lrpilot.client.transport.BaseTransport` (tests inject one).
        stats: which gradient statistics to compute on the device (a
            :class:`~lrpilot.client.stats.StatsConfig`; default ``StatsConfig()``, used when a
            model or an optimizer is given; ``StatsConfig.off()`` for none). Unless it sets
            ``cos_every``, ``cos_grad_update`` is computed under ``control="auto"`` on the
            ``"budget"`` cadence (every step while that costs at most ``cos_budget`` of the
            step, and after each LR change: the controller needs it promptly; every 2nd or
            4th on a small model) and every ``grad_norm_every`` steps otherwise.
        scaler: the ``torch.amp.GradScaler`` of an AMP run, for ``amp_scale`` and
            ``amp_skipped``.
        system_every: seconds between samples of process (and, with NVML, GPU) memory and
            utilisation, sent as ``system/...`` series at a flush; None (default) for none.

    Example:
        >>> with Monitor(run="digits-mlp", optimizer=opt) as mon:
        ...     for step in range(n):
        ...         loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
        ...         mon.step(loss=loss, acc=acc)
    """

    def __init__(
        self,
        run: str,
        optimizer: torch.optim.Optimizer | None = None,
        model: torch.nn.Module | None = None,
        endpoint: str | None = None,
        *,
        control: str = "advise",
        scheduler: Any = None,
        total_steps: int | None = None,
        config: Mapping[str, Any] | None = None,
        flush_every: int = 20,
        flush_interval: float = 1.0,
        max_points: int = 1_000_000,
        on_lr_change: Callable[[LrChange], Any] | None = None,
        close_timeout: float = 10.0,
        keys: str | os.PathLike[str] | None = None,
        rewind: bool = False,
        rewind_every: int = 200,
        rewind_budget: int = 2 * 1024**3,
        max_rewinds: int = 3,
        on_rewind: Callable[[LrChange], Any] | None = None,
        transport: BaseTransport | None = None,
        stats: StatsConfig | None = None,
        scaler: Any = None,
        system_every: float | None = None,
    ) -> None:
        try:
            check_run_name(run)
        except ValueError as exc:
            raise MonitorConfigError(f"Monitor(run=...): {exc}") from None
        if control not in CONTROL_MODES:
            raise MonitorConfigError(f"control must be one of {CONTROL_MODES}, got {control!r}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise MonitorConfigError(
                f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
            )
        if scheduler is not None and optimizer is None:
            raise MonitorConfigError("scheduler= needs the optimizer it drives: pass optimizer=")
        if total_steps is not None and (
            isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1
        ):
            raise MonitorConfigError(
                f"total_steps must be a positive int or None, got {total_steps!r}"
            )
        if flush_every < 1 or flush_interval <= 0:
            raise MonitorConfigError(
                f"flush_every must be >= 1 and flush_interval > 0, got {flush_every}, "
                f"{flush_interval}"
            )
        self.endpoint = check_endpoint(
            endpoint or os.environ.get("LRPILOT_ENDPOINT") or DEFAULT_ENDPOINT
        )
        self.run = run
        self.run_id = uuid.uuid4().hex[:12]
        self._secret = uuid.uuid4().hex
        self.optimizer = optimizer
        self.model = model
        self.control = control
        self.flush_every = flush_every
        self.flush_interval = flush_interval
        self.on_lr_change = on_lr_change
        self.close_timeout = close_timeout
        self._lr = LrControl(optimizer, scheduler) if optimizer is not None else None
        stats = stats if stats is not None else StatsConfig()
        # Automatic control tests 30 cosines after each LR change: one per step where that
        # is affordable, and right after a change.
        if isinstance(stats, StatsConfig) and stats.cos_every is None:
            every = "budget" if control == "auto" else stats.grad_norm_every
            stats = dataclasses.replace(stats, cos_every=every)
        self._stats = (
            StatsCollector(model, optimizer, stats, scaler)
            if model is not None or optimizer is not None
            else None
        )
        self._system = SystemSampler(system_every) if system_every is not None else None
        self.on_rewind = on_rewind
        self._rewinder: Rewinder | None = None
        if rewind and on_rewind is None:
            if model is None or optimizer is None:
                raise MonitorConfigError("rewind=True needs model= and optimizer=")
            try:
                self._rewinder = Rewinder(model, optimizer, rewind_every, rewind_budget,
                                          max_rewinds)  # fmt: skip
            except ValueError as exc:
                raise MonitorConfigError(str(exc)) from None
            # The state before the first step is the first snapshot: a start at a far too high
            # LR blows up within tens of steps, before any periodic snapshot exists.
            self._rewinder.maybe_snapshot(0)
        # The optimizer, not its param_groups list: load_state_dict (a rewind, or the user's own
        # checkpoint restore) replaces that list, and LR changes made after it would go unseen.
        self._lr_optimizer = optimizer
        groups = optimizer.param_groups if optimizer is not None else []
        self._lr_names = tuple("lr" if i == 0 else f"lr/{i}" for i in range(len(groups)))
        self._last_lrs: tuple[Any, ...] = ()
        self._step = 0
        self._records: list[tuple[int, tuple[str, ...], tuple[Any, ...]]] = []
        self._known_names: set[tuple[str, ...]] = set()
        self._next_flush = time.monotonic() + flush_interval
        self._flush_at = flush_every
        self._closed = False
        self._report: TransportReport | None = None
        self.changes: list[LrChange] = []
        try:
            cfg = dict(config or {})
        except (TypeError, ValueError):
            raise MonitorConfigError("config must be a mapping of names to values") from None
        keys = keys or os.environ.get("LRPILOT_KEYS")
        curve = client_curve(keys) if keys and transport is None else None
        self._transport = transport or ZmqTransport(
            self.endpoint, max_points=max_points, curve=curve
        )
        self._transport.start(
            Hello(
                run_id=self.run_id,
                run=run,
                host=socket.gethostname(),
                pid=os.getpid(),
                lrs=self._lr.lrs() if self._lr else [],
                optimizer=type(optimizer).__name__ if optimizer is not None else None,
                control=control,
                config={k: (v if isinstance(v, (int, float, str, bool)) else repr(v))
                        for k, v in cfg.items()},
                total_steps=total_steps or 0,
                secret=self._secret,
            )
        )  # fmt: skip
        # A script that forgets close() still delivers its tail when the interpreter exits.
        atexit.register(self._close_at_exit)

    # ------------------------------------------------------------------ the hot path

    def step(self, **scalars: Any) -> None:
        """Record this step's scalars (tensors, floats, ints, numpy scalars), then apply any
        LR command that arrived, effective from the next step. Never blocks, never raises for
        a controller problem; a NaN or inf value is recorded as such."""
        step = self._step
        if self._stats is not None:
            self._stats.after_step(step)  # queues device kernels only; never syncs
        names = tuple(scalars)
        if names not in self._known_names:
            self._check(names, scalars)
        records = self._records
        records.append((step, names, tuple(scalars.values())))
        if self._lr_optimizer is not None:
            lrs = tuple([g["lr"] for g in self._lr_optimizer.param_groups])
            if lrs != self._last_lrs:
                self._last_lrs = lrs
                records.append((step, self._lr_names, lrs))
        self._step = step + 1
        if step + 1 >= self._flush_at or time.monotonic() >= self._next_flush:
            self.flush()
        if self._transport.commands:
            self._apply_commands()
        if self._rewinder is not None:
            self._rewinder.maybe_snapshot(step + 1)

    def _check(self, names: tuple[str, ...], scalars: Mapping[str, Any]) -> None:
        if self._closed:
            raise MonitorConfigError("Monitor.step() called after close()")
        for name, value in scalars.items():
            _check_scalar_name(name)
            _check_scalar_value(name, value)
        self._known_names.add(names)

    def flush(self) -> None:
        """Hand the recorded steps to the sender now (one non-blocking host copy)."""
        records, self._records = self._records, []
        self._next_flush = time.monotonic() + self.flush_interval
        self._flush_at = self._step + self.flush_every
        if self._stats is not None:
            records.extend(self._stats.drain())  # (step, names, 1-D tensor on its device)
        if self._system is not None:
            sample = self._system.poll(time.monotonic())  # [] until its interval has passed
            if sample:
                records.append((max(self._step - 1, 0), *map(tuple, zip(*sample, strict=True))))
        if not records:
            return
        # Every tensor value of this flush, in record order, gathered into one vector so
        # that a single copy brings them to the host.
        parts: list[torch.Tensor] = []
        scalars: list[torch.Tensor] = []
        for _, _, vals in records:
            if isinstance(vals, torch.Tensor):  # a statistics vector
                if scalars:
                    parts.append(_stack(scalars))
                    scalars = []
                parts.append(vals)
            else:
                scalars.extend(v for v in vals if isinstance(v, torch.Tensor))
        if scalars:
            parts.append(_stack(scalars))
        host = ready = None
        if parts:
            device = parts[0].device
            with torch.no_grad():
                stacked = torch.cat([p if p.device == device else p.to(device) for p in parts])
            if stacked.device.type == "cpu":
                host = stacked
            else:
                host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
                host.copy_(stacked, non_blocking=True)
                if stacked.device.type == "cuda":
                    ready = torch.cuda.Event()
                    ready.record()
        self._transport.put(Flush(records, host, ready))

    def _apply_commands(self) -> None:
        commands = self._transport.commands
        while commands:
            cmd = commands.popleft()
            effective = self._step  # the next optimizer step is the first to use it
            if self._lr is None:
                self._transport.put_ack(
                    CommandAck(run_id=self.run_id, command_id=cmd.command_id, step=effective,
                               ok=False, error=_NO_OPTIMIZER)
                )  # fmt: skip
                continue
            before = self._lr.lrs()
            rewind_step = None
            if cmd.trigger in _EMERGENCIES:
                rewind_step = self._rewind(cmd, effective, before)
            try:
                after = self._lr.apply(cmd.action, cmd.value)
            except ValueError as exc:
                self._transport.put_ack(
                    CommandAck(run_id=self.run_id, command_id=cmd.command_id, step=effective,
                               lrs=before, ok=False, error=str(exc))
                )  # fmt: skip
                continue
            self._transport.put_ack(
                CommandAck(run_id=self.run_id, command_id=cmd.command_id, step=effective,
                           lrs=after, rewind_step=rewind_step)
            )  # fmt: skip
            change = LrChange(
                command_id=cmd.command_id, action=cmd.action, value=cmd.value,
                source=cmd.source, reason=cmd.reason, trigger=cmd.trigger, step=effective,
                lrs_before=before, lrs_after=after, rewind_step=rewind_step,
            )  # fmt: skip
            self.changes.append(change)
            if self._stats is not None:
                self._stats.lr_changed()
            if self.on_lr_change is not None:
                self.on_lr_change(change)

    def _rewind(self, cmd: Any, step: int, lrs: list[float]) -> int | None:
        """Restore before an emergency cut: the user's hook, else our snapshot."""
        if self.on_rewind is not None:
            self.on_rewind(
                LrChange(command_id=cmd.command_id, action=cmd.action, value=cmd.value,
                         source=cmd.source, reason=cmd.reason, trigger=cmd.trigger, step=step,
                         lrs_before=lrs, lrs_after=lrs)
            )  # fmt: skip
            return None
        if self._rewinder is None:
            return None
        if cmd.trigger == "spike":  # detected within a flush or two of the jump
            return self._rewinder.restore(step, margin=2 * self.flush_every)
        return self._rewinder.restore()

    @property
    def rewinds(self) -> int:
        """How many times this run restored a snapshot."""
        return self._rewinder.rewinds if self._rewinder is not None else 0

    # ------------------------------------------------------------------ state and shutdown

    @property
    def steps(self) -> int:
        """Number of steps recorded so far."""
        return self._step

    @property
    def lrs(self) -> list[float]:
        """Current LR of every param group (empty without an optimizer)."""
        return self._lr.lrs() if self._lr is not None else []

    @property
    def stats(self) -> StatsCollector | None:
        """The gradient statistics collector (its cadence, cosine source, memory), or None
        for a Monitor given neither a model nor an optimizer."""
        return self._stats

    @property
    def dropped(self) -> int:
        """Points dropped because the controller could not take them (bounded buffer)."""
        return self._transport.report.dropped_points

    @property
    def report(self) -> TransportReport:
        """Delivery counters: points sent, acknowledged, dropped, resent batches."""
        return self._transport.report

    def close(self) -> TransportReport:
        """Send what is left and wait (at most ``close_timeout`` s) for the controller to
        acknowledge it; say what could not be delivered. Safe to call twice."""
        if self._closed:
            assert self._report is not None
            return self._report
        self._closed = True
        self.flush()
        if self._stats is not None:
            self._stats.close()  # removes its optimizer hook
        if self._system is not None:
            self._system.close()
        report = self._transport.close(self.close_timeout)
        if self._lr is not None:
            self._lr.detach()
        atexit.unregister(self._close_at_exit)
        lost = report.dropped_points + report.unacked_points
        if lost:
            warnings.warn(
                f"lrpilot: run {self.run!r} ({self.run_id}): {lost} of "
                f"{report.acked_points + lost} points were not confirmed by the controller at "
                f"{self.endpoint} ({report.dropped_points} dropped while it was unreachable)",
                RuntimeWarning,
                stacklevel=2,
            )
        self._report = report
        return report

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Monitor(run={self.run!r}, run_id={self.run_id!r}, steps={self._step})"

    def _close_at_exit(self) -> None:
        self.close_timeout = min(self.close_timeout, 3.0)
        self.close()


def _stack(scalars: list[torch.Tensor]) -> torch.Tensor:
    """One 1-D tensor of the scalars' values. Under no_grad, ``stack`` needs no ``detach``
    per tensor (measured: ~30 us instead of 289 us for 80 tensors); the per-tensor reshape
    and move are only paid when shapes or devices are mixed."""
    with torch.no_grad():
        try:
            return torch.stack(scalars)
        except RuntimeError:  # a 1-element tensor of shape (1,) or another device among them
            device = scalars[0].device
            return torch.stack([t.reshape(()).to(device) for t in scalars])
