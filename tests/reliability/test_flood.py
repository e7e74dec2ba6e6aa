"""A flood of hellos with new run names: the controller's per-run memory stays bounded.

An attacker says Hello for many new runs while a well-behaved run streams. The controller
holds at most ``_MAX_SESSIONS`` runs in memory (sessions, their RunControllers, the store's
series cache), forgetting the longest silent first; the store keeps every run; the
well-behaved run loses nothing.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import zmq
from harness import SOAK, step_counts
from lrpilot.client import protocol as p
from lrpilot.monitor import server
from lrpilot.monitor.detection import InlineDetection
from lrpilot.monitor.remote import ControllerClient
from lrpilot.monitor.store import Store
from streamer import Streamer
from support import ThreadedController, wait_for

CAP = 32
FLOOD = 20_000 if SOAK else 1_000


@pytest.mark.parametrize("detect", ["inline", "process"])
def test_a_hello_flood_keeps_memory_bounded_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, detect: str
) -> None:
    monkeypatch.setattr(server, "_MAX_SESSIONS", CAP)
    ctx = zmq.Context()
    with ThreadedController(tmp_path / "flood.db", detect=detect) as c:
        ctl = c.controller
        streamer = Streamer(c.endpoint).start()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(c.endpoint)
        welcomed = 0
        try:
            for i in range(FLOOD):
                sock.send_multipart(
                    p.encode(p.Hello(run_id=uuid.uuid4().hex[:12], run=f"flood-{i}"))
                )
                while sock.poll(0):
                    welcomed += isinstance(p.decode(sock.recv_multipart()), p.Welcome)

            def all_welcomed() -> bool:
                nonlocal welcomed
                while sock.poll(50):
                    welcomed += isinstance(p.decode(sock.recv_multipart()), p.Welcome)
                return welcomed >= FLOOD

            wait_for(all_welcomed, timeout=60, what="every flooding hello to be welcomed")
            status = ControllerClient(c.endpoint, timeout=10).request("status")
            assert status["runs_in_memory"] <= CAP
            assert len(ctl._sessions) <= CAP
            assert ctl.store is not None and len(ctl.store._series) <= CAP
            if isinstance(ctl._detection, InlineDetection):
                assert len(ctl._detection._runs.controls) <= CAP
            report = streamer.stop()
        finally:
            sock.close(0)
            ctx.term()
    assert report.dropped_points == 0 and report.unacked_points == 0
    with Store(tmp_path / "flood.db", readonly=True) as store:
        assert len(store.runs()) == FLOOD + 1  # the store forgets nothing
    counts = step_counts(tmp_path / "flood.db", streamer.run_id)
    assert counts == dict.fromkeys(range(streamer.steps), 2), "the well-behaved run lost points"
