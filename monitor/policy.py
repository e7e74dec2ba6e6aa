"""The policy: turns detections into decisions (an LR command, or the reason why not).

Pure: no sockets, no store, no clock; the step numbers are the only time it knows. One
:class:`Policy` per run holds the few counters the rules need (last change, recent changes,
the advised command awaiting approval, the increase on probation).

The rules, in the order they are applied to a detection:

1. ``off`` mode only watches; a paused run (a person set the LR) gets no automatic command.
2. Cooldown: ``cooldown`` steps after any change no new change is made, except that a spike or
   a divergence may still cut after a plateau, oscillation or increase change, and that one
   increase may follow another as soon as the earlier one has passed its probation. A hard
   cut holds the next one back only until it has taken effect (its ack): a divergence seen
   at or after the step it was applied at is new evidence (the run blew up again at the lower
   LR, e.g. after a rewind) and cuts again; a spike waits out the cooldown as before.
3. Cap: at most ``max_changes`` reductions within any ``change_window`` steps (a hard cut is
   exempt: only another hard cut within ``cooldown`` holds it back; increases have their own
   cap, ``max_increases``, and do not count).
4. Bounds: the LR stays within ``[min_lr, max_lr]``; a change that would cross a bound is
   clipped to it (``set``), one smaller than ``min_change`` is not made.
5. ``advise`` mode records the command it would send and waits for :meth:`Policy.approve`.

Plateau and oscillation scale the LR by ``factor`` / ``oscillation_factor``; spike and
divergence cut it by ``cut_factor`` (the client also runs the user's hook for those kinds).
``lr_too_small`` (successive updates agree, from the alignment detector) raises it by
``increase_factor``, at most ``max_increases`` times, never without a known LR, and on
probation: if within ``probation`` steps the run oscillates, spikes or diverges, or its loss
level (median over ``probation`` steps) is worse than before the increase by more than
``probation_tolerance``, the increase is undone; after an oscillation, spike or divergence no
more are tried, after a first "worse" (which can be noise) none for ``4 * probation`` steps,
after a second none at all. (Merely "no better" is not harm: at an LR far too small the loss
barely moves in 100 steps, whatever its LR.) ``lr_too_small`` evidence that arrives during a
probation, after the increase took effect, is kept and acted on the moment the probation
passes; evidence from before it took effect was measured at the old LR and is dropped.
``lr_too_small`` comes from the alignment detector (mean cosine beyond +0.1 over 100 points)
and from a second test of the same cosine against ``climb_threshold`` over up to
``climb_window`` points (monitor/control.py), for a weak but steady "too small".
Increases come one probation apart, so an LR far too small climbs by
``increase_factor`` about every ``probation`` steps (x2 per 100 steps by default: three
decades in ~1,000 steps) while every step of the climb has to keep showing it does no harm.

Follow-through, the mirror image for an LR far too high: a plateau or oscillation cut (or a
follow-through) after which the loss level (median over ``probation`` steps) fell by at least
``follow_gain`` of what it was before is repeated at once (kind ``follow``), outside cooldown
and cap. A run held up by the noise floor of a too-high LR gains a lot from each halving and
keeps halving; one at a sensible LR gains little and stops after the first.

Probing, the search for the edge of stability: the cosine says "too small" only while the
steps are far too small (its mean tends to 0 long before the best LR), so on its own the climb
stops short. When the run's length is known (``total_steps``) and the mode is ``auto``, before
``probe_share`` of the run an increase that passed its probation with no new evidence is
followed by another one (kind ``probe``, x``increase_factor``, the same probation and cap),
and a run that needed no change by step ``3 * probation`` gets a first one. Probing ends for
good at the first harm or cut: a probe that makes the loss worse is undone; an oscillation,
spike or divergence on a probe's probation sets the LR to ``probe_backoff`` x the LR before
the probe (a spike or divergence still rewinds), not x``cut_factor``: the LR before it was
fine; any reduction (plateau, oscillation, follow, hard cut) ends it too.

Final decay: when the run's length is known (``total_steps``) and the mode is ``auto``, the
last ``decay_share`` of the run lowers the LR linearly towards 0 in ``decay_stages`` steps
(kind ``decay``), whatever LR the rules above arrived at: they find the LR to train at, the
decay then trades the noise floor of that LR for a lower one, as the decay phase of a
warmup-stable-decay schedule does. Decay stages bypass cooldown and cap; from its start step
no increase is made, and no cut is credited for the fall the decay causes.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from .detectors import (
    AlignmentConfig,
    Detection,
    DivergenceConfig,
    OscillationConfig,
    PlateauConfig,
    SpikeConfig,
)
from .detectors.base import check_choice, check_int, check_real, median

__all__ = [
    "CONTROL_MODES",
    "DECAY",
    "EMERGENCIES",
    "PROBE",
    "Decision",
    "Policy",
    "PolicyConfig",
    "RunPolicy",
    "reduce_lr",
]

CONTROL_MODES = ("auto", "advise", "off")
EMERGENCIES = ("spike", "divergence")
_PRIORITY = {"divergence": 0, "spike": 1, "oscillation": 2, "plateau": 3, "lr_too_small": 4}
#: The policy's own increase, made without evidence that the LR is too small (probing).
PROBE = "probe"
_INCREASES = ("lr_too_small", PROBE)
#: The policy's own scheduled act: the LR decay over the end of a run of known length.
DECAY = "decay"


@dataclass(frozen=True)
class Decision:
    """What the controller concluded at ``step``.

    ``kind`` names the detection (plateau, oscillation, spike, divergence, lr_too_small) or
    the policy's own act (``undo`` of an increase, ``restart`` after steps went back).
    ``command`` is ``("scale", factor)`` or ``("set", lr)`` when the LR should change *now*,
    else None, in which case ``why_not`` says why no command was sent (advise, off, paused,
    cooldown...). A command whose kind is in :data:`EMERGENCIES` is a hard cut: the client
    runs the user's hook for it.
    """

    step: int
    kind: str
    reason: str
    command: tuple[str, float] | None = None
    why_not: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyConfig:
    """The decision rules (see the module docstring); every field is checked on construction.

    Args:
        mode: ``auto``, ``advise`` or ``off`` to force a mode; None keeps what the run asked
            for with ``Monitor(control=...)``.
        factor: LR multiplier on a plateau.
        oscillation_factor: LR multiplier on oscillation.
        cut_factor: LR multiplier on a spike or a divergence (the hard cut).
        cooldown: steps after a change during which no new change is made.
        min_lr, max_lr: bounds of the LR the policy sets.
        min_change: a change of the LR smaller than this is not made (torch's ``eps``).
        max_changes: at most this many reductions ...
        change_window: ... within this many steps (increases are not counted).
        increase_factor: LR multiplier when the steps are too small; 1 turns increases off.
        max_increases: increases over the run's life (an undone one ends them).
        probation: steps after an increase in which it must not make things worse; the next
            increase may come when it is over. Also the steps over which a cut is judged.
        probation_tolerance: an increase is undone when the loss level after it is above the
            level before by more than this fraction.
        follow_gain: a plateau or oscillation cut after which the loss level fell by at least
            this fraction is repeated (``follow``); 1 turns follow-through off.
        early_blowup: within the first ``early_blowup_points`` loss points, a loss above
            this multiple of its very first point (the untrained net's) is a net blown up by
            a far too high LR, before any other test has a baseline: a hard cut (kind
            ``divergence``, which rewinds to the snapshot from before the first step). At the
            benchmark's good LRs the first 200 points never exceeded 1.11x the first; at the
            LRs that ruin a net they reached 8-7,000x. 0 turns it off; a first point <= 0
            (a loss that is not a positive error) turns it off for the run.
        early_blowup_points: the loss points the blow-up test covers.
        climb_threshold: a second test of the cosine, for increases only: ``lr_too_small``
            when its mean is significantly above this over up to ``climb_window`` points
            (the alignment detector's ``alpha``); also the mean above which the early stuck
            test keeps quiet. ``alignment.threshold`` leaves only the alignment test.
        climb_window: the most cosines the climb test averages.
        early_stuck: after this many loss points (and again every as many), a loss no better
            than its very first point (the untrained net's) is a dead net, as a far too high
            LR leaves it, and gets a hard cut (kind ``divergence``, which rewinds), but only
            while the cosine has at least 20 points and does not say the steps are too small
            (a slow start at a tiny LR is no better than its first point either), nor said so
            at an LR at most one ``increase_factor`` below the current one; 0 turns it off.
            The divergence detector's own stuck test waits ``stuck_after`` (1,000).
        total_steps: the run's planned length (``Monitor(total_steps=...)`` sends it); 0 when
            unknown. With it, ``auto`` mode ends the run with a decay (kind ``decay``).
        decay_share: the final share of ``total_steps`` over which the LR decays linearly
            towards 0, in ``decay_stages`` equal stages, as the last phase of a
            warmup-stable-decay schedule does: a constant LR leaves the loss at its noise
            floor, the decay lowers it. No increase is made from its start; 0 turns it off.
        decay_stages: LR changes the decay is made of (each one an event).
        probe_share: the share of ``total_steps`` within which probes are made (``auto``
            mode only; see the module docstring); 0 turns probing off.
        probe_backoff: the LR after an oscillation, spike or divergence on a probe's
            probation, as a multiple of the LR before the probe.
    """

    mode: str | None = None
    factor: float = 0.5
    oscillation_factor: float = 0.5
    cut_factor: float = 0.1
    cooldown: int = 200
    min_lr: float = 1e-7
    max_lr: float = 1.0
    min_change: float = 1e-8
    max_changes: int = 4
    change_window: int = 2000
    increase_factor: float = 2.0
    max_increases: int = 16
    probation: int = 100
    probation_tolerance: float = 0.02
    follow_gain: float = 0.05
    early_stuck: int = 100
    early_blowup: float = 2.0
    early_blowup_points: int = 200
    climb_threshold: float = 0.02
    climb_window: int = 400
    total_steps: int = 0
    decay_share: float = 0.2
    decay_stages: int = 10
    probe_share: float = 0.5
    probe_backoff: float = 0.5

    def __post_init__(self) -> None:
        if self.mode is not None:
            check_choice("policy.mode", self.mode, CONTROL_MODES)
        for name in ("factor", "oscillation_factor", "cut_factor"):
            check_real(
                f"policy.{name}", getattr(self, name), low=0.0, high=1.0, low_open=True,
                high_open=True,
            )  # fmt: skip
        check_int("policy.cooldown", self.cooldown, low=0)
        check_real("policy.min_lr", self.min_lr, low=0.0)
        check_real("policy.max_lr", self.max_lr, low=0.0, low_open=True)
        if self.max_lr <= self.min_lr:
            raise ValueError(
                f"policy.max_lr must be above min_lr {self.min_lr:g}, got {self.max_lr!r}"
            )
        check_real("policy.min_change", self.min_change, low=0.0)
        check_int("policy.max_changes", self.max_changes, low=1)
        check_int("policy.change_window", self.change_window, low=1)
        check_real("policy.increase_factor", self.increase_factor, low=1.0, high=10.0)
        check_int("policy.max_increases", self.max_increases, low=0)
        check_int("policy.probation", self.probation, low=10)
        check_real("policy.probation_tolerance", self.probation_tolerance, low=0.0)
        check_real("policy.follow_gain", self.follow_gain, low=0.0, high=1.0, low_open=True)
        check_real("policy.climb_threshold", self.climb_threshold, low=0.0, high=1.0,
                   high_open=True)  # fmt: skip
        check_int("policy.climb_window", self.climb_window, low=10, high=100_000)
        if self.early_stuck != 0:
            check_int("policy.early_stuck", self.early_stuck, low=20)
        if self.early_blowup != 0:
            check_real("policy.early_blowup", self.early_blowup, low=1.0, low_open=True)
        check_int("policy.early_blowup_points", self.early_blowup_points, low=1)
        check_int("policy.total_steps", self.total_steps, low=0)
        check_real("policy.decay_share", self.decay_share, low=0.0, high=1.0, high_open=True)
        check_int("policy.decay_stages", self.decay_stages, low=1, high=1000)
        check_real("policy.probe_share", self.probe_share, low=0.0, high=1.0)
        check_real("policy.probe_backoff", self.probe_backoff, low=0.0, high=1.0, low_open=True)


@dataclass(frozen=True)
class RunPolicy:
    """Everything that governs one run: the rules and every detector's settings.

    ``plateau_series`` names the series the plateau detector watches ("loss", or an eval
    metric such as "val_loss" with ``plateau.method = "torch"`` and ``plateau.mode``).
    """

    rules: PolicyConfig = field(default_factory=PolicyConfig)
    plateau: PlateauConfig = field(default_factory=PlateauConfig)
    oscillation: OscillationConfig = field(default_factory=OscillationConfig)
    spike: SpikeConfig = field(default_factory=SpikeConfig)
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)

    def __post_init__(self) -> None:
        kinds = {
            "rules": PolicyConfig,
            "plateau": PlateauConfig,
            "oscillation": OscillationConfig,
            "spike": SpikeConfig,
            "divergence": DivergenceConfig,
            "alignment": AlignmentConfig,
        }
        for name, cls in kinds.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"RunPolicy.{name} must be a {cls.__name__}")


def reduce_lr(lr: float, factor: float, min_lr: float, eps: float) -> float:
    """The LR after a reduction, exactly as ReduceLROnPlateau computes it for one group."""
    new_lr = max(lr * factor, min_lr)
    return new_lr if lr - new_lr > eps else lr


def priority(detection: Detection) -> int:
    """Sort key: the most urgent kind of detection first (divergence, spike, ...)."""
    return _PRIORITY.get(detection.kind, 9)


class Policy:
    """One run's decision rules and the counters they need; see the module docstring.

    Args:
        config: the rules.
        mode: the mode the run asked for; ``config.mode`` overrides it when set.
    """

    def __init__(self, config: PolicyConfig | None = None, mode: str = "advise") -> None:
        check_choice("mode", mode, CONTROL_MODES)
        self.config = config or PolicyConfig()
        self.requested_mode = mode
        self.paused = False
        self.pending: Decision | None = None
        self._quiet_until = -math.inf  # no change before this step
        self._hold_increase_until = -math.inf  # no increase before this step (after a cut)
        self._increase_unacked = False  # an increase was sent and its ack not seen yet
        self._last_emergency = -math.inf  # step of the last hard cut
        self._emergency_unacked = False  # a hard cut was sent and its ack not seen yet
        self._emergency_applied = -math.inf  # the step the last hard cut took effect at
        self._changes: deque[int] = deque()  # steps of recent changes (for the cap)
        self._increases = 0
        self._undos = 0  # increases undone
        self._increase_blocked = ""  # why no more increases, once one failed
        self._probation: dict[str, Any] | None = None  # the increase being judged
        self._cut_trial: dict[str, Any] | None = None  # the reduction being judged
        self._deferred: Detection | None = None  # lr_too_small seen during a probation
        self._losses: deque[float] = deque(maxlen=2 * self.config.probation)
        self._step = 0
        self._lr: float | None = None  # the LR at the last decision
        self._decay_stage = 0  # stages of the final decay made so far
        self._probing_over = ""  # why no more probes, once probing ended

    @property
    def mode(self) -> str:
        """The mode in force: the config's when it sets one, else the run's."""
        return self.config.mode or self.requested_mode

    def set_config(self, config: PolicyConfig) -> None:
        """Swap the rules (a reloaded policy file); counters and the pending advice stay."""
        self.config = config
        if self._losses.maxlen != 2 * config.probation:
            self._losses = deque(self._losses, maxlen=2 * config.probation)

    # -- what happens to the run

    def pause(self) -> None:
        """A person took over the LR: no automatic command until :meth:`resume`, and no more
        probes after it (the LR they chose is not the policy's to search from)."""
        self.paused = True
        self._probing_over = self._probing_over or "a person set the LR"

    def resume(self) -> None:
        """Hand the LR back to automatic control."""
        self.paused = False

    def changed(self, step: int) -> None:
        """An LR change (automatic or manual) took effect at ``step``: cooldown starts there.

        The advice awaiting approval is dropped: it was computed for the LR before. A change
        other than the policy's own increase also holds increases back for ``cooldown``.
        """
        self._quiet_until = max(self._quiet_until, step + self.config.cooldown)
        if self._emergency_unacked:
            self._emergency_unacked = False
            self._emergency_applied = step
        if self._increase_unacked:
            self._increase_unacked = False  # the ack of our increase: probation times it
            if self._deferred is not None and self._deferred.step < step:
                self._deferred = None  # measured at the LR before the increase: stale
        else:
            self._hold_increase_until = max(self._hold_increase_until, step + self.config.cooldown)
        if self.pending is not None and self.pending.step <= step:
            self.pending = None

    def observe_loss(self, step: int, value: float, lr: float | None = None) -> Decision | None:
        """Track the loss level (finite values only) and end an increase's probation.

        Returns the ``undo`` decision when the increase on probation made the loss worse, the
        next increase when it passed and ``lr_too_small`` came during it (``lr``: the LR in
        force, None if unknown), or a ``follow`` cut (see the module docstring).
        """
        self._step = step
        decay = self._decay_due(step, lr)
        if decay is not None:
            return decay
        if not math.isfinite(value):
            return None
        self._losses.append(value)
        follow = self._judge_cut(step)
        if follow is not None:
            return follow
        trial = self._probation
        if trial is None:
            return self._probe(step, lr, None)
        if step < trial["step"] + self.config.probation:
            return None
        after = self._level()
        if after <= trial["before"] * (1.0 + self.config.probation_tolerance):
            self._probation = None  # the increase did no harm: it stays
            deferred, self._deferred = self._deferred, None
            if deferred is None:
                return self._probe(step, lr, (trial, after))
            if self._increase_for(step, lr)[0] is None:
                return None  # it would be refused now (cap, bound...)
            return self.decide(replace(deferred, step=step,
                                       reason=f"{deferred.reason} (at step {deferred.step}, "
                                              f"during the probation)"), lr)  # fmt: skip
        reason = (
            f"undo: loss level {trial['before']:.4g} -> {after:.4g} in the {self.config.probation}"
            f" steps after the {trial['kind']} at step {trial['step']}, worse"
        )
        if trial["kind"] == PROBE:
            self._probing_over = f"the probe at step {trial['step']} made the loss worse"
        return self._undo(step, reason, {"before": trial["before"], "after": after})

    def probe_end(self) -> float:
        """The step before which probes are made; 0 when probing is off (no ``total_steps``,
        ``probe_share`` 0, or a mode other than ``auto``)."""
        c = self.config
        if c.total_steps <= 0 or c.probe_share <= 0.0 or self.mode != "auto":
            return 0.0
        return min(c.total_steps * c.probe_share, self.decay_start())

    def _probe(
        self, step: int, lr: float | None, passed: tuple[dict[str, Any], float] | None
    ) -> Decision | None:
        """A probe when one is due (see the module docstring), else None.

        ``passed`` is the increase whose probation just passed and the loss level after it;
        None asks whether a run that never needed a change should get its first probe.
        """
        c = self.config
        if (
            self._probing_over or self.paused or step >= self.probe_end()
            or self.pending is not None
        ):  # fmt: skip
            return None
        if passed is None and (
            self._increases or step < 3 * c.probation or step < self._quiet_until
            or self._cut_trial is not None or len(self._losses) < c.probation
        ):  # fmt: skip
            return None
        command, _why = self._increase_for(step, lr)
        if command is None:
            return None
        self._lr = lr  # the LR before the probe, for its undo
        end = f"probing until step {self.probe_end():.0f}"
        if passed is None:
            level = self._level()
            reason = (
                f"probe: no change needed in {step} steps (loss level {level:.4g}); trying "
                f"LR x{c.increase_factor:g}, on probation ({end})"
            )
            data: dict[str, Any] = {"level": level}
        else:
            trial, after = passed
            reason = (
                f"probe: loss level {trial['before']:.4g} -> {after:.4g} in the "
                f"{c.probation} steps after the {trial['kind']} at step {trial['step']}, no "
                f"worse; trying LR x{c.increase_factor:g}, on probation ({end})"
            )
            data = {"before": trial["before"], "after": after, "after_step": trial["step"]}
        return self._finish(step, PROBE, reason, command, "", data)

    def decay_start(self) -> float:
        """The step the final decay begins at; inf when it is off (no ``total_steps``,
        ``decay_share`` 0, or a mode other than ``auto``)."""
        c = self.config
        if c.total_steps <= 0 or c.decay_share <= 0.0 or self.mode != "auto":
            return math.inf
        return c.total_steps * (1.0 - c.decay_share)

    def _decay_due(self, step: int, lr: float | None) -> Decision | None:
        """The next stage of the final decay once ``step`` reaches it, else None.

        Stage k of n holds the LR at ``1 - (k - 0.5) / n`` of its level when the decay began
        (the midpoint of a linear decay to 0 over the stage), as a ``scale`` of the LR in
        force, so cuts and a person's changes made meanwhile compose with it.
        """
        c = self.config
        start = self.decay_start()
        if step < start or self._decay_stage >= c.decay_stages:
            return None
        n = c.decay_stages
        length = max(c.total_steps - start, 1.0)
        stage = min(n, int((step - start) / length * n) + 1)
        if stage <= self._decay_stage:
            return None
        level_before = 1.0 - (self._decay_stage - 0.5) / n if self._decay_stage else 1.0
        level = 1.0 - (stage - 0.5) / n
        factor = level / level_before
        if self._decay_stage == 0:
            # From here on the loss falls because of the decay: neither an increase on
            # probation nor a cut being judged may take the credit (or the blame).
            self._probation = self._deferred = self._cut_trial = None
        self._decay_stage = stage
        reason = (
            f"final decay {stage}/{n}: step {step} of {c.total_steps}, LR x{factor:.3g} "
            f"({level:.0%} of its level at step {start:.0f}; linear towards 0 over the last "
            f"{c.decay_share:.0%} of the run)"
        )
        command: tuple[str, float] | None = ("scale", factor)
        why_not = ""
        if lr is not None and lr * factor < c.min_lr:
            command = ("set", c.min_lr) if lr > c.min_lr * (1.0 + 1e-9) else None
            why_not = "" if command else f"bound: LR {lr:.3g} is at min_lr {c.min_lr:.3g}"
        data = {"stage": stage, "stages": n, "factor": factor, "level": level,
                "total_steps": c.total_steps}  # fmt: skip
        return self._finish(step, DECAY, reason, command, why_not, data)

    def _judge_cut(self, step: int) -> Decision | None:
        cut = self._cut_trial
        c = self.config
        if cut is None or step < cut["step"] + c.probation:
            return None
        self._cut_trial = None
        after = self._level()
        before, trend = cut["before"], cut["trend"]
        # The level the loss would have reached anyway: a run still learning falls after any
        # cut, so only a fall beyond its own pace (the last two windows) credits the cut.
        if trend is None or c.follow_gain >= 1.0 or not before > 0:
            return None
        expected = before * min(1.0, trend)
        if after > expected * (1.0 - c.follow_gain):
            return None
        lr = cut["lr_after"]
        if lr is not None and lr <= c.min_lr * (1.0 + 1e-9):
            return None
        gain = 1.0 - after / before
        reason = (
            f"follow: loss level {before:.4g} -> {after:.4g} (-{gain:.0%}, its own pace gave "
            f"{expected:.4g}) in the {c.probation} steps after the cut at step {cut['step']}: "
            "the LR was too high, cutting again"
        )
        factor = cut["factor"]
        command: tuple[str, float] = ("scale", factor)
        if lr is not None and lr * factor < c.min_lr:
            command = ("set", c.min_lr)
        data = {"before": before, "after": after, "gain": gain, "expected": expected,
                "trend": trend, "cut_step": cut["step"]}  # fmt: skip
        return self._finish(step, "follow", reason, command, "", data)

    # -- detections

    def decide(self, detection: Detection, lr: float | None) -> Decision:
        """The decision for one detection given the current LR (None while unknown)."""
        self._step = max(self._step, detection.step)
        self._lr = lr
        kind = detection.kind
        trial = self._probation
        if trial is not None and kind in ("oscillation", *EMERGENCIES):
            self._increase_blocked = (
                f"the {trial['kind']} at step {trial['step']} was followed by {kind}"
            )
            if trial["kind"] == PROBE:
                return self._probe_failed(detection, lr, trial)
            if kind != "oscillation":  # the hard cut below does more than an undo would
                self._probation = None
            else:
                return self._undo(
                    detection.step, f"{detection.reason}; undoing the increase at {trial['step']}",
                    dict(detection.data), kind="oscillation",
                )  # fmt: skip
        command, why_not = self._command_for(detection, lr)
        if kind == "lr_too_small" and command is None and "on probation" in why_not:
            self._deferred = detection
        return self._finish(detection.step, kind, detection.reason, command, why_not,
                            dict(detection.data))  # fmt: skip

    def _probe_failed(
        self, detection: Detection, lr: float | None, trial: dict[str, Any]
    ) -> Decision:
        """An oscillation, spike or divergence on a probe's probation: the edge is found.

        The LR goes to ``probe_backoff`` x the LR before the probe (that one was fine; a
        hard cut of x``cut_factor`` would throw away the climb); the kind stays the
        detection's, so a spike or a divergence still rewinds.
        """
        c = self.config
        self._probation = None
        self._deferred = None
        self._undos += 1
        self._probing_over = f"the probe at step {trial['step']} was followed by {detection.kind}"
        kind = detection.kind
        if kind in EMERGENCIES and (why := self._emergency_hold(kind, detection.step)):
            return self._finish(detection.step, kind, detection.reason, None, why,
                                dict(detection.data))  # fmt: skip
        lr_before = trial.get("lr_before")
        target = lr_before * c.probe_backoff if lr_before is not None else None
        command: tuple[str, float] = (
            ("set", max(target, c.min_lr)) if target is not None
            else ("scale", c.probe_backoff / c.increase_factor)
        )  # fmt: skip
        reason = (
            f"{detection.reason}; the probe at step {trial['step']} went past the edge: LR "
            f"x{c.probe_backoff:g} of its level before it"
            + (f" ({lr_before:.3g} -> {target:.3g})" if target is not None else "")
            + ", no more probes"
        )
        data = {**detection.data, "probe_step": trial["step"]}
        return self._finish(detection.step, kind, reason, command, "", data)

    def approve(self) -> Decision | None:
        """Take the advised command awaiting approval, as a decision to send now; None if none.

        Only the latest advice waits: a newer detection replaces it and an LR change drops it.
        """
        advice = self.pending
        if advice is None:
            return None
        self.pending = None
        self._record_change(max(self._step, advice.step), advice)
        return replace(advice, reason=f"approved: {advice.reason}", why_not="")

    # -- inside

    def _command_for(
        self, detection: Detection, lr: float | None
    ) -> tuple[tuple[str, float] | None, str]:
        c = self.config
        kind, step = detection.kind, detection.step
        if kind == "lr_too_small":
            return self._increase_for(step, lr)
        if kind == "plateau":
            factor = c.factor
        elif kind == "oscillation":
            factor = c.oscillation_factor
        elif kind in EMERGENCIES:
            factor = c.cut_factor
        else:
            return None, f"no rule for {kind!r}"
        if kind in EMERGENCIES:
            # A hard cut is held back neither by an ordinary change nor by the cap, only by
            # another hard cut: until that one has taken effect, and for evidence from before.
            why = self._emergency_hold(kind, step)
            if why:
                return None, why
        elif step < self._quiet_until:
            return None, f"cooldown until step {self._quiet_until}"
        elif why := self._capped(step):
            return None, why
        if lr is None:
            return ("scale", factor), ""
        if lr <= c.min_lr * (1.0 + 1e-9):
            return None, f"bound: LR {lr:.3g} is at min_lr {c.min_lr:.3g}"
        new_lr = reduce_lr(lr, factor, c.min_lr, c.min_change)
        if new_lr == lr:
            return None, f"bound: change of LR {lr:.3g} is below min_change {c.min_change:.3g}"
        if new_lr > lr * factor * (1.0 + 1e-12):
            return ("set", new_lr), ""
        return ("scale", factor), ""

    def _increase_for(self, step: int, lr: float | None) -> tuple[tuple[str, float] | None, str]:
        c = self.config
        if c.increase_factor <= 1.0 or c.max_increases == 0:
            return None, "increases are off (increase_factor 1 or max_increases 0)"
        if self._decay_stage or step >= self.decay_start():
            # By step, too: the cosine's detection for a step can be judged before that
            # step's loss point, which makes the first stage.
            return None, "the final decay is on: no more increases"
        if self._increase_blocked:
            return None, f"no more increases: {self._increase_blocked}"
        if self._probation is not None:
            return None, f"the increase at step {self._probation['step']} is on probation"
        if self._increases >= c.max_increases:
            return None, f"cap: {self._increases} increases already (max_increases)"
        if step < self._hold_increase_until:
            return None, f"cooldown until step {self._hold_increase_until}"
        if lr is None:
            return None, "LR unknown: never increase blind"
        if self._increase_unacked:  # the LR reported now may predate it: never stack two
            return None, "the last increase has not taken effect yet"
        if lr >= c.max_lr * (1.0 - 1e-9):
            return None, f"bound: LR {lr:.3g} is at max_lr {c.max_lr:.3g}"
        if lr * c.increase_factor > c.max_lr:
            return ("set", c.max_lr), ""
        return ("scale", c.increase_factor), ""

    def _emergency_hold(self, kind: str, step: int) -> str:
        c = self.config
        last = self._last_emergency
        if step >= last + c.cooldown:
            return ""
        if self._emergency_unacked:
            return f"cooldown: hard cut at step {last} not applied yet"
        if step < self._emergency_applied:
            return f"cooldown: hard cut at step {last} applied at {self._emergency_applied}"
        if kind == "spike":  # the restored or cut run may jump once: not a new emergency
            return f"cooldown: hard cut at step {last}"
        return ""

    def _capped(self, step: int) -> str:
        c = self.config
        while self._changes and self._changes[0] <= step - c.change_window:
            self._changes.popleft()
        if len(self._changes) >= c.max_changes:
            return f"cap: {len(self._changes)} changes in the last {c.change_window} steps"
        return ""

    def _finish(
        self,
        step: int,
        kind: str,
        reason: str,
        command: tuple[str, float] | None,
        why_not: str,
        data: dict[str, Any],
    ) -> Decision:
        if command is not None:
            if self.mode == "off":
                command, why_not = None, "off: only watching"
            elif self.paused:
                command, why_not = None, "paused (manual override)"
        decision = Decision(step, kind, reason, command, why_not, data)
        if command is None:
            return decision
        if self.mode == "advise":
            self.pending = decision
            return replace(decision, command=None, why_not="advise: awaiting approval")
        self._record_change(step, decision)
        return decision

    def _record_change(self, step: int, decision: Decision) -> None:
        c = self.config
        self._quiet_until = max(self._quiet_until, step + c.cooldown)
        if decision.kind not in (*_INCREASES, DECAY):
            self._changes.append(step)
            self._hold_increase_until = max(self._hold_increase_until, step + c.cooldown)
            # Any reduction says the LR has been high enough once: probing is over.
            self._probing_over = self._probing_over or f"{decision.kind} at step {step}"
        if decision.kind in EMERGENCIES:
            self._last_emergency = step
            self._emergency_unacked = True
        before = self._level()
        if decision.kind in _INCREASES and decision.command is not None:
            self._increases += 1
            self._increase_unacked = True
            self._probation = {"step": step, "before": before, "lr_before": self._lr,
                               "kind": "increase" if decision.kind != PROBE else PROBE}  # fmt: skip
        self._cut_trial = None
        if (
            decision.kind in ("plateau", "oscillation", "follow")
            and decision.command
            and not self._decay_stage
            and "probe_step" not in decision.data  # the fall after it is the recovery
        ):
            action, value = decision.command
            lr = self._lr
            factor = value if action == "scale" else (value / lr if lr else 0.5)
            if 0.0 < factor < 1.0:
                prev = self._level(previous=True)
                trend = (before / prev if math.isfinite(prev) and prev > 0
                         and math.isfinite(before) else None)  # fmt: skip
                if decision.kind == "follow":  # the pace from before the first cut of the chain
                    trend = decision.data.get("trend", trend)
                self._cut_trial = {
                    "step": step, "factor": factor, "before": before, "trend": trend,
                    "lr_after": lr * factor if lr is not None else None,
                }  # fmt: skip

    def _level(self, previous: bool = False) -> float:
        """Median of the last ``probation`` losses (inf if none), or of the ``probation``
        before those (``previous``; nan until there are that many)."""
        n = self.config.probation
        losses = list(self._losses)
        if previous:
            return median(losses[-2 * n : -n]) if len(losses) >= 2 * n else math.nan
        return median(losses[-n:]) if losses else math.inf

    def _undo(self, step: int, reason: str, data: dict[str, Any], kind: str = "undo") -> Decision:
        """Go back to the LR before the increase; bypasses cooldown and cap (a known-good LR)."""
        trial = self._probation or {}
        self._undos += 1
        if self._undos == 1 and kind == "undo":
            # A loss worse by a few percent can be noise (a median over the first tens of
            # points at a tiny LR): one such undo only holds increases back for a while.
            hold = step + 4 * self.config.probation
            self._hold_increase_until = max(self._hold_increase_until, hold)
        else:
            self._increase_blocked = self._increase_blocked or "an increase was undone twice"
        self._probation = None
        self._deferred = None
        lr_before = trial.get("lr_before")
        command: tuple[str, float] = (
            ("set", lr_before) if lr_before is not None
            else ("scale", 1.0 / self.config.increase_factor)
        )  # fmt: skip
        return self._finish(step, kind, reason, command, "", data)
