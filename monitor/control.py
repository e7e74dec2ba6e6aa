"""Per-run automatic control: feed a run's metrics in, get decisions (events and commands) out.

Pure: no sockets, no store, no clock. The server owns one :class:`RunController` per live run,
calls :meth:`RunController.observe` with every committed metrics batch, records each returned
:class:`Decision` as an event, and sends its command when there is one.

Inside, each series feeds the detectors that watch it (see :class:`~.policy.RunPolicy`):
"loss" feeds plateau, oscillation, spike and divergence (plus the early blow-up and early
stuck tests, both hard cuts of kind ``divergence``); "grad_norm" a divergence detector
for non-finite values; "cos_grad_update" the alignment detector; "lr" (group 0's LR, sent
when it changes) is remembered for the policy's bounds. Every detection goes through the
:class:`~.policy.Policy`, which returns the decision.

One cross-check happens here, where both detectors are at hand: a plateau, or a loss "stuck"
at its initial level, is not acted on while the alignment detector's current window says the
steps are too small (mean cosine
above its threshold over at least ``_VETO_POINTS`` points). Loss alone cannot tell "at the
noise floor" from "creeping forward with a tiny LR"; the cosine can, and cutting an LR that
is already too small is the one move that can only hurt.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from .detectors import (
    AlignmentDetector,
    Detection,
    Detector,
    DivergenceConfig,
    DivergenceDetector,
    OscillationDetector,
    PlateauDetector,
    SpikeDetector,
)
from .detectors.base import all_of_type
from .policy import CONTROL_MODES, Decision, Policy, RunPolicy, priority

__all__ = ["CONTROL_MODES", "Decision", "RunController"]

# Reset when the LR changes: what they measured belongs to the old LR.
_RESET_ON_LR_CHANGE = ("plateau", "oscillation", "alignment", "climb")
_VETO_POINTS = 20  # cosines needed before they may veto a plateau cut


def _vetoable(hit: Detection) -> bool:
    return hit.kind == "plateau" or (hit.kind == "divergence" and hit.data.get("cause") == "stuck")


class _EarlyStuck(DivergenceDetector):
    """The stuck test against the loss's very first point after ``rules.early_stuck`` points.

    It speaks only when the cosine has a say (``_VETO_POINTS`` points in the alignment
    detector's window) and its mean is not above the climb threshold (the steps may be too
    small): a loss no better than where it started is a dead net *or* a slow start, and only
    the cosine tells them apart. A run that sends no cosine keeps the divergence detector's
    own, later stuck test.
    """

    def __init__(
        self, config: DivergenceConfig, alignment: AlignmentDetector, too_small: float
    ) -> None:
        super().__init__(config)
        self._alignment = alignment
        self._too_small = too_small  # a mean cosine above this may be a slow start

    def watch(self, alignment: AlignmentDetector) -> None:
        """Read this alignment detector from now on (the one a reloaded policy kept)."""
        self._alignment = alignment

    def _on_block(self, step: int) -> Detection | None:
        hit = super()._on_block(step)
        if hit is None:
            return None
        align = self._alignment
        mean, n = align.window_mean()
        last = align.last_step
        if n < _VETO_POINTS or mean > self._too_small or last is None or last < step - n:
            return None  # no say, "too small", or not fed (a reload replaced it)
        why = f"; mean {self._alignment.config.series} {mean:+.2f} over {n} points: not slow"
        return replace(hit, reason=hit.reason + why, data={**hit.data, "early": True})


@dataclass(frozen=True)
class _BlowUpConfig:
    """Settings of :class:`_EarlyBlowUp` (from ``rules.early_blowup``, ``_points``)."""

    factor: float
    points: int
    series: str = "loss"


class _EarlyBlowUp(Detector):
    """A loss far above its very first point early in the run: the LR blew the net up.

    The spike and divergence detectors need a baseline of a hundred points or more; a far
    too high LR does its damage in the first tens of steps (Adam at 0.1 on the digits MLP:
    the loss jumps from 2.3 to 12-20 and the net never fully recovers, whatever LR follows).
    It fires as a ``divergence`` (a hard cut that rewinds), once per crossing: it re-arms when
    a point is back under the line, so a run rewound and blown up again fires again.
    """

    name = "early_blowup"

    def _reset_state(self) -> None:
        self._first: float | None = None
        self._armed = True

    def _get_state(self) -> dict[str, Any]:
        return {"first": self._first, "armed": self._armed}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._first, self._armed = state["first"], state["armed"]

    def _update(self, step: int, value: float) -> Detection | None:
        first = self._first
        if first is None:
            self._first = value
            return None
        c = self.config
        if first <= 0.0 or self.points > c.points:
            return None
        line = c.factor * first
        if value <= line:
            self._armed = True
            return None
        if not self._armed:
            return None
        self._armed = False
        reason = (
            f"divergence: {c.series} {value:.4g} at step {step} is {value / first:.1f}x its first "
            f"point {first:.4g} (within the first {c.points} points; limit {c.factor:g}x): the LR "
            "has blown the net up"
        )
        return Detection(
            step,
            "divergence",
            reason,
            {"value": value, "first": first, "ratio": value / first, "cause": "blowup"},
        )


class _Climb(AlignmentDetector):
    """The alignment test against the rules' lower ``climb_threshold`` over up to
    ``climb_window`` points, of which only ``lr_too_small`` speaks (cuts stay with the
    alignment detector's own threshold). A mean cosine of +0.03 to +0.06 (Adam at an LR 10x
    too small) is too weak for 100 points against +0.1 but clear over a few hundred against
    +0.02.
    """

    def _update(self, step: int, value: float) -> Detection | None:
        hit = super()._update(step, value)
        return hit if hit is not None and hit.kind == "lr_too_small" else None


def _columns(keys: Sequence[int], width: int) -> list[Sequence[int]] | None:
    """Each series' point indices in a batch, or None if a key is out of range.

    A batch is usually step-major with the same keys at every step (as the client sends
    it); then each column is a stride, found without a Python loop over the points.
    """
    n = len(keys)
    if n == 0:
        return [()] * width
    if not all_of_type(keys, int) or min(keys) < 0 or max(keys) >= width:
        return None
    first = list(keys[:width])
    if n % width == 0 and len(set(first)) == width and list(keys) == first * (n // width):
        columns: list[Sequence[int]] = [()] * width
        for offset, key in enumerate(first):
            columns[key] = range(offset, n, width)
        return columns
    lists: list[list[int]] = [[] for _ in range(width)]
    for i, key in enumerate(keys):
        lists[key].append(i)
    return list(lists)


def _take(seq: Sequence[Any], where: Sequence[int]) -> list[Any]:
    """``seq``'s items at the indices ``where`` (a stride is a slice)."""
    if isinstance(where, range):
        return list(seq[where.start : where.stop : where.step])
    return [seq[i] for i in where]


def _build_detectors(policy: RunPolicy) -> dict[str, Detector]:
    grad = DivergenceConfig(series="grad_norm", stuck_after=0, rise=math.inf)
    alignment = AlignmentDetector(policy.alignment)
    detectors: dict[str, Detector] = {
        "plateau": PlateauDetector(policy.plateau),
        "oscillation": OscillationDetector(policy.oscillation),
        "spike": SpikeDetector(policy.spike),
        "divergence": DivergenceDetector(policy.divergence),
        "grad_divergence": DivergenceDetector(grad),
        "alignment": alignment,
    }
    climb = replace(policy.alignment, threshold=policy.rules.climb_threshold,
                    window=policy.rules.climb_window)  # fmt: skip
    detectors["climb"] = _Climb(climb)
    rules = policy.rules
    if rules.early_blowup:
        blowup = _BlowUpConfig(rules.early_blowup, rules.early_blowup_points,
                               policy.divergence.series)  # fmt: skip
        detectors["early_blowup"] = _EarlyBlowUp(blowup)
    n = policy.rules.early_stuck
    if n:
        early = replace(policy.divergence, window=n, blocks=min(10, n), stuck_after=n,
                        initial_points=1, rise=math.inf, nonfinite=False)  # fmt: skip
        too_small = min(policy.alignment.threshold, policy.rules.climb_threshold)
        detectors["early_divergence"] = _EarlyStuck(early, alignment, too_small)
    return detectors


class RunController:
    """Watches one run and decides on LR changes.

    Args:
        mode: what the run asked for: ``auto`` (send commands), ``advise`` (record what would
            be done and wait for :meth:`approve`), ``off`` (only watch). A policy whose
            ``rules.mode`` is set (a per-run override in the policy file) wins.
        policy: the rules and detector settings, e.g. ``policy_file.for_run(name)``; the
            documented defaults when None.
        patience, threshold, factor, cooldown, min_lr: shortcuts that override the policy's
            plateau ``patience`` (its window, in steps) and ``threshold``, and the rules'
            ``factor``, ``cooldown`` and ``min_lr``.
        smoothing: accepted for compatibility with the first rule; no longer used.

    Example:
        >>> ctl = RunController("auto", patience=64)
        >>> ds = ctl.observe(list(range(100)), ["loss"], [0] * 100, [1.0] * 100)
        >>> [(d.step, d.kind, d.command) for d in ds]
        [(63, 'plateau', ('scale', 0.5))]
    """

    def __init__(
        self,
        mode: str = "advise",
        *,
        policy: RunPolicy | None = None,
        patience: int | None = None,
        threshold: float | None = None,
        factor: float | None = None,
        cooldown: int | None = None,
        min_lr: float | None = None,
        smoothing: float | None = None,
    ) -> None:
        if mode not in CONTROL_MODES:
            raise ValueError(f"mode must be one of {CONTROL_MODES}, got {mode!r}")
        del smoothing
        policy = policy or RunPolicy()
        plateau: dict[str, Any] = {}
        if patience is not None:
            plateau["patience"] = patience
            if patience < 8:  # too few points for a trend test: count bad points as torch does
                plateau["method"] = "torch"
            else:  # a short window still needs a few blocks to test a trend on
                plateau["blocks"] = min(policy.plateau.blocks, patience)
        if threshold is not None:
            plateau["threshold"] = threshold
        rules: dict[str, Any] = {}
        for name, value in (("factor", factor), ("cooldown", cooldown), ("min_lr", min_lr)):
            if value is not None:
                rules[name] = value
        if plateau or rules:
            policy = replace(
                policy,
                plateau=replace(policy.plateau, **plateau),
                rules=replace(policy.rules, **rules),
            )
        self._policy = policy
        self._rules = Policy(policy.rules, mode)
        self._detectors = _build_detectors(policy)
        self._route()
        self._lr: float | None = None
        self._too_small_lr: float | None = None  # the LR of the last "steps too small"

    # -- the interface the server uses

    @property
    def mode(self) -> str:
        """The mode in force (``auto``, ``advise`` or ``off``)."""
        return self._rules.mode

    @property
    def paused(self) -> bool:
        """Whether a manual override holds automatic commands back."""
        return self._rules.paused

    @property
    def policy(self) -> RunPolicy:
        """The policy in force."""
        return self._policy

    @property
    def lr(self) -> float | None:
        """Group 0's LR as last reported by the run, or None before the first report."""
        return self._lr

    def pause(self) -> None:
        """A person took over the LR: stop automatic commands until :meth:`resume`."""
        self._rules.pause()

    def resume(self) -> None:
        """Hand the LR back to automatic control; the plateau clock starts afresh."""
        self._rules.resume()
        self._detectors["plateau"].reset()

    def lr_changed(self, step: int) -> None:
        """An LR change took effect at ``step``: enter cooldown, restart the LR-bound detectors."""
        self._rules.changed(step)
        for name in _RESET_ON_LR_CHANGE:
            self._detectors[name].reset()

    def approve(self) -> Decision | None:
        """The advised command awaiting approval, as a decision to send now; None if none.

        Works in any mode: a person approving is the point. Cooldown and cap count it.
        """
        return self._rules.approve()

    @property
    def pending(self) -> Decision | None:
        """The advised decision awaiting approval, with the command it would send, or None."""
        return self._rules.pending

    def set_policy(self, policy: RunPolicy) -> None:
        """Put a new policy in force (a reloaded policy file).

        Rules change at once and keep their counters; a detector whose settings changed starts
        afresh, the others keep their state.
        """
        fresh = _build_detectors(policy)
        for name, det in fresh.items():
            old = self._detectors.get(name)
            if old is not None and old.config == det.config:
                fresh[name] = old
        self._detectors = fresh  # a detector the new policy turned off is gone with it
        early = fresh.get("early_divergence")
        if isinstance(early, _EarlyStuck):  # it must read the alignment detector being fed
            early.watch(fresh["alignment"])  # type: ignore[arg-type]
        self._rules.set_config(policy.rules)
        self._policy = policy
        self._route()

    def observe(
        self,
        steps: Sequence[int],
        names: Sequence[str],
        keys: Sequence[int],
        values: Sequence[float],
    ) -> list[Decision]:
        """Feed one metrics batch (columnar, as on the wire); return the decisions it caused.

        Point i is ``(steps[i], names[keys[i]], values[i])``. A step at or before the last
        one seen for a series (the run restarted from a checkpoint) restarts every detector
        and yields a ``restart`` decision without a command.
        """
        out = self._observe_by_series(steps, names, keys, values)
        if out is None:
            out = self._observe_by_point(steps, names, keys, values)
        return out

    def _observe_by_series(
        self,
        steps: Sequence[int],
        names: Sequence[str],
        keys: Sequence[int],
        values: Sequence[float],
    ) -> list[Decision] | None:
        """The fast path: each series through its detectors in one call, then the policy
        replayed in point order. None when the batch needs the point-by-point path.

        It makes the same decisions as point by point whenever the order across series does
        not matter: every series' steps move forward, values are floats, and the batch has no
        point of a series another detector reads mid-batch (the alignment detector's, which
        the plateau veto and the early stuck test consult). Hits are rare, so the policy only
        has to be replayed at the loss and LR points and at the hits, in their order.
        """
        n = len(keys)
        if n != len(steps) or n != len(values):
            return None
        columns = _columns(keys, len(names))
        if columns is None:
            return None
        lr_key = names.index("lr") if "lr" in names else -1
        loss_key = names.index("loss") if "loss" in names else -1
        plans: list[tuple[Sequence[int], list[int], list[float], list[Detector]]] = []
        for key, name in enumerate(names):
            where = columns[key]
            dets = self._routes.get(name)
            if not where or not dets or key == lr_key:
                continue
            if name in self._read_across:
                return None
            at = _take(steps, where)
            top = max((d.last_step for d in dets if d.last_step is not None), default=None)
            if (
                (top is not None and at[0] <= top)
                or not all(map(operator.lt, at, at[1:]))
                or not all_of_type(at, int)
            ):
                return None  # a restart (or bad input): the point path says which
            vs = _take(values, where)
            if not all_of_type(vs, float):
                return None
            plans.append((where, at, vs, dets))
        # (point index, 0 for the point itself then 1 + priority for its hits, order, what)
        events: list[tuple[int, int, int, Any]] = []
        for where, at, vs, dets in plans:
            for det in dets:
                for hit in det.feed_checked(at, vs):  # checked above, for all of them
                    i = where[bisect.bisect_left(at, hit.step)]
                    events.append((i, 1 + priority(hit), len(events), hit))
        for key in (lr_key, loss_key):
            if key >= 0:
                events.extend((i, 0, key, None) for i in columns[key])
        events.sort()
        rules = self._rules
        out: list[Decision] = []
        for i, _rank, key, hit in events:
            if hit is not None:
                out.append(self._judge(hit))
            elif key == lr_key:
                value = values[i]
                if math.isfinite(value) and value > 0:
                    self._lr = float(value)
            else:
                undo = rules.observe_loss(steps[i], values[i], self._lr)
                if undo is not None:
                    out.append(undo)
        return out

    def _observe_by_point(
        self,
        steps: Sequence[int],
        names: Sequence[str],
        keys: Sequence[int],
        values: Sequence[float],
    ) -> list[Decision]:
        """Every point in batch order through its series' detectors, then the policy."""
        by_key = [self._routes.get(name, ()) for name in names]
        lr_key = names.index("lr") if "lr" in names else -1
        loss_key = names.index("loss") if "loss" in names else -1
        # The latest step any detector of each series has seen: a point after it cannot
        # restart anything, so it skips the per-detector step checks (the hot path).
        tops = [max((d.last_step for d in dets if d.last_step is not None), default=-1)
                for dets in by_key]  # fmt: skip
        rules = self._rules
        out: list[Decision] = []
        for step, key, value in zip(steps, keys, values, strict=True):
            if key == lr_key:
                if math.isfinite(value) and value > 0:
                    self._lr = float(value)
                continue
            dets = by_key[key]
            found: list[Detection] | None = None
            if step <= tops[key]:  # the run went back (a checkpoint): check every detector
                found = []
                for det in dets:
                    last = det.last_step
                    if last is not None and step <= last:
                        out.append(self._restart(step, names[key], last))
                        tops = [-1] * len(tops)
                    hit = det.update(step, value)
                    if hit is not None:
                        found.append(hit)
            else:
                for det in dets:
                    hit = det.update(step, value)
                    if hit is not None:
                        found = [hit] if found is None else [*found, hit]
            if dets:
                tops[key] = step
            if key == loss_key:
                undo = rules.observe_loss(step, value, self._lr)
                if undo is not None:
                    out.append(undo)
            if found:
                if len(found) > 1:
                    found.sort(key=priority)
                for hit in found:
                    out.append(self._judge(hit))
        return out

    # -- inside

    def _route(self) -> None:
        routes: dict[str, list[Detector]] = {}
        for det in self._detectors.values():
            routes.setdefault(det.config.series, []).append(det)
        self._routes = routes
        # Series whose detectors others read mid-batch: the plateau veto and the early stuck
        # test consult the alignment detector as it stands at their point.
        align = self._detectors.get("alignment")
        self._read_across = {align.config.series} if align is not None else set()

    def _judge(self, hit: Detection) -> Decision:
        """The policy's decision on one detection, unless the cosine's evidence vetoes it."""
        if hit.kind == "lr_too_small" and self._lr is not None:
            self._too_small_lr = self._lr
        veto = self._veto(hit) if _vetoable(hit) else None
        return veto or self._rules.decide(hit, self._lr)

    def _veto(self, hit: Detection) -> Decision | None:
        """A plateau (or stuck) while the steps are demonstrably too small: record, no cut."""
        why = self._slow_start(hit) or self._too_small_now()
        if why is None:
            return None
        return Decision(hit.step, hit.kind, hit.reason, None, why, dict(hit.data))

    def _slow_start(self, hit: Detection) -> str | None:
        """Why a stuck loss is no dead net: the LR is at most one increase above one at which
        the cosine said the steps were too small (the alignment window starts afresh after
        the raise and may not say so yet, but a far too high LR never looked too small)."""
        slow, lr = self._too_small_lr, self._lr
        if hit.data.get("cause") != "stuck" or slow is None or lr is None:
            return None
        if lr > slow * self._policy.rules.increase_factor * (1 + 1e-9):
            return None
        return (
            f"a slow start, not a dead net: the steps were too small at LR {slow:.3g} "
            f"and the LR is {lr:.3g}"
        )

    def _too_small_now(self) -> str | None:
        """Why the steps are too small now: the alignment window's mean says so."""
        align = self._detectors["alignment"]
        assert isinstance(align, AlignmentDetector)
        mean, n = align.window_mean()
        limit = align.config.threshold
        if n < _VETO_POINTS or mean <= limit:
            return None
        return (
            f"steps too small: mean {align.config.series} {mean:+.2f} over the last {n} points "
            f"> {limit:g}; the loss is creeping, not at its floor"
        )

    def _restart(self, step: int, series: str, last: int) -> Decision:
        for det in self._detectors.values():
            det.reset()
        self._too_small_lr = None  # evidence about a run that is no more
        return Decision(
            step,
            "restart",
            f"restart: {series} went back from step {last} to {step} (resumed from a "
            "checkpoint?); detectors restarted",
            data={"from": last, "to": step},
        )
