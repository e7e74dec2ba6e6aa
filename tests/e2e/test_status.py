"""`lrpilot status` against a live controller: what it stored, the WAL, and the WAL thread."""

from __future__ import annotations

from pathlib import Path

from lrpilot.client import Monitor
from lrpilot.monitor.remote import ControllerClient
from support import ThreadedController, lrpilot, wait_for


def test_status_reports_points_the_wal_and_its_checkpoints(tmp_path: Path) -> None:
    with ThreadedController(tmp_path / "s.db") as c:
        mon = Monitor(run="status", endpoint=c.endpoint, flush_every=10)
        for i in range(2000):
            mon.step(loss=1.0 / (i + 1), acc=i / 2000)
        assert mon.close().acked_points == 4000
        client = ControllerClient(c.endpoint, timeout=10)
        # The controller's own thread copies the committed log into the database file.
        s = wait_for(lambda: (r := client.request("status"))["checkpoints"] >= 1 and r,
                     what="a checkpoint by the controller's thread")  # fmt: skip
        assert s["points"] == 4000 and s["checkpoint_error"] == ""
        assert 0 < s["wal_bytes"] <= s["db_bytes"]
        out = lrpilot("status", "--endpoint", c.endpoint)
        assert out.returncode == 0, out.stderr
        assert "of which WAL" in out.stdout and "4000 points" in out.stdout
        assert "checkpoints failing" not in out.stdout
