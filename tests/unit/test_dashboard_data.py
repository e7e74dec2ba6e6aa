"""The dashboard's read layer: incremental series cache, EMA, panel planning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lrpilot.client.protocol import Metrics
from lrpilot.dashboard.data import DataSource, ema, panel_spec, plan_panels
from lrpilot.monitor.store import Store


def _write(store: Store, seq: int, steps: list[int], loss: list[float], lr: float | None = None):
    names, keys, values, st = ["loss", "lr"], [0] * len(steps), list(loss), list(steps)
    if lr is not None:
        st.append(steps[-1])
        keys.append(1)
        values.append(lr)
    store.write_batches([Metrics(run_id="r1", seq=seq, names=names, steps=st, keys=keys,
                                 values=values)])  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "runs.db")
    s.open_run("r1", "run-one", lrs=[1e-3])
    return s


def test_series_are_fetched_incrementally(store: Store, tmp_path: Path) -> None:
    _write(store, 1, [0, 1, 2], [3.0, 2.0, 1.0], lr=1e-3)
    reader = Store(tmp_path / "runs.db", readonly=True)
    calls: list[tuple] = []
    original = reader.points

    def spy(run_id, series, start=None, end=None):  # type: ignore[no-untyped-def]
        calls.append((series, start))
        return original(run_id, series, start, end)

    reader.points = spy  # type: ignore[method-assign]
    data = DataSource(reader)
    x, y = data.series(data.runs()[0], "loss")
    assert x.tolist() == [0, 1, 2] and y.tolist() == [3.0, 2.0, 1.0]
    data.series(data.runs()[0], "loss")  # nothing committed since: no query
    assert calls == [("loss", None)]
    _write(store, 2, [3, 4], [0.5, 0.25])
    x, y = data.series(data.runs()[0], "loss")
    assert calls[-1] == ("loss", 3), "asks only for steps after the last cached one"
    assert x.tolist() == [0, 1, 2, 3, 4] and y[-1] == 0.25


def test_lr_series_runs_flat_to_the_last_step(store: Store) -> None:
    _write(store, 1, [0, 1, 2, 3], [1.0] * 4, lr=1e-3)
    _write(store, 2, [4, 5, 6], [1.0] * 3)
    data = DataSource(store)
    x, y = data.lr_series(data.runs()[0])
    assert x.tolist() == [3, 6] and y.tolist() == [1e-3, 1e-3]


def test_smoothed_continues_where_it_stopped(store: Store) -> None:
    rng = np.random.default_rng(0)
    values = rng.random(300)
    _write(store, 1, list(range(200)), values[:200].tolist())
    data = DataSource(store)
    data.smoothed(data.runs()[0], "loss", 0.9)
    _write(store, 2, list(range(200, 300)), values[200:].tolist())
    _, s = data.smoothed(data.runs()[0], "loss", 0.9)
    np.testing.assert_allclose(s, ema(values, 0.9), rtol=1e-12)


def test_cache_evicts_least_recently_used(store: Store) -> None:
    _write(store, 1, list(range(100)), [1.0] * 100, lr=1e-3)
    data = DataSource(store, max_points=150)
    run = data.runs()[0]
    data.series(run, "loss")
    data.series(run, "lr")
    assert data.cached_points() <= 150


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.9, 0.99, 0.999])
def test_ema_matches_the_plain_recurrence(weight: float) -> None:
    v = np.random.default_rng(1).standard_normal(20_000) + 5
    expected = np.empty_like(v)
    s = v[0]
    for i, x in enumerate(v):
        s = weight * s + (1 - weight) * x
        expected[i] = s
    np.testing.assert_allclose(ema(v, weight), expected, rtol=1e-10)


def test_ema_refuses_a_bad_weight() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\), got 1.0"):
        ema(np.ones(3), 1.0)


def test_panels_follow_what_the_runs_report() -> None:
    names = ["loss", "lr", "lr/1", "grad_norm", "grad_norm/fc1.weight", "acc", "samples_per_s"]
    keys = [p.key for p in plan_panels(names)]
    assert keys == ["loss", "lr", "grad_norm", "layers:grad_norm", "samples_per_s", "scalar:acc"]
    assert panel_spec("scalar:acc").series == "acc"
    assert panel_spec("layers:grad_norm").kind == "heatmap"
    with pytest.raises(KeyError):
        panel_spec("nope")
