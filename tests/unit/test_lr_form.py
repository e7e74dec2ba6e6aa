"""The LR panel's validation and actions: bad values are refused in the page, clearly."""

from __future__ import annotations

from typing import Any

import pytest
from lrpilot.dashboard.actions import parse_lr, perform
from lrpilot.monitor.errors import ControllerError, ControllerUnreachable


@pytest.mark.parametrize(
    ("text", "value"), [("3e-4", 3e-4), (" 0.001 ", 1e-3), ("1E-2", 1e-2), (0.5, 0.5), ("10", 10.0)]
)
def test_valid_values(text: Any, value: float) -> None:
    assert parse_lr(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "type a learning rate"),
        (None, "type a learning rate"),
        ("abc", "'abc' is not a number"),
        ("3e-4x", "is not a number"),
        ("nan", "must be finite"),
        ("inf", "must be finite"),
        ("0", "must be > 0, got 0"),
        ("-1e-3", "must be > 0, got -0.001"),
        ("1e3", "above 10"),
        (True, "is not a number"),
    ],
)
def test_bad_values_say_what_is_wrong(text: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_lr(text)


class FakeController:
    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.error = error

    def request(self, op: str, **args: Any) -> Any:
        self.calls.append((op, args))
        if self.error:
            raise self.error
        return {"command_id": 7}


def test_set_sends_the_parsed_value() -> None:
    ctl = FakeController()
    result = perform(ctl, "set", "r1", "3e-4", "dashboard")
    assert result.ok and result.command_id == 7
    assert ctl.calls == [("set_lr", {"run": "r1", "value": 3e-4, "who": "dashboard"})]


def test_a_bad_value_never_reaches_the_controller() -> None:
    ctl = FakeController()
    result = perform(ctl, "set", "r1", "-1", "dashboard")
    assert not result.ok and "> 0" in result.message and ctl.calls == []


@pytest.mark.parametrize(("action", "op", "extra"), [
    ("half", "scale_lr", {"factor": 0.5, "who": "d"}), ("double", "scale_lr",
    {"factor": 2.0, "who": "d"}), ("pause", "pause", {}), ("resume", "resume", {}),
    ("approve", "approve", {})])  # fmt: skip
def test_buttons_map_to_controller_ops(action: str, op: str, extra: dict) -> None:
    ctl = FakeController()
    assert perform(ctl, action, "r1", None, "d").ok
    assert ctl.calls == [(op, {"run": "r1", **extra})]


@pytest.mark.parametrize("error", [ControllerError("run r1 has finished"),
                                   ControllerUnreachable("no controller answered")])  # fmt: skip
def test_controller_refusals_are_shown_not_raised(error: Exception) -> None:
    result = perform(FakeController(error), "double", "r1", None, "d")
    assert not result.ok and result.message == str(error)


def test_without_a_controller_the_panel_says_so() -> None:
    result = perform(None, "set", "r1", "1e-3", "d")
    assert not result.ok and "no controller" in result.message
