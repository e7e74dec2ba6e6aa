"""Fixtures of the reliability suite: a well-behaved run streaming beside the test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import SOAK
from streamer import Streamer


def pytest_report_header() -> str:
    return f"lrpilot reliability: {'SOAK' if SOAK else 'default'} mode (LRPILOT_SOAK=1 for soak)"


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
