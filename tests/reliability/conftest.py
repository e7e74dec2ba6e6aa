"""Fixtures of the reliability suite: a well-behaved run streaming beside the test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import SOAK
from streamer import Streamer

#: A soak test runs 20x the default's work (the fuzz test's 4,000 examples took 170 s here),
#: so the suite's 120 s per-test timeout (pyproject.toml) would cut it short.
SOAK_TIMEOUT_S = 1800


def pytest_report_header() -> str:
    return f"lrpilot reliability: {'SOAK' if SOAK else 'default'} mode (LRPILOT_SOAK=1 for soak)"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not SOAK:
        return
    for item in items:
        if "reliability" in item.path.parts and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SOAK_TIMEOUT_S))


@pytest.fixture
def streamer_factory() -> Iterator[list[Streamer]]:
    """Start streamers with ``Streamer(endpoint).start()`` and append them here; any still
    running at the end of the test are stopped."""
    started: list[Streamer] = []
    yield started
    for s in started:
        if s._thread is not None and s._thread.is_alive():
            s._stop.set()
            s._thread.join(30)
