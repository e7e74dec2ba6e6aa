"""The policy: detections in, decisions (command or why not) out."""

from __future__ import annotations

import pytest
from lrpilot.monitor.detectors import Detection
from lrpilot.monitor.policy import Policy, PolicyConfig, RunPolicy, reduce_lr


def det(step: int, kind: str = "plateau") -> Detection:
    return Detection(step, kind, f"{kind}: test", {"x": 1.0})


def auto(**rules) -> Policy:
    return Policy(PolicyConfig(**rules), "auto")


def test_factor_per_kind_and_hard_cut() -> None:
    p = auto(cooldown=0, max_changes=100)
    table = [
        (det(10, "plateau"), ("scale", 0.5)),
        (det(20, "oscillation"), ("scale", 0.5)),
        (det(30, "spike"), ("scale", 0.1)),
        (det(40, "divergence"), ("scale", 0.1)),
        (det(50, "mystery"), None),
    ]
    for i, (d, expected) in enumerate(table):
        got = p.decide(d, lr=0.1).command
        assert got == expected, f"wrong at step {i}: expected {expected}, got {got}"


def test_cooldown_holds_ordinary_changes_but_not_a_hard_cut() -> None:
    p = auto(cooldown=100)
    assert p.decide(det(0), 0.1).command == ("scale", 0.5)
    held = p.decide(det(50, "oscillation"), 0.05)
    assert held.command is None and held.why_not == "cooldown until step 100"
    assert p.decide(det(60, "spike"), 0.05).command == ("scale", 0.1)
    again = p.decide(det(70, "divergence"), 0.005)
    assert again.command is None and "hard cut at step 60" in again.why_not
    assert p.decide(det(160), 0.005).command == ("scale", 0.5)


def test_changed_starts_cooldown_from_the_applied_step() -> None:
    p = auto(cooldown=100)
    p.changed(500)  # e.g. a manual set acknowledged at step 500
    assert p.decide(det(550), 0.1).why_not == "cooldown until step 600"
    assert p.decide(det(600), 0.1).command == ("scale", 0.5)


def test_bounds_clip_to_min_lr_and_refuse_at_it() -> None:
    p = auto(cooldown=0, min_lr=0.01, max_changes=100)
    assert p.decide(det(1), 0.1).command == ("scale", 0.5)
    assert p.decide(det(2), 0.015).command == ("set", 0.01)
    at_min = p.decide(det(3), 0.01)
    assert at_min.command is None and at_min.why_not == "bound: LR 0.01 is at min_lr 0.01"
    assert p.decide(det(4), None).command == ("scale", 0.5), "unknown LR: scale, the client clips"


def test_reduce_lr_matches_torch_arithmetic() -> None:
    assert reduce_lr(1.0, 0.1, 0.0, 1e-8) == 0.1
    assert reduce_lr(0.1, 0.1, 0.05, 1e-8) == 0.05
    assert reduce_lr(0.05, 0.1, 0.05, 1e-8) == 0.05
    assert reduce_lr(1e-8, 0.5, 0.0, 1e-8) == 1e-8  # a change below eps is not made


def test_cap_on_changes_per_window() -> None:
    p = auto(cooldown=0, max_changes=2, change_window=1000)
    got = [p.decide(det(s), 1.0) for s in (0, 10, 20, 1001)]
    assert [d.command is not None for d in got] == [True, True, False, True]
    assert got[2].why_not == "cap: 2 changes in the last 1000 steps"
    assert p.decide(det(30, "divergence"), 1.0).command == ("scale", 0.1), "a hard cut is exempt"


@pytest.mark.parametrize(
    ("mode", "paused", "why"),
    [("off", False, "off: only watching"), ("auto", True, "paused (manual override)"),
     ("advise", False, "advise: awaiting approval"), ("off", True, "off: only watching")],
)  # fmt: skip
def test_modes_and_pause_say_why_not(mode: str, paused: bool, why: str) -> None:
    p = Policy(PolicyConfig(), mode)
    if paused:
        p.pause()
    d = p.decide(det(5), 0.1)
    assert d.command is None and d.why_not == why
    assert d.reason == "plateau: test" and d.data == {"x": 1.0}


def test_pause_until_resume() -> None:
    p = auto(cooldown=0)
    p.pause()
    assert p.decide(det(1), 0.1).command is None
    p.resume()
    assert p.decide(det(2), 0.1).command == ("scale", 0.5)


def test_advise_then_approve_counts_as_a_change() -> None:
    p = Policy(PolicyConfig(cooldown=100), "advise")
    assert p.approve() is None
    p.decide(det(10), 0.1)
    newer = p.decide(det(20, "oscillation"), 0.1)
    assert newer.why_not == "advise: awaiting approval"
    approved = p.approve()
    assert approved is not None and approved.command == ("scale", 0.5)
    assert approved.kind == "oscillation" and approved.reason.startswith("approved: ")
    assert p.approve() is None, "approval is one-shot"
    assert p.decide(det(60), 0.05).why_not == "cooldown until step 120"


def test_an_lr_change_drops_stale_advice() -> None:
    p = Policy(PolicyConfig(), "advise")
    p.decide(det(10), 0.1)
    p.changed(15)
    assert p.approve() is None


def test_mode_from_config_overrides_the_runs_request() -> None:
    assert Policy(PolicyConfig(mode="off"), "auto").mode == "off"
    assert Policy(PolicyConfig(), "auto").mode == "auto"
    with pytest.raises(ValueError, match="mode must be one of auto, advise, off; got 'fast'"):
        Policy(PolicyConfig(), "fast")


def feed_losses(p: Policy, start: int, stop: int, level) -> list:
    return [d for s in range(start, stop) if (d := p.observe_loss(s, level(s))) is not None]


def test_increase_is_capped_bounded_and_kept_when_it_helps() -> None:
    p = auto(cooldown=0, max_increases=1, max_lr=0.3, probation=100, increase_factor=1.5)
    feed_losses(p, 0, 100, lambda s: 2.0 - 0.001 * s)
    assert p.decide(det(100, "lr_too_small"), None).why_not == "LR unknown: never increase blind"
    up = p.decide(det(100, "lr_too_small"), 0.1)
    assert up.command == ("scale", 1.5)
    on_trial = p.decide(det(150, "lr_too_small"), 0.15)
    assert on_trial.command is None and "on probation" in on_trial.why_not
    assert feed_losses(p, 100, 300, lambda s: 2.0 - 0.002 * s) == [], "it helped: no undo"
    capped = p.decide(det(400, "lr_too_small"), 0.15)
    assert capped.why_not == "cap: 1 increases already (max_increases)"
    q = auto(cooldown=0, max_lr=0.12, increase_factor=1.5)
    assert q.decide(det(1, "lr_too_small"), 0.1).command == ("set", 0.12)
    r = auto(cooldown=0, max_lr=0.12)
    assert r.decide(det(2, "lr_too_small"), 0.12).why_not == "bound: LR 0.12 is at max_lr 0.12"


def test_increase_undone_when_the_loss_is_no_better() -> None:
    p = auto(cooldown=0, probation=100, increase_factor=1.5)
    feed_losses(p, 0, 100, lambda s: 1.0)
    assert p.decide(det(100, "lr_too_small"), 0.1).command == ("scale", 1.5)
    p.changed(101)  # the run's ack
    undo = feed_losses(p, 100, 300, lambda s: 1.2)
    assert len(undo) == 1, undo
    assert undo[0].kind == "undo" and undo[0].command == ("set", 0.1) and undo[0].step == 200
    held = p.decide(det(400, "lr_too_small"), 0.1)
    assert held.command is None and held.why_not == "cooldown until step 600", held
    assert feed_losses(p, 300, 600, lambda s: 1.0) == []
    again = p.decide(det(600, "lr_too_small"), 0.1)
    assert again.command == ("scale", 1.5), "one undo holds increases back, not forever"
    undo = feed_losses(p, 600, 800, lambda s: 1.2)
    assert [d.kind for d in undo] == ["undo"], undo
    blocked = p.decide(det(900, "lr_too_small"), 0.1)
    assert blocked.command is None and "no more increases" in blocked.why_not


def test_oscillation_on_probation_undoes_the_increase_at_once() -> None:
    p = auto(cooldown=500, probation=100)
    feed_losses(p, 0, 100, lambda s: 1.0)
    p.decide(det(100, "lr_too_small"), 0.1)
    d = p.decide(det(120, "oscillation"), 0.15)
    assert d.kind == "oscillation" and d.command == ("set", 0.1), "cooldown must not hold an undo"
    assert "undoing the increase at 100" in d.reason


def test_policy_config_checks_and_run_policy_types() -> None:
    with pytest.raises(ValueError, match=r"policy.factor must be in \(0, 1\), got 1.5"):
        PolicyConfig(factor=1.5)
    with pytest.raises(ValueError, match=r"policy.increase_factor must be in \[1, 10\], got 0.5"):
        PolicyConfig(increase_factor=0.5)
    with pytest.raises(ValueError, match=r"RunPolicy\.plateau must be a PlateauConfig"):
        RunPolicy(plateau=PolicyConfig())  # type: ignore[arg-type]


def test_a_divergence_after_the_hard_cut_took_effect_cuts_again() -> None:
    # Start at a far too high LR: NaN, cut (and rewind); NaN again at the lower LR, cut again.
    p = auto(cooldown=200)
    table = [
        (20, "divergence", None, ("scale", 0.1)),
        (30, "divergence", None, None),  # the first cut is not applied yet
        (40, "spike", 22, None),  # applied at 22 (ack); a spike within cooldown waits
        (21, "divergence", None, None),  # evidence from before step 22
        (45, "divergence", None, ("scale", 0.1)),  # blew up again at the lower LR
        (46, "divergence", 47, None),  # the second one applied at 47: 46 is old evidence
    ]
    for i, (step, kind, applied, expected) in enumerate(table):
        if applied is not None:
            p.changed(applied)
        got = p.decide(det(step, kind), 1.0).command
        assert got == expected, f"wrong at row {i}: expected {expected}, got {got}"


@pytest.mark.parametrize(("seen_at", "acted"), [(110, False), (130, True)])
def test_too_small_evidence_from_before_the_increase_took_effect_is_dropped(seen_at, acted) -> None:  # type: ignore[no-untyped-def]
    # An increase decided at 100 takes effect at 120. Evidence the detectors gave at 110 was
    # measured at the old LR; only evidence from 120 on is about the new one.
    p = auto(cooldown=0, probation=100)
    feed_losses(p, 0, 100, lambda s: 2.0 - 0.001 * s)
    assert p.decide(det(100, "lr_too_small"), 0.1).command == ("scale", 2.0)
    if seen_at < 120:
        assert "on probation" in p.decide(det(seen_at, "lr_too_small"), 0.1).why_not
    p.changed(120)
    if seen_at >= 120:
        assert "on probation" in p.decide(det(seen_at, "lr_too_small"), 0.2).why_not
    ups = [d for s in range(100, 300) if (d := p.observe_loss(s, 2.0 - 0.001 * s, 0.2)) is not None]
    assert [d.kind for d in ups] == (["lr_too_small"] if acted else []), ups


def test_no_increase_stacks_on_one_not_yet_applied() -> None:
    # The LR a run reports lags the commands: a second x2 decided on the old LR before the
    # first one's ack would double twice and could pass max_lr.
    p = auto(cooldown=0, probation=10, max_lr=0.3)
    feed_losses(p, 0, 100, lambda s: 1.0)
    assert p.decide(det(100, "lr_too_small"), 0.1).command == ("scale", 2.0)
    feed_losses(p, 100, 120, lambda s: 0.9)
    early = p.decide(det(120, "lr_too_small"), 0.1)
    assert early.command is None and early.why_not == "the last increase has not taken effect yet"
    p.changed(121)
    feed_losses(p, 120, 140, lambda s: 0.8)
    assert p.decide(det(140, "lr_too_small"), 0.2).command == ("set", 0.3)


def _run_losses(p: Policy, steps: range, lr: float, loss: float = 1.0) -> tuple[float, list]:
    """Feed a flat loss; apply every command to ``lr``; return the LR and the decisions."""
    made = []
    for s in steps:
        d = p.observe_loss(s, loss, lr)
        if d is not None:
            made.append(d)
            if d.command is not None:
                action, value = d.command
                lr = lr * value if action == "scale" else value
    return lr, made


def test_final_decay_follows_a_linear_ramp_in_stages() -> None:
    p = auto(total_steps=1000, decay_share=0.2, decay_stages=4, probe_share=0.0)
    lr, made = _run_losses(p, range(1000), 0.1)
    assert [d.kind for d in made] == ["decay"] * 4
    assert [d.step for d in made] == [800, 850, 900, 950]
    levels = [d.data["level"] for d in made]
    assert levels == pytest.approx([0.875, 0.625, 0.375, 0.125])
    assert lr == pytest.approx(0.1 * 0.125), "the stages compose to the last level"
    assert "final decay 4/4: step 950 of 1000" in made[-1].reason


def test_final_decay_skipped_stages_are_made_up_at_once() -> None:
    p = auto(total_steps=1000, decay_share=0.2, decay_stages=4, probe_share=0.0)
    lr, made = _run_losses(p, range(0, 1000, 120), 1.0)  # a point every 120 steps
    assert [d.data["stage"] for d in made] == [1, 4], "steps 840 and 960: 2 and 3 skipped"
    assert lr == pytest.approx(0.125)


@pytest.mark.parametrize(
    ("mode", "rules", "why"),
    [
        ("advise", {"total_steps": 1000}, "mode"),
        ("auto", {"total_steps": 0}, "no length"),
        ("auto", {"total_steps": 1000, "decay_share": 0.0, "probe_share": 0.0}, "share 0"),
    ],
)
def test_final_decay_only_in_auto_with_a_known_length(mode, rules, why) -> None:  # type: ignore[no-untyped-def]
    p = Policy(PolicyConfig(**rules), mode)
    _, made = _run_losses(p, range(1000), 0.1)
    assert made == [], why


def test_final_decay_ends_increases_and_follow_through() -> None:
    p = auto(total_steps=1000, decay_share=0.5, cooldown=0, probation=50, probe_share=0.0)
    _run_losses(p, range(500), 0.1)
    cut = p.decide(det(499, "plateau"), 0.1)
    assert cut.command == ("scale", 0.5)
    # The decay starts at 500 and the loss then falls steeply: that is the decay's doing,
    # so no follow-through cut may claim it, and no increase is made any more.
    falling = [p.observe_loss(s, 1.0 / (s - 490), 0.05) for s in range(500, 600)]
    assert {d.kind for d in falling if d is not None} == {"decay"}
    refused = p.decide(det(600, "lr_too_small"), 0.03)
    assert refused.command is None and "final decay" in refused.why_not
    assert p.decide(det(601, "divergence"), 0.03).command == ("scale", 0.1), "emergencies cut"


def test_no_increase_from_the_decay_start_even_before_its_first_stage() -> None:
    # The cosine's detection for step 500 can be judged before the loss point of step 500
    # that makes the first stage: the decay start alone must refuse the increase.
    p = auto(total_steps=1000, decay_share=0.5, cooldown=0, probation=50, probe_share=0.0)
    _run_losses(p, range(500), 0.1)
    refused = p.decide(det(500, "lr_too_small"), 0.1)
    assert refused.command is None and "final decay" in refused.why_not
    assert p.decide(det(499, "lr_too_small"), 0.1).command == ("scale", 2.0), "before it: yes"


def test_final_decay_clips_at_min_lr() -> None:
    p = auto(total_steps=100, decay_share=0.5, decay_stages=2, min_lr=0.01, probe_share=0.0)
    lr, made = _run_losses(p, range(100), 0.02)
    assert [d.command for d in made] == [("scale", 0.75), ("set", 0.01)]
    assert lr == 0.01


# -- probing: the search for the edge of stability (auto, known length)


def _probing(**rules) -> Policy:
    base = {"total_steps": 2000, "probation": 50, "cooldown": 100, "max_lr": 10.0}
    return auto(**{**base, **rules})


def _feed(p: Policy, steps: range, loss, lr: float) -> tuple[float, list]:  # type: ignore[no-untyped-def]
    """Feed ``loss(step)``; apply and ack every command; return the LR and the decisions."""
    made = []
    for s in steps:
        d = p.observe_loss(s, loss(s), lr)
        if d is not None:
            made.append(d)
            if d.command is not None:
                action, value = d.command
                lr = lr * value if action == "scale" else value
                p.changed(s)
    return lr, made


def test_probes_climb_while_no_harm_until_the_probing_share_ends() -> None:
    p = _probing(probe_share=0.25)  # probes before step 500
    lr, made = _feed(p, range(500), lambda s: 2.0 / (1 + s / 100), 0.01)
    # The first probe at 3 x probation = 150 (no change needed until then), then one per
    # passed probation: 200, 250, ... 450.
    assert [d.step for d in made] == [150, 200, 250, 300, 350, 400, 450]
    assert {d.kind for d in made} == {"probe"} and lr == pytest.approx(0.01 * 2**7)
    assert "no worse; trying LR x2" in made[1].reason and "until step 500" in made[1].reason
    _, later = _feed(p, range(500, 800), lambda s: 2.0 / (1 + s / 100), lr)
    assert later == [], "no probe after probe_share of the run"


def test_probes_share_the_increase_cap() -> None:
    p = _probing(max_increases=3)
    lr, made = _feed(p, range(600), lambda s: 2.0 / (1 + s / 100), 0.01)
    assert len(made) == 3 and lr == pytest.approx(0.08)


@pytest.mark.parametrize(
    ("mode", "rules", "why"),
    [
        ("advise", {}, "advise never probes"),
        ("auto", {"total_steps": 0}, "no known length"),
        ("auto", {"probe_share": 0.0}, "probing off"),
    ],
)
def test_no_probe_without_auto_a_length_and_a_share(mode, rules, why) -> None:  # type: ignore[no-untyped-def]
    base = {"total_steps": 2000, "probation": 50, "decay_share": 0.0}
    p = Policy(PolicyConfig(**{**base, **rules}), mode)
    _, made = _feed(p, range(800), lambda s: 2.0 / (1 + s / 100), 0.01)
    assert made == [], why


def test_a_probe_that_makes_the_loss_worse_is_undone_and_probing_ends() -> None:
    p = _probing()
    # Falling until the first probe at 150, then 10 % worse.
    lr, made = _feed(p, range(350), lambda s: 1.0 if s < 150 else 1.1, 0.01)
    assert [d.kind for d in made] == ["probe", "undo"]
    assert made[1].command == ("set", 0.01) and "after the probe at step 150" in made[1].reason
    assert lr == 0.01
    _, later = _feed(p, range(350, 900), lambda s: 1.1, lr)
    assert later == [], "probing is over"


@pytest.mark.parametrize(("kind", "rewinds"), [("oscillation", False), ("spike", True),
                                               ("divergence", True)])  # fmt: skip
def test_trouble_on_a_probe_backs_off_below_the_lr_before_it(kind: str, rewinds: bool) -> None:
    p = _probing(probe_backoff=0.5)
    lr, made = _feed(p, range(160), lambda s: 1.0, 0.04)
    assert [d.kind for d in made] == ["probe"] and lr == 0.08
    d = p.decide(det(170, kind), lr)
    # Not x0.1 of the probed LR (0.008): half the LR that was fine before the probe.
    assert d.kind == kind and d.command == ("set", pytest.approx(0.02))
    assert "went past the edge" in d.reason and "no more probes" in d.reason
    refused = p.decide(det(400, "lr_too_small"), 0.02)
    assert refused.command is None and f"followed by {kind}" in refused.why_not
    _, later = _feed(p, range(170, 900), lambda s: 1.0, 0.02)
    assert all(x.kind != "probe" for x in later)


def test_a_cut_ends_probing() -> None:
    p = _probing()
    p.observe_loss(0, 1.0, 0.1)
    assert p.decide(det(10, "plateau"), 0.1).command == ("scale", 0.5)
    p.changed(10)
    _, made = _feed(p, range(11, 900), lambda s: 1.0, 0.05)
    assert [d.kind for d in made if d.kind == "probe"] == []


def test_an_increase_that_passed_with_no_new_evidence_is_followed_by_a_probe() -> None:
    p = _probing()
    _feed(p, range(100), lambda s: 1.0, 0.01)  # before 3 x probation: no probe yet
    assert p.decide(det(100, "lr_too_small"), 0.01).command == ("scale", 2.0)
    p.changed(100)
    _, made = _feed(p, range(101, 160), lambda s: 1.0, 0.02)
    assert [d.kind for d in made] == ["probe"] and made[0].step == 150
    assert "after the increase at step 100, no worse" in made[0].reason


def test_probe_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="probe_share"):
        PolicyConfig(probe_share=1.5)
    with pytest.raises(ValueError, match="probe_backoff"):
        PolicyConfig(probe_backoff=0.0)


def test_no_follow_through_after_backing_off_a_probe() -> None:
    p = _probing(probe_backoff=0.5, cooldown=0)
    lr, _ = _feed(p, range(160), lambda s: 1.0, 0.04)
    assert p.decide(det(170, "oscillation"), lr).command == ("set", pytest.approx(0.02))
    p.changed(170)
    # The loss falls steeply once the overshoot stops: that is the recovery, not a sign
    # that the LR before the probe was too high.
    _, made = _feed(p, range(171, 600), lambda s: 1.0 / (s - 160), 0.02)
    assert [d.kind for d in made] == []


def test_a_paused_run_is_not_probed_not_even_as_an_event_and_probing_ends() -> None:
    p = _probing()
    p.pause()
    _, made = _feed(p, range(600), lambda s: 1.0, 0.01)
    assert made == [], "no probe, and no 'paused' event per loss point"
    p.resume()
    _, made = _feed(p, range(600, 1000), lambda s: 1.0, 0.01)
    assert made == [], "the person's LR is not probed from"
