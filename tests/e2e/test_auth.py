"""CURVE authentication with real sockets: only clients holding an authorized key get in."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import zmq
from lrpilot.client import Monitor
from lrpilot.client import protocol as p
from lrpilot.monitor.store import Store
from support import ThreadedController, lrpilot


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    r = lrpilot("keys", str(tmp_path / "keys"))
    assert r.returncode == 0, r.stderr
    return tmp_path / "keys"


def test_keys_are_written_once(keys: Path) -> None:
    for name in ("server.key", "server.key_secret", "client.key", "client.key_secret",
                 "authorized/client.key"):  # fmt: skip
        assert (keys / name).is_file(), name
    assert (keys / "client.key_secret").stat().st_mode & 0o077 == 0
    again = lrpilot("keys", str(keys))
    assert again.returncode == 1 and "already holds keys" in again.stderr


def test_curve_end_to_end(tmp_path: Path, keys: Path) -> None:
    other = tmp_path / "other-keys"
    assert lrpilot("keys", str(other)).returncode == 0
    with ThreadedController(tmp_path / "auth.db", keys=keys) as c:
        good = Monitor(run="good", endpoint=c.endpoint, keys=keys, flush_every=5)
        for i in range(50):
            good.step(loss=float(i))
        report = good.close()
        assert report.acked_points == 50 and report.unacked_points == 0

        with pytest.warns(RuntimeWarning, match="not confirmed"):
            for name, k in (("no-keys", None), ("wrong-keys", other)):
                mon = Monitor(run=name, endpoint=c.endpoint, keys=k, close_timeout=1.0)
                for i in range(20):
                    mon.step(loss=float(i))
                r = mon.close()
                assert r.acked_points == 0 and not r.connected, name

        # A raw peer without CURVE gets no answer at all, so no command can reach it.
        ctx = zmq.Context.instance()
        raw = ctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(c.endpoint)
        raw.send_multipart(p.encode(p.Hello(run_id="intruder1", run="intruder")))
        assert raw.poll(1000) == 0
        raw.close(0)

        store = Store(c.db, readonly=True)
        assert [r.name for r in store.runs()] == ["good"]
        assert store.points(good.run_id, "loss")[1].tolist() == [float(i) for i in range(50)]

        # The CLI needs the keys too; without them the controller does not answer.
        ok = lrpilot("runs", "--json", "--endpoint", c.endpoint, "--keys", str(keys))
        assert ok.returncode == 0 and '"good"' in ok.stdout
        t0 = time.monotonic()
        refused = lrpilot("runs", "--endpoint", c.endpoint, "--timeout", "1")
        assert refused.returncode == 1 and "no controller answered" in refused.stderr
        assert time.monotonic() - t0 < 8


def test_missing_or_bad_key_directory_is_one_clear_line(tmp_path: Path) -> None:
    r = lrpilot("runs", "--keys", str(tmp_path / "nowhere"), "--endpoint", "tcp://127.0.0.1:1")
    assert r.returncode == 1 and "cannot load CURVE keys" in r.stderr
    with pytest.raises(Exception, match="cannot load the controller's CURVE keys"):
        ThreadedController(tmp_path / "x.db", keys=tmp_path / "nowhere")
