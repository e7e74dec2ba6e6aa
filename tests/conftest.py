"""Shared fixtures: a clean environment and controllers that always stop."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ServeProcess, ThreadedController


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's LRPILOT_* settings."""
    for key in list(os.environ):
        if key.startswith("LRPILOT_"):
            monkeypatch.delenv(key)


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ThreadedController]:
    """A running in-process controller with a fresh database."""
    with ThreadedController(tmp_path / "runs.db") as c:
        yield c


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    """A running ``lrpilot serve`` subprocess; stopped (SIGTERM) after the test."""
    proc = ServeProcess(tmp_path / "runs.db").start()
    try:
        yield proc
    finally:
        proc.stop()
