"""The WAL checkpointer: copies the writer's log into the database from its own thread, and
a failure never stops it."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
from lrpilot.monitor.checkpoint import Checkpointer
from lrpilot.monitor.server import Controller
from support import wait_for


def writer(path: Path) -> sqlite3.Connection:
    """A WAL writer that never checkpoints by itself: what is copied, the thread copied."""
    conn = sqlite3.connect(str(path))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    conn.commit()
    return conn


def burst(conn: sqlite3.Connection, first: int, n: int = 4000) -> None:
    """Commit ~2 MB of rows: ~500 pages into the log, none into the database file."""
    conn.executemany(
        "INSERT INTO t VALUES (?, ?)", ((k, b"x" * 500) for k in range(first, first + n))
    )
    conn.commit()


def test_the_thread_copies_what_the_writer_commits(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    conn = writer(db)
    cp = Checkpointer(db, interval=0.01).start()
    try:
        burst(conn, 0)
        # Only a checkpoint writes the database file itself: it grows by the copied pages.
        wait_for(lambda: db.stat().st_size > 2_000_000, what="the committed pages to be copied")
        wait_for(lambda: cp.checkpoints >= 1, what="the copy to be counted")
        assert cp.errors == 0
        # Once all is copied the log restarts from its start: a later burst is copied too.
        burst(conn, 4000)
        wait_for(lambda: db.stat().st_size > 4_000_000, what="the second burst to be copied")
    finally:
        cp.close()
        conn.close()
    assert sqlite3.connect(str(db)).execute("SELECT count(*) FROM t").fetchone()[0] == 8000


def test_without_a_thread_the_database_file_does_not_grow(tmp_path: Path) -> None:
    # The control for the test above: the writer alone copies nothing.
    db = tmp_path / "w.db"
    conn = writer(db)
    burst(conn, 0)
    assert db.stat().st_size < 100_000
    assert Path(f"{db}-wal").stat().st_size > 2_000_000
    conn.close()


def test_a_failing_checkpoint_is_counted_logged_once_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "no-such-dir" / "w.db"  # cannot be opened: every try fails
    caplog.set_level(logging.INFO, logger="lrpilot.controller")
    cp = Checkpointer(missing, interval=0.01).start()
    try:
        wait_for(lambda: cp.errors >= 3, what="three failed tries")
        assert cp.last_error and cp._thread.is_alive()
        failed = [r for r in caplog.records if "WAL checkpoint" in r.getMessage()]
        assert len(failed) == 1, [r.getMessage() for r in failed]
        # Once the file can be opened, checkpoints resume and say so.
        missing.parent.mkdir()
        conn = writer(missing)
        wait_for(lambda: not cp.last_error, what="checkpoints to resume")
        assert any("resumed" in r.getMessage() for r in caplog.records)
        conn.close()
    finally:
        cp.close()
        cp.close()  # twice is safe
    assert not cp._thread.is_alive()


def test_a_bad_interval_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="interval"):
        Checkpointer(tmp_path / "w.db", interval=0)


def test_the_controller_runs_one_while_bound(tmp_path: Path) -> None:
    c = Controller(tmp_path / "c.db", "tcp://127.0.0.1:*", detect="inline")
    c.bind()
    cp = c._checkpointer
    assert cp is not None and cp._thread.is_alive() and cp.path == c.db_path
    c.close()
    assert not cp._thread.is_alive() and c._checkpointer is None
