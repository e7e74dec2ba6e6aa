"""The cosine's cadence under a time budget, on simulated clocks (no training)."""

from __future__ import annotations

import itertools

import pytest
from lrpilot.client.cadence import CosineCadence


def simulate(
    cadence: CosineCadence, steps: int, rest: float, cost: float, start: int = 0, t: float = 0.0
) -> tuple[list[int], float]:
    """Run ``steps`` optimizer steps of ``rest`` seconds plus ``cost`` when the cosine is due;
    return the due steps and the clock. Checks that ``due_next`` always told the truth."""
    due_steps = []
    promised = None
    for n in range(start, start + steps):
        due = cadence.tick(n, t)
        assert promised is None or promised == due, f"step {n}: due_next said {promised}"
        promised = cadence.due_next(n)
        t += rest
        if due:
            due_steps.append(n)
            cadence.spent(cost)
            t += cost
    return due_steps, t


@pytest.mark.parametrize(
    ("cost_share", "every"),
    [(0.01, 1), (0.029, 1), (0.05, 2), (0.10, 4), (0.2, 8), (0.4, 16), (3.0, 16)],
)
def test_the_cadence_is_the_smallest_power_of_two_within_the_budget(
    cost_share: float, every: int
) -> None:
    cadence = CosineCadence(budget=0.03, max_every=16, window=64)
    simulate(cadence, 1000, rest=1e-3, cost=cost_share * 1e-3)
    assert cadence.every == every


def test_by_default_the_cosine_comes_at_least_every_fourth_step() -> None:
    cadence = CosineCadence(budget=0.03)  # however costly: the controller needs it promptly
    due, _ = simulate(cadence, 1000, rest=1e-3, cost=3e-3)
    assert cadence.every == 4
    assert max(b - a for a, b in itertools.pairwise(due)) == 4


def test_due_steps_follow_the_cadence_and_change_only_where_both_agree() -> None:
    cadence = CosineCadence(budget=0.03, max_every=16, window=64)
    _, t = simulate(cadence, 500, rest=1e-3, cost=0.2e-3)  # settles at 8
    assert cadence.every == 8
    later, t = simulate(cadence, 300, rest=1e-3, cost=0.2e-3, start=500, t=t)
    assert later == [n for n in range(500, 800) if n % 8 == 0]
    # The cosine gets cheap (e.g. the model moved to a faster device): back to every step,
    # from a step that both cadences compute.
    cheap, _ = simulate(cadence, 400, rest=1e-3, cost=0.001e-3, start=800, t=t)
    assert cadence.every == 1
    first_dense = next(n for a, n in itertools.pairwise(cheap) if n - a == 1) - 1
    assert first_dense % 16 == 0


def test_after_an_lr_change_the_cosine_is_dense_for_hold_steps() -> None:
    cadence = CosineCadence(budget=0.03, max_every=4, window=64, hold=32)
    _, t = simulate(cadence, 200, rest=1e-3, cost=3e-3)  # settles at 4
    assert cadence.every == 4
    cadence.lr_changed()  # between optimizer steps 199 and 200
    due, _ = simulate(cadence, 100, rest=1e-3, cost=3e-3, start=200, t=t)
    # 200 was not prepared by 199 (due_next said no): the hold starts at 201.
    assert due == [200, *range(201, 233), *range(236, 300, 4)]
    assert cadence.every == 4  # the budget's own choice is unchanged


def test_no_hold_keeps_the_cadence_through_lr_changes() -> None:
    cadence = CosineCadence(budget=0.03, max_every=4, window=64, hold=0)
    _, t = simulate(cadence, 200, rest=1e-3, cost=3e-3)
    cadence.lr_changed()
    due, _ = simulate(cadence, 100, rest=1e-3, cost=3e-3, start=200, t=t)
    assert due == list(range(200, 300, 4))


def test_a_pause_between_steps_does_not_move_the_cadence() -> None:
    cadence = CosineCadence(budget=0.03, max_every=16, window=64)
    t = 0.0
    for n in range(640):
        if cadence.tick(n, t):
            cadence.spent(0.1e-3)
            t += 0.1e-3
        t += 1e-3 + (30.0 if n % 100 == 99 else 0.0)  # an evaluation every 100 steps
    assert cadence.every == 4  # 10 % of the step at a 3 % budget


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="budget"):
        CosineCadence(budget=0.0)
    with pytest.raises(ValueError, match="power of two"):
        CosineCadence(budget=0.03, max_every=12)
    with pytest.raises(ValueError, match="window"):
        CosineCadence(budget=0.03, max_every=16, window=40)
    with pytest.raises(ValueError, match="hold"):
        CosineCadence(budget=0.03, hold=-1)
