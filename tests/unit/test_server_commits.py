"""The controller's write transactions: several turns' writes share one commit while more is
queued, and nothing is acknowledged or detected before it is committed."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from lrpilot.client.protocol import BatchAck, Heartbeat, Hello, Metrics, decode, encode
from lrpilot.monitor import server
from lrpilot.monitor.server import Controller
from lrpilot.monitor.store import Store

RUNS = 10


@pytest.fixture
def controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Controller]:
    monkeypatch.setattr(server, "_TXN_SECONDS", 3600.0)  # only the point count and the queue
    c = Controller(tmp_path / "t.db", "tcp://127.0.0.1:*", detect="inline")
    c.bind()
    try:
        for r in range(RUNS):
            c._dispatch(b"peer%d" % r, Hello(run_id=f"r{r}", run=f"run{r}", lrs=[0.1]))
        yield c
    finally:
        c.close()


def queue(c: Controller, seqs: range) -> None:
    """Queue batches of 20 steps x 4 scalars (80 points) for every run, as _read does."""
    for seq in seqs:
        for r in range(RUNS):
            first = (seq - 1) * 20
            msg = Metrics(run_id=f"r{r}", seq=seq, names=["loss", "a", "b", "lr"],
                          steps=[s for s in range(first, first + 20) for _ in range(4)],
                          keys=[0, 1, 2, 3] * 20, values=[0.5, 1.0, 2.0, 0.1] * 20)  # fmt: skip
            c._pending.append((b"peer%d" % r, msg, encode(msg)))
            c._pending_points += 80


def count_commits(c: Controller, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    assert c.store is not None
    calls: list[int] = []
    commit = c.store.commit
    monkeypatch.setattr(c.store, "commit", lambda: (calls.append(1), commit())[1])
    return calls


def test_writes_share_one_commit_while_more_is_queued(
    controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = controller
    reader = Store(c.db_path, readonly=True)
    commits = count_commits(c, monkeypatch)
    queue(c, range(1, 11))  # 10 runs x 10 batches x 80 points: four writes of 2,000 points
    for _ in range(3):
        c._commit_next()
        assert commits == [] and c.stats.points == 0  # written, not committed, not acked
        assert reader.committed_seq("r0") == 0
        assert c._detection.backlog == 0  # detection sees committed points only
    c._commit_next()  # the queue is empty now: commit
    assert len(commits) == 1
    assert [reader.committed_seq(f"r{r}") for r in range(RUNS)] == [10] * RUNS
    assert c.stats.points == 8000


def test_a_full_transaction_commits_with_more_queued(
    controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "_TXN_POINTS", 4000)
    c = controller
    commits = count_commits(c, monkeypatch)
    queue(c, range(1, 11))
    c._commit_next()
    assert commits == []
    c._commit_next()  # 4,000 points written: due, though 4,000 more are queued
    assert len(commits) == 1 and c.stats.points == 4000


def test_a_failed_write_loses_the_open_transaction_and_counts_once(
    controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = controller
    assert c.store is not None
    store = c.store
    queue(c, range(1, 11))
    c._commit_next()  # 2,000 points written, not committed

    def failing_write(batches: object, now: object = None, *, commit: bool = True) -> None:
        with store._transaction(commit):  # the real rollback path, as on a full disk
            raise sqlite3.OperationalError("database or disk is full")

    write = store.write_batches
    monkeypatch.setattr(store, "write_batches", failing_write)
    c._commit_next()
    assert c.stats.rejected["store error"] == 1  # one failure, though two writes are lost
    assert c.stats.points == 0 and not c._uncommitted
    assert all(s.needs_resend for s in c._sessions.values())  # every run resends
    monkeypatch.setattr(store, "write_batches", write)
    while c._pending:
        c._commit_next()  # the store works again: no stale error from the lost transaction
    assert c.stats.rejected["store error"] == 1
    assert c.stats.points == 4000  # the batches written after the failure are stored


def test_any_other_message_is_handled_after_a_commit(
    controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A heartbeat is answered with the committed sequence: _read commits the open
    transaction before it handles anything but metrics."""
    c = controller
    commits = count_commits(c, monkeypatch)
    queue(c, range(1, 11))
    c._commit_next()  # 2,000 points: seqs 1-2 of every run, seq 3 of r0-r4
    assert commits == []
    ctx = zmq.Context.instance()
    peer = ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.ROUTING_ID, b"peer0")  # the identity r0's hello came from
    peer.setsockopt(zmq.LINGER, 0)
    try:
        peer.connect(c.endpoint)
        peer.send_multipart(encode(Heartbeat(run_id="r0", step=40)))
        assert c._sock is not None
        assert c._sock.poll(5000), "the heartbeat did not arrive"
        c._read()
        assert len(commits) == 1
        acks = []
        for _ in range(2):  # the batches' ack, then the heartbeat's answer
            assert peer.poll(5000), f"only {len(acks)} of 2 answers"
            acks.append(decode(peer.recv_multipart()))
        assert all(isinstance(a, BatchAck) and a.seq == 3 for a in acks), acks
    finally:
        peer.close(0)


def test_a_flood_of_hellos_does_not_push_out_a_streaming_run(
    controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the session limit a new hello makes room by forgetting a run's in-memory state
    (its detectors too); runs that never had a point stored go before one that streams."""
    monkeypatch.setattr(server, "_MAX_SESSIONS", RUNS + 2)
    c = controller
    queue(c, range(1, 2))  # one batch of every run
    for _ in range(5):
        c._commit_next()
    assert c.stats.points == RUNS * 80
    for i in range(50):  # hello-only runs, each newer than the streamers' last batch
        c._dispatch(b"flood%d" % i, Hello(run_id=f"f{i}", run=f"flood-{i}", lrs=[0.1]))
    assert all(f"r{r}" in c._sessions for r in range(RUNS))
    assert len(c._sessions) <= RUNS + 2
