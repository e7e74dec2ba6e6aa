"""The SQLite store: idempotent batches, run lookup, commands, read-only access."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest
from lrpilot.client.protocol import Metrics
from lrpilot.monitor.errors import RunOwned, StoreError, UnknownRun
from lrpilot.monitor.store import Store


def batch(seq: int, steps: list[int], run_id: str = "r1", base_seq: int = 0, loss: float = 1.0):
    return Metrics(run_id=run_id, seq=seq, names=["loss", "lr"], steps=[*steps, steps[-1]],
                   keys=[0] * len(steps) + [1], values=[loss] * len(steps) + [0.1],
                   base_seq=base_seq)  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "t.db")
    s.open_run("r1", "digits", lrs=[0.1], now=100.0)
    return s


def test_wal_mode_and_schema_version(store: Store) -> None:
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._conn.execute("PRAGMA user_version").fetchone()[0] == 2


def test_resent_batches_are_ignored(store: Store) -> None:
    assert store.write_batches([batch(1, [0, 1]), batch(2, [2])]) == ["written", "written"]
    assert store.write_batches([batch(1, [0, 1]), batch(2, [2])]) == ["duplicate", "duplicate"]
    assert store.committed_seq("r1") == 2
    steps, _values = store.points("r1", "loss")
    assert steps.tolist() == [0, 1, 2]
    assert store.run("r1").points == 5


def test_a_gap_is_not_committed_past_unless_the_client_dropped_it(store: Store) -> None:
    store.write_batches([batch(1, [0])])
    # seq 2 is still in the client's window (base_seq=2) but never arrived: refuse seq 3.
    assert store.write_batches([batch(3, [2], base_seq=2)]) == ["gap"]
    assert store.committed_seq("r1") == 1
    # The client dropped seq 2 for good (its window starts at 3): accept.
    assert store.write_batches([batch(3, [2], base_seq=3)]) == ["written"]
    assert store.committed_seq("r1") == 3


def test_nan_and_inf_values_round_trip(store: Store) -> None:
    store.write_batches([batch(1, [0], loss=math.nan), batch(2, [1], loss=math.inf)])
    _, values = store.points("r1", "loss")
    assert math.isnan(values[0]) and values[1] == math.inf


def test_run_summary_tracks_last_step_loss_and_lr(store: Store) -> None:
    store.write_batches([batch(1, [0, 1, 2], loss=0.5)])
    run = store.run("r1")
    assert (run.last_step, run.last_loss, run.lrs) == (2, 0.5, [0.1])


def test_find_run_by_name_takes_the_newest_then_by_id(store: Store) -> None:
    store.open_run("r2", "digits", now=200.0)
    assert store.find_run("digits").id == "r2"
    assert store.find_run("r1").id == "r1"
    with pytest.raises(UnknownRun, match="lrpilot runs"):
        store.find_run("nope")


def test_status_live_stale_finished(tmp_path: Path) -> None:
    s = Store(tmp_path / "s.db", stale_after=10)
    s.open_run("a", "a", now=1000.0)
    assert s.run("a", now=1005.0).status == "live"
    assert s.run("a", now=1011.0).status == "stale"
    s.finish_run("a", now=1012.0)
    assert s.run("a", now=5000.0).status == "finished"
    s.open_run("a", "a", now=6000.0)  # the run came back
    assert s.run("a", now=6001.0).status == "live"


def test_command_lifecycle(store: Store) -> None:
    cid = store.add_command("r1", "set", 0.01, source="manual", who="me", reason="r",
                            lrs_before=[0.1])  # fmt: skip
    assert store.command(cid).status == "pending"
    store.mark_command_sent(cid)
    assert [c.id for c in store.pending_commands("r1")] == [cid]
    assert not store.mark_command_done(cid, run_id="other", step=42, lrs=[9.0], ok=True)
    assert store.mark_command_done(cid, run_id="r1", step=42, lrs=[0.01], ok=True)
    assert not store.mark_command_done(cid, run_id="r1", step=43, lrs=[0.02], ok=True)
    c = store.command(cid)
    assert (c.status, c.applied_step, c.lrs_after) == ("applied", 42, [0.01])
    assert store.run("r1").lrs == [0.01]
    assert store.pending_commands("r1") == []


def test_reopening_keeps_the_committed_sequence(tmp_path: Path) -> None:
    s = Store(tmp_path / "x.db")
    s.open_run("r", "n")
    s.write_batches([batch(1, [0], run_id="r")])
    s.close()
    s2 = Store(tmp_path / "x.db")
    assert s2.open_run("r", "n") == 1


def test_readonly_store_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "missing.db", readonly=True)
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot use"):
        Store(tmp_path / "junk.db")
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(StoreError, match="not an lrpilot database"):
        Store(tmp_path / "other.db", readonly=True)


def test_readonly_reader_sees_the_writer(store: Store) -> None:
    reader = Store(store.path, readonly=True)
    store.write_batches([batch(1, [0, 1])])
    assert reader.points("r1", "loss")[0].tolist() == [0, 1]
    assert [n for _, n, _ in reader.iter_points("r1")] == ["loss", "loss", "lr"]


def test_batches_written_without_commit_are_stored_only_once_committed(store: Store) -> None:
    """write_batches(commit=False) keeps one transaction open over several calls: a reader
    sees none of it until commit(); the sequence checks see it already."""
    reader = Store(store.path, readonly=True)
    assert store.write_batches([batch(1, [0, 1])], commit=False) == ["written"]
    assert store.write_batches([batch(2, [2]), batch(2, [2])], commit=False) == [
        "written", "duplicate",
    ]  # fmt: skip
    assert store.write_batches([batch(4, [4], base_seq=3)], commit=False) == ["gap"]
    assert reader.points("r1", "loss")[0].tolist() == []
    assert reader.committed_seq("r1") == 0
    store.commit()
    assert reader.points("r1", "loss")[0].tolist() == [0, 1, 2]
    assert reader.committed_seq("r1") == 2
    store.commit()  # nothing open: nothing to do


def test_a_failed_write_rolls_back_the_open_transaction_and_commit_says_so(
    store: Store,
) -> None:
    store.write_batches([batch(1, [0, 1])], commit=False)
    with pytest.raises(UnknownRun):
        store.write_batches([batch(1, [5], run_id="nobody")], commit=False)
    with pytest.raises(StoreError, match="rolled back"):
        store.commit()
    assert store.committed_seq("r1") == 0
    assert store.points("r1", "loss")[0].tolist() == []
    # The store goes on: the client's resend is stored, under a fresh series id.
    assert store.write_batches([batch(1, [0, 1])]) == ["written"]
    assert store.points("r1", "loss")[0].tolist() == [0, 1]
    store.commit()  # the loss was reported once


class FailingCommit:
    """The store's connection, whose next commit fails as on a full disk."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn, self.fail = conn, True

    def commit(self) -> None:
        if self.fail:
            self.fail = False
            raise sqlite3.OperationalError("database or disk is full")
        self.conn.commit()

    def __getattr__(self, name: str):
        return getattr(self.conn, name)


def test_a_failed_commit_is_reported_once_and_the_next_transaction_commits(
    store: Store,
) -> None:
    store._conn = FailingCommit(store._conn)  # type: ignore[assignment]
    store.write_batches([batch(1, [0, 1])], commit=False)
    with pytest.raises(StoreError, match="disk is full"):
        store.commit()
    assert store.committed_seq("r1") == 0  # rolled back: nothing of it stored
    assert store.write_batches([batch(1, [0, 1])], commit=False) == ["written"]  # the resend
    store.commit()
    assert store.committed_seq("r1") == 1
    assert store.points("r1", "loss")[0].tolist() == [0, 1]


def test_what_is_written_after_a_loss_is_lost_with_it(store: Store) -> None:
    """commit() reports the rolled-back transaction; a write made since (its caller counts
    it lost too) is rolled back with it, so the two agree on what is stored."""
    store.write_batches([batch(1, [0])], commit=False)
    with pytest.raises(UnknownRun):
        store.write_batches([batch(1, [5], run_id="nobody")], commit=False)
    store.write_batches([batch(1, [0])], commit=False)
    with pytest.raises(StoreError, match="rolled back"):
        store.commit()
    assert store.committed_seq("r1") == 0
    store.commit()  # reported once; nothing open


def test_another_write_commits_the_open_transaction_with_it(store: Store) -> None:
    reader = Store(store.path, readonly=True)
    store.write_batches([batch(1, [0])], commit=False)
    store.touch("r1")
    assert reader.committed_seq("r1") == 1
    store.commit()  # already committed: nothing to raise


def test_a_run_id_is_bound_to_the_secret_of_its_first_hello(tmp_path: Path) -> None:
    s = Store(tmp_path / "o.db")
    s.open_run("r", "n", secret="mine")
    assert s.open_run("r", "n", secret="mine") == 0
    with pytest.raises(RunOwned, match="belongs to another client"):
        s.open_run("r", "n", secret="theirs")
    with pytest.raises(RunOwned):
        s.open_run("r", "n")


def test_a_version_1_database_is_migrated(tmp_path: Path) -> None:
    from lrpilot.monitor import store as store_module

    con = sqlite3.connect(tmp_path / "v1.db")
    con.executescript(store_module._SCHEMA)
    con.execute("PRAGMA user_version=1")
    con.execute("INSERT INTO runs (id, name, created, last_seen) VALUES ('old', 'old', 1, 1)")
    con.commit()
    con.close()
    s = Store(tmp_path / "v1.db")
    assert s._conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert s.open_run("old", "old", secret="x") == 0  # an old run has no secret to check
    assert [r.id for r in s.runs()] == ["old"]
