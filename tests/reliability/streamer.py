"""A well-behaved run streaming beside a reliability test (a real Monitor on a thread).

A module of its own, not conftest.py: tests/browser and tests/reliability each have a
conftest, and ``from conftest import ...`` would find whichever pytest imported first.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest
from lrpilot.client import Monitor
from lrpilot.client.transport import TransportReport


@dataclass
class Streamer:
    """A real Monitor run stepping on its own thread (2 points a step: loss and acc)."""

    endpoint: str
    run: str = "well-behaved"
    close_timeout: float = 10.0
    steps: int = 0
    report: TransportReport | None = None
    run_id: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Streamer:
        self._thread = threading.Thread(target=self._loop, name="streamer", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            pytest.fail("the well-behaved run did not start")
        return self

    def _loop(self) -> None:
        mon = Monitor(
            run=self.run, endpoint=self.endpoint, flush_every=10, close_timeout=self.close_timeout
        )
        self.run_id = mon.run_id
        self._started.set()
        while not self._stop.is_set():
            mon.step(loss=1.0 / (1 + self.steps), acc=0.5)
            self.steps += 1
            time.sleep(0.002)
        self.report = mon.close()

    def stop(self) -> TransportReport:
        """Stop stepping, close the Monitor (waits for the final ack) and return its report."""
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)
        if self._thread.is_alive() or self.report is None:
            pytest.fail("the well-behaved run did not close within 30 s")
        return self.report
