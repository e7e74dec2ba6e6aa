"""Faults around the controller: a training process killed, a second controller, a full
disk and a read-only database.

The disk-full tests mount a 512 KiB tmpfs (root only; skipped with the reason otherwise);
the read-only tests make the database files immutable with ``chattr +i`` (skipped where the
file system or the user cannot).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import (
    SERVE_ARGS,
    Serve,
    finish_training,
    integrity,
    orphan_points,
    start_training,
    step_counts,
    stop_process,
)
from lrpilot.client import Monitor
from lrpilot.monitor.errors import ServeError
from lrpilot.monitor.remote import ControllerClient
from lrpilot.monitor.server import Controller
from lrpilot.monitor.store import Store
from streamer import Streamer
from support import ThreadedController, free_port, lrpilot, wait_for


def runs_by_name(endpoint: str) -> dict[str, dict]:
    r = lrpilot("runs", "--json", "--endpoint", endpoint)
    assert r.returncode == 0, r.stderr
    return {x["name"]: x for x in json.loads(r.stdout)}


def test_a_killed_training_process_goes_stale_and_nothing_else_does(tmp_path: Path) -> None:
    serve = Serve(tmp_path / "stale.db", extra=("--stale-after", "3")).start()
    stop = tmp_path / "stop"
    victim = start_training(
        serve.endpoint, tmp_path / "a.json", stop, "--run", "victim", "--pace", "0.01"
    )
    other = start_training(
        serve.endpoint, tmp_path / "b.json", stop, "--run", "other", "--pace", "0.01"
    )
    try:
        wait_for(
            lambda: (
                all(
                    r["status"] == "live" and r["last_step"] > 20
                    for r in runs_by_name(serve.endpoint).values()
                )
                and len(runs_by_name(serve.endpoint)) == 2
            ),
            timeout=60,
            what="both runs live",
        )
        victim.kill()
        victim.communicate(timeout=10)
        runs = wait_for(
            lambda: (r := runs_by_name(serve.endpoint))["victim"]["status"] == "stale" and r,
            timeout=30,
            what="the killed run to be shown stale",
        )
        assert runs["other"]["status"] == "live"  # type: ignore[index]
        table = lrpilot("runs", "--endpoint", serve.endpoint).stdout
        assert any("victim" in line and "stale" in line for line in table.splitlines()), table
        assert any("other" in line and "live" in line for line in table.splitlines()), table
        step = runs["other"]["last_step"]  # type: ignore[index]
        wait_for(
            lambda: runs_by_name(serve.endpoint)["other"]["last_step"] > step + 20,
            what="the other run to keep going",
        )
        stop.touch()
        train = finish_training(other, tmp_path / "b.json")
        final = runs_by_name(serve.endpoint)
        assert final["other"]["status"] == "finished"
        assert final["victim"]["status"] == "stale"
        assert train["acked"] == 2 * train["steps"] + 1 and train["unacked"] == 0
    finally:
        stop.touch()
        stop_process(victim)
        stop_process(other)
        serve.stop()
    assert integrity(serve.db) == "ok"


def test_a_second_controller_is_refused_while_the_first_keeps_storing(tmp_path: Path) -> None:
    """Same port + same db, same db from this process, and a port held by a non-lrpilot
    listener: each a one-line error; the first controller's run loses nothing."""
    serve = Serve(tmp_path / "one.db").start()
    stop, out = tmp_path / "stop", tmp_path / "train.json"
    proc = start_training(serve.endpoint, out, stop, "--run", "first", "--pace", "0.005")
    try:
        wait_for(
            lambda: runs_by_name(serve.endpoint).get("first", {}).get("last_step", -1) > 20,
            timeout=60,
            what="the run to stream",
        )
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "lrpilot.monitor.cli",
                "serve",
                "--db",
                str(serve.db),
                "--listen",
                serve.endpoint,
                *SERVE_ARGS,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 1, r.stderr
        assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
        assert "in use by another lrpilot controller" in r.stderr
        with pytest.raises(ServeError, match="in use by another lrpilot controller"):
            Controller(serve.db, f"tcp://127.0.0.1:{free_port()}").bind()
        stop.touch()
        train = finish_training(proc, out)
    finally:
        stop.touch()
        stop_process(proc)
        serve.stop()
    assert integrity(serve.db) == "ok"
    counts = step_counts(serve.db, train["run_id"])
    assert sum(counts.values()) == train["acked"] == 2 * train["steps"] + 1
    # The lock went with the first controller: the same db opens again.
    with ThreadedController(serve.db) as again:
        assert ControllerClient(again.endpoint).request("runs")[0]["name"] == "first"


def test_a_port_held_by_something_else_is_a_clear_error_and_frees_the_db(tmp_path: Path) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ServeError, match="already in use"):
            Controller(tmp_path / "x.db", f"tcp://127.0.0.1:{port}").bind()
    with ThreadedController(tmp_path / "x.db") as c:  # the failed start released the db lock
        assert ControllerClient(c.endpoint).request("status")["points"] == 0


# ---------------------------------------------------------------- full disk, read-only db


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs, unmounted after the test."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(fs: Path) -> Path:
    """Fill ``fs`` to the last byte with a file; delete it to give the space back."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):  # the last partial block
        fd = os.open(filler, os.O_WRONLY | os.O_APPEND)
        try:
            while True:
                os.write(fd, b"\0")
        finally:
            os.close(fd)
    return filler


def store_errors(c: ThreadedController) -> int:
    return c.controller.stats.rejected.get("store error", 0)


def outage_then_recovery(
    c: ThreadedController, streamer: Streamer, start: object, end: object
) -> None:
    """Break the store, check the controller still answers and says it is not storing,
    repair it, and check that storing resumes without a restart."""
    client = ControllerClient(c.endpoint, timeout=5)
    wait_for(lambda: c.controller.stats.points > 200, what="points before the fault")
    start()  # type: ignore[operator]
    try:
        wait_for(lambda: store_errors(c) > 0, what="a store error")
        points = client.request("status")["points"]
        errors = store_errors(c)
        wait_for(lambda: store_errors(c) >= errors + 3, what="more store errors")
        status = client.request("status")
        assert status["points"] == points, "points counted as stored while the store fails"
        assert status["rejected"]["store error"] >= errors + 3
        assert client.request("runs")  # reads and requests are still served
    finally:
        end()  # type: ignore[operator]
    steps = streamer.steps
    wait_for(
        lambda: step_counts(c.db, streamer.run_id).get(steps) == 2,
        timeout=30,
        what="storing to resume without a restart",
    )
    report = streamer.stop()
    assert (report.dropped_points, report.unacked_points) == (0, 0)
    counts = step_counts(c.db, streamer.run_id)
    assert report.acked_points == 2 * streamer.steps == sum(counts.values())
    assert all(counts.get(s) == 2 for s in range(streamer.steps))
    assert integrity(c.db) == "ok" and orphan_points(c.db) == 0


def test_disk_full_then_space_returns(tiny_fs: Path, streamer_factory: list) -> None:
    with ThreadedController(tiny_fs / "full.db") as c:
        streamer = Streamer(c.endpoint)
        streamer_factory.append(streamer.start())
        filler: list[Path] = []
        outage_then_recovery(
            c, streamer, lambda: filler.append(fill(tiny_fs)), lambda: filler and filler[0].unlink()
        )


@pytest.fixture
def immutable() -> Iterator[list[str]]:
    """Paths made immutable with chattr +i; made mutable again after the test."""
    paths: list[str] = []
    yield paths
    if paths:
        subprocess.run(["chattr", "-i", *paths], check=False)


def test_read_only_db_then_writable_again(
    tmp_path: Path, streamer_factory: list, immutable: list[str]
) -> None:
    with ThreadedController(tmp_path / "ro.db") as c:
        files = [str(c.db), f"{c.db}-wal"]
        probe = tmp_path / "probe"
        probe.write_text("")
        r = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"chattr +i is not available here: {r.stderr.strip()}")
        subprocess.run(["chattr", "-i", str(probe)], check=True)
        streamer = Streamer(c.endpoint)
        streamer_factory.append(streamer.start())

        def freeze() -> None:
            immutable.extend(files)
            subprocess.run(["chattr", "+i", *files], check=True)

        def thaw() -> None:
            subprocess.run(["chattr", "-i", *files], check=True)
            immutable.clear()

        outage_then_recovery(c, streamer, freeze, thaw)


def test_a_series_first_seen_while_the_disk_is_full_is_stored_correctly(tiny_fs: Path) -> None:
    with ThreadedController(tiny_fs / "series.db") as c:
        mon = Monitor(run="late-series", endpoint=c.endpoint, flush_every=10)
        for i in range(100):
            mon.step(loss=float(i))
        wait_for(lambda: c.controller.stats.points >= 100, what="the first points")
        filler = fill(tiny_fs)
        for i in range(100, 200):
            mon.step(loss=float(i), late=1.0)
        wait_for(lambda: store_errors(c) > 0, what="a store error")
        filler.unlink()
        for i in range(200, 300):
            mon.step(loss=float(i), late=1.0)
        report = mon.close()
        other = Monitor(run="other", endpoint=c.endpoint, flush_every=10)
        for _ in range(50):
            other.step(mine=2.0)
        other.close()
        assert report.acked_points == 500
        with Store(c.db, readonly=True) as store:
            assert len(store.points(mon.run_id, "late")[0]) == 200
            assert len(store.points(other.run_id, "mine")[0]) == 50
        assert orphan_points(c.db) == 0


def quiet(c: ThreadedController) -> Callable[[], bool]:
    """A predicate: true once no message reached the controller for 150 ms."""

    def check() -> bool:
        before = c.controller.stats.messages
        time.sleep(0.15)  # the quiet period being checked, not a synchronisation
        return c.controller.stats.messages == before

    return check


def test_an_idle_client_delivers_its_window_once_space_returns(tiny_fs: Path) -> None:
    with ThreadedController(tiny_fs / "idle.db") as c:
        mon = Monitor(run="idle", endpoint=c.endpoint, flush_every=10, close_timeout=3)
        for i in range(100):
            mon.step(loss=float(i))
        wait_for(lambda: c.controller.stats.points >= 100, what="the first points")
        filler = fill(tiny_fs)
        for i in range(100, 300):
            mon.step(loss=float(i))
            time.sleep(0.001)
        mon.flush()
        wait_for(lambda: store_errors(c) > 0, what="a store error")
        wait_for(quiet(c), what="the resends in flight to settle")
        filler.unlink()  # space is back; the run is idle (e.g. evaluating), then closes
        wait_for(
            lambda: c.controller.stats.points >= 300,
            timeout=8,
            what="the idle client's window to be stored",
        )
        report = mon.close()
        assert report.acked_points == 300 and report.unacked_points == 0
