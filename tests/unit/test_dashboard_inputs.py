"""Coercion of browser-sent values (dashboard.inputs) and the callback envelope check."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from lrpilot.dashboard import create_app, inputs
from lrpilot.dashboard.envelope import problem
from lrpilot.monitor.store import Store


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["a", "b"], ["a", "b"]),
        (["a", 3, None, {"x": 1}, "b"], ["a", "b"]),
        ("abc", []),
        (None, []),
        ({"a": 1}, []),
        (["x" * 201], []),
        ([str(i) for i in range(80)], [str(i) for i in range(inputs.MAX_RUNS)]),
    ],
)
def test_run_ids(value: object, expected: list[str]) -> None:
    assert inputs.run_ids(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.5, 0.5), (None, 0.9), ("0.3", 0.9), (math.nan, 0.9), (math.inf, 0.9), (True, 0.9),
     (-3, 0.0), (7, 0.999), (0, 0.0)],
)  # fmt: skip
def test_smoothing(value: object, expected: float) -> None:
    assert inputs.smoothing(value) == expected


@pytest.mark.parametrize(
    ("relayout", "expected"),
    [
        ({"xaxis.range[0]": 10, "xaxis.range[1]": 20.5}, (True, [10.0, 20.5])),
        ({"xaxis.range[0]": 20, "xaxis.range[1]": 10}, (True, [10.0, 20.0])),
        ({"xaxis.range": ["1", "2"]}, (True, [1.0, 2.0])),
        ({"xaxis.autorange": True}, (True, None)),
        ({"xaxis.autorange": "yes"}, (False, None)),
        ({"xaxis.range[0]": "a", "xaxis.range[1]": 1}, (False, None)),
        ({"xaxis.range[0]": math.nan, "xaxis.range[1]": 1}, (False, None)),
        ({"xaxis.range": [1, 2, 3]}, (False, None)),
        ({"xaxis.range": None}, (False, None)),
        ({"yaxis.range[0]": 1, "yaxis.range[1]": 2}, (False, None)),
        ("xaxis.autorange", (False, None)),
        (None, (False, None)),
    ],
)
def test_x_range(relayout: object, expected: tuple) -> None:
    assert inputs.x_range(relayout) == expected


def _cursor(**kw: object) -> dict:
    base = {"panel": "loss", "runs": ["r1"], "range": None, "keys": ["a", "b"],
            "last": [5, 6], "count": [2, 3], "n_out": 2000, "markers": "d"}  # fmt: skip
    base.update(kw)
    return base


def test_cursor_round_trips_what_panels_build() -> None:
    assert inputs.cursor(_cursor()) == _cursor()
    heat = {"panel": "grad_norm_layers", "runs": ["r1"], "range": [1.0, 2.0], "seq": 4}
    assert inputs.cursor(heat) == heat


@pytest.mark.parametrize(
    "bad",
    [
        None, "cursor", [1], {}, _cursor(runs=[]), _cursor(runs="r1"), _cursor(panel=3),
        _cursor(last=[5]), _cursor(keys=None), _cursor(n_out=10**9), _cursor(n_out=0),
        _cursor(range=[1, math.inf]), _cursor(range=[1]), _cursor(count=["x", "y"]),
        _cursor(runs=["r"] * 51),
    ],
)  # fmt: skip
def test_cursor_refuses_forgeries(bad: object) -> None:
    assert inputs.cursor(bad) is None


@pytest.fixture(scope="module")
def callback_map(tmp_path_factory: pytest.TempPathFactory) -> dict:
    db: Path = tmp_path_factory.mktemp("env") / "runs.db"
    Store(db).close()
    return create_app(Store(db, readonly=True)).callback_map


def _lr_panel_request() -> dict:
    return {
        "output": "..lr-run.options...lr-run.value...lr-groups.children...command-table.children..",
        "outputs": [{"id": "lr-run", "property": "options"}, {"id": "lr-run", "property": "value"},
                    {"id": "lr-groups", "property": "children"},
                    {"id": "command-table", "property": "children"}],
        "inputs": [{"id": "tick", "property": "n_intervals", "value": 3},
                   {"id": "run-list", "property": "value", "value": ["abc"]}],
        "state": [{"id": "lr-run", "property": "value", "value": None}],
        "changedPropIds": ["tick.n_intervals"],
    }  # fmt: skip


def test_envelope_accepts_what_the_page_sends(callback_map: dict) -> None:
    assert problem(_lr_panel_request(), callback_map) is None
    tick = next(k for k in callback_map if '"type":"chart"}.figure' in k and "ALL" in k)
    body = {
        "output": tick,
        "outputs": [
            [{"id": {"panel": "loss", "type": "chart"}, "property": "figure"}],
            [{"id": {"panel": "loss", "type": "cursor"}, "property": "data"}],
            {"id": "rebuild", "property": "data"},
        ],
        "inputs": [{"id": "tick", "property": "n_intervals", "value": 1}],
        "state": [
            {"id": "run-list", "property": "value", "value": []},
            {"id": "smoothing", "property": "value", "value": 0.9},
            {"id": "loss-log", "property": "value", "value": "log"},
            {"id": "panel-signature", "property": "data", "value": None},
            [{"id": {"panel": "loss", "type": "cursor"}, "property": "data", "value": {}}],
            {"id": "rebuild", "property": "data", "value": None},
        ],
        "changedPropIds": ["tick.n_intervals"],
    }
    assert problem(body, callback_map) is None


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b.pop("output"), "no callback"),
        (lambda b: b.update(output="..nope.."), "no callback"),
        (lambda b: b.update(inputs=b["inputs"][:1]), "inputs: expected 2"),
        (lambda b: b.update(inputs="x"), "inputs: expected 2"),
        (lambda b: b["inputs"][1].update(id="lr-run"), "does not match run-list.value"),
        (lambda b: b["state"][0].update(property="options"), "does not match lr-run.value"),
        (lambda b: b.update(outputs=b["outputs"][:3]), "outputs: expected 4"),
        (lambda b: b.update(outputs=None), "outputs: expected 4"),
        (lambda b: b.update(changedPropIds="tick"), "changedPropIds"),
        (lambda b: b.update(changedPropIds=[1]), "changedPropIds"),
    ],
)
def test_envelope_refuses_malformed_requests(callback_map: dict, mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    body = _lr_panel_request()
    mutate(body)
    found = problem(body, callback_map)
    assert found is not None and reason in found


def test_envelope_refuses_non_objects(callback_map: dict) -> None:
    for body in (None, [], "x", 3):
        assert problem(body, callback_map) == "the body is not a JSON object"
