"""How often the client computes the gradient-update cosine: every step when the loop can
afford it, less often when it cannot, within a share of the loop's time.

Automatic LR control wants one cosine per optimizer step, and on a large model that costs a
few percent of the step. On a tiny one (a 0.5 ms CPU step) the same ~15 small kernel launches
cost 15-40 % of it. :class:`CosineCadence` measures both on the host (the launches' time, no
device sync) and picks the cadence so that the cosine stays within its budget
(``StatsConfig(cos_every="budget")``, the default under ``control="auto"``), except right
after an LR change, when the controller needs it most.
"""

from __future__ import annotations

import statistics

__all__ = ["CosineCadence"]


class CosineCadence:
    """Chooses ``every`` (a power of two, at most ``max_every``) such that the cosine's host
    time per optimizer step, ``cost / every``, is at most ``budget`` of the rest of the step.
    The cap is 4 by default: the controller tests 30 cosines after an LR change, and at one
    per 8 or 16 steps that test waits hundreds of steps (bench/autocontrol.py measured the
    climb from the lowest starting LRs slowing down at every 8th step).

    ``tick(n, now)`` is called at each optimizer step ``n`` (0, 1, 2...) and says whether its
    cosine is due; ``spent(seconds)`` reports what a due one took. Every ``window`` steps the
    cadence is decided again from the medians of that window (an evaluation pause or a slow
    first call moves a median little). A change takes effect only at a step that both the old
    and the new cadence compute, so the steps due stay exactly those with ``n % every == 0``
    since the change, and the step before a due one is always known to precede it.

    The controller's cosine tests start afresh after each LR change it makes, and the
    first 30 points decide whether the change went too far or not far enough:
    :meth:`lr_changed` computes the cosine every step for the next ``hold`` steps (the run's
    first steps are dense too, until the first decision at step ``window``).
    """

    def __init__(self, budget: float, max_every: int = 4, window: int = 64, hold: int = 32) -> None:
        if not 0 < budget < 1:
            raise ValueError(f"budget must be a share of the step in (0, 1), got {budget!r}")
        if max_every < 1 or max_every & (max_every - 1):
            raise ValueError(f"max_every must be a power of two, got {max_every!r}")
        if window < max_every or window % max_every:
            raise ValueError(f"window must be a multiple of max_every, got {window!r}")
        if hold < 0:
            raise ValueError(f"hold must be >= 0 steps, got {hold!r}")
        self.budget = budget
        self.max_every = max_every
        self.window = window
        self.hold = hold
        self.every = 1  # the cadence the budget allows (outside a dense hold)
        self.cost = self.rest = float("nan")  # the medians of the last decision (seconds)
        self._costs: list[float] = []
        self._rests: list[float] = []  # step durations less their cosine's time
        self._last: float | None = None
        self._spent = 0.0  # the cosine's time in the current step
        self._due = False  # the current step computes the cosine
        self._carry = 0.0  # time spent for the next due one (the "copy" source's snapshot)
        self._next = 0  # the step at which the cadence may change next
        self._dense = range(0)  # steps computed whatever ``every`` says (after an LR change)
        self._lr_changed = False

    def tick(self, n: int, now: float) -> bool:
        """Step ``n`` begins at host time ``now`` (seconds): is its cosine due?"""
        if self._last is not None:
            self._rests.append(now - self._last - self._spent)
        self._last, self._spent = now, 0.0
        if n >= self._next and n % self.max_every == 0:
            if len(self._rests) >= self.window // 2 and self._costs:
                self.every = self._choose()
                self._costs.clear()
                self._rests.clear()
            self._next = n + self.window
        if self._lr_changed:
            # From the next step on: this one's predecessor was not told to prepare it.
            self._lr_changed = False
            self._dense = range(n + 1, n + 1 + self.hold)
        self._due = self._is_due(n)
        return self._due

    def due_next(self, n: int) -> bool:
        """Is step ``n + 1`` due? (a cadence change happens only where both agree, and a hold
        starts a step after the tick that saw the LR change)."""
        return self._is_due(n + 1)

    def lr_changed(self) -> None:
        """The controller changed the LR before the coming step: dense for ``hold`` steps."""
        self._lr_changed = self.hold > 0

    def spent(self, seconds: float) -> None:
        """The cosine took ``seconds`` of host time in this step (also in a step that only
        prepares the next one's)."""
        self._spent += seconds
        if self._due:
            self._costs.append(seconds + self._carry)
            self._carry = 0.0
        else:
            self._carry += seconds

    def _is_due(self, n: int) -> bool:
        return n % self.every == 0 or n in self._dense

    def _choose(self) -> int:
        self.cost = cost = statistics.median(self._costs)
        self.rest = rest = max(statistics.median(self._rests), 1e-9)
        every = 1
        while every < self.max_every and cost / every > self.budget * rest:
            every *= 2
        return every
