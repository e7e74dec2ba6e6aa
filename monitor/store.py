"""The run store: one SQLite file in WAL mode holding runs, series, points, events and commands.

The controller is the only writer; the dashboard and the CLI read the same file concurrently
(WAL lets readers proceed while the writer commits). Everything else in lrpilot goes through
this class's small interface, so a server database could replace SQLite later.

A batch of points and the run's last committed sequence number are written in one
transaction, which is what makes at-least-once delivery idempotent: a resent batch whose
sequence is at or below ``last_seq`` is ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RunOwned, StoreError, UnknownRun

__all__ = ["SCHEMA_VERSION", "CommandRecord", "EventRecord", "RunRecord", "Store"]

SCHEMA_VERSION = 2
#: Statements that bring a database from version N-1 to N (the key), after _SCHEMA.
_MIGRATIONS = {
    2: ["ALTER TABLE runs ADD COLUMN secret TEXT NOT NULL DEFAULT ''"],
}
#: A live run that has sent nothing for this long is shown as stale.
DEFAULT_STALE_AFTER = 15.0
#: The writer's page cache (KiB) and WAL pages between automatic checkpoints.
_CACHE_KIB = 16_384
_CHECKPOINT_PAGES = 10_000
_INSERT_POINTS = "INSERT OR REPLACE INTO points (series, step, value) VALUES (?,?,?)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    host TEXT NOT NULL DEFAULT '',
    pid INTEGER NOT NULL DEFAULT 0,
    optimizer TEXT,
    control TEXT NOT NULL DEFAULT 'advise',
    config TEXT NOT NULL DEFAULT '{}',
    finished REAL,
    last_seen REAL NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0,
    last_step INTEGER NOT NULL DEFAULT -1,
    last_loss REAL,
    lrs TEXT NOT NULL DEFAULT '[]',
    points INTEGER NOT NULL DEFAULT 0,
    dropped INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_name ON runs (name, created);
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (id),
    name TEXT NOT NULL,
    UNIQUE (run_id, name)
);
CREATE TABLE IF NOT EXISTS points (
    series INTEGER NOT NULL,
    step INTEGER NOT NULL,
    value REAL,
    PRIMARY KEY (series, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id, step);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    action TEXT NOT NULL,
    value REAL NOT NULL,
    source TEXT NOT NULL,
    who TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    sent REAL,
    status TEXT NOT NULL DEFAULT 'pending',
    applied_step INTEGER,
    applied_time REAL,
    lrs_before TEXT,
    lrs_after TEXT,
    error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS commands_by_run ON commands (run_id, id);
"""


@dataclass(frozen=True)
class RunRecord:
    """One training run as stored; ``status`` is derived: live, finished or stale."""

    id: str
    name: str
    status: str
    created: float
    last_seen: float
    finished: float | None
    last_seq: int
    last_step: int
    last_loss: float | None
    lrs: list[float]
    control: str
    host: str
    pid: int
    optimizer: str | None
    points: int
    dropped: int
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def lr(self) -> float | None:
        """The LR of the first param group, or None when the run has no optimizer."""
        return self.lrs[0] if self.lrs else None


@dataclass(frozen=True)
class EventRecord:
    """A detection or a decision, with its numbers and a one-line reason."""

    id: int
    run_id: str
    step: int
    time: float
    kind: str
    reason: str
    data: dict[str, Any]


@dataclass(frozen=True)
class CommandRecord:
    """An LR command: who asked, why, and whether and at which step the client applied it."""

    id: int
    run_id: str
    action: str
    value: float
    source: str
    who: str
    reason: str
    created: float
    sent: float | None
    status: str
    applied_step: int | None
    applied_time: float | None
    lrs_before: list[float] | None
    lrs_after: list[float] | None
    error: str


def _json_list(text: str | None) -> list[float] | None:
    return None if text is None else [float(x) for x in json.loads(text)]


class Store:
    """SQLite-backed store. Give it a path; ``readonly=True`` for the dashboard and CLI.

    Args:
        path: the database file; created (with its schema) unless ``readonly``.
        readonly: open for reading only; the file must exist.
        stale_after: seconds of silence after which a live run is reported as stale.

    Raises:
        StoreError: the file cannot be opened or created, or is not an lrpilot database.
    """

    def __init__(
        self, path: str | Path, readonly: bool = False, stale_after: float = DEFAULT_STALE_AFTER
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.stale_after = stale_after
        self._series: dict[str, dict[str, int]] = {}  # run id -> series name -> id
        self._open = False  # write_batches(commit=False) left a transaction open
        self._rolled_back = ""  # why the open transaction was lost, for commit() to raise
        try:
            if readonly:
                if not self.path.exists():
                    raise StoreError(f"database {self.path} does not exist")
                self._conn = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, check_same_thread=False
                )
            else:
                self._conn = sqlite3.connect(str(self.path), check_same_thread=False)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                # Points of many runs land on many B-tree leaves at once: a page cache that
                # holds them, and a checkpoint every ~40 MB of WAL rather than every 4 MB,
                # make bulk inserts about 2x faster (bench/ingest.py, 100 runs). The
                # controller copies the log from a thread (monitor/checkpoint.py); this
                # automatic checkpoint is the fallback that bounds the log.
                self._conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
                self._conn.execute(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES}")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot use {self.path} as an lrpilot database: {exc}") from None

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}; this lrpilot knows up to "
                f"{SCHEMA_VERSION}: upgrade lrpilot"
            )
        if self.readonly:
            if version == 0:
                raise StoreError(f"{self.path} is not an lrpilot database (no schema)")
            return
        if version == 0:
            with self._conn:
                self._conn.executescript(_SCHEMA)
                self._conn.execute("PRAGMA user_version=1")
            version = 1
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._conn:
                for statement in _MIGRATIONS[target]:
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version={target}")

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite on the last close)."""
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, commit: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed at the end unless ``commit`` is False (then it
        stays open for more writes; :meth:`commit` ends it). A write that commits while one
        is open commits it too; one that fails rolls it back, and :meth:`commit` says so."""
        try:
            yield self._conn
            if commit:
                self._conn.commit()
        except BaseException as exc:
            if self._open:
                self._rolled_back = f"{type(exc).__name__}: {exc}"
            self._roll_back()
            if isinstance(exc, sqlite3.OperationalError):
                raise StoreError(f"cannot write to {self.path}: {exc}") from None
            raise
        self._open = not commit

    def _roll_back(self) -> None:
        """Undo the open transaction, if any."""
        self._open = False
        with contextlib.suppress(sqlite3.Error):
            self._conn.rollback()
        # Series ids created inside a rolled-back transaction no longer exist: forget
        # them, or their points would later be stored under another series' id.
        self._series.clear()

    def commit(self) -> None:
        """Commit what ``write_batches(..., commit=False)`` left open (nothing if none).

        Raises StoreError when it cannot be committed, or when a failed write rolled it back
        since: either way none of it is stored.
        """
        lost, self._rolled_back = self._rolled_back, ""
        if lost:
            if self._open:  # written since the loss: the caller counts it lost with the rest
                self._roll_back()
            raise StoreError(f"cannot write to {self.path}: rolled back ({lost})")
        if self._open:
            self._open = False  # a failure below is raised now, not kept for the next call
            with self._transaction():
                pass

    # ---------------------------------------------------------------- writing (controller)

    def open_run(
        self,
        run_id: str,
        name: str,
        *,
        host: str = "",
        pid: int = 0,
        optimizer: str | None = None,
        control: str = "advise",
        lrs: Sequence[float] = (),
        config: dict[str, Any] | None = None,
        secret: str = "",
        now: float | None = None,
    ) -> int:
        """Create the run, or mark an existing one live again; return its last committed seq.

        ``secret`` is the client's per-run secret: the first hello stores its hash, and a
        later hello for the same run id must carry the same secret (RunOwned otherwise), so
        no other peer can take a run over by its id.
        """
        now = time.time() if now is None else now
        digest = hashlib.sha256(secret.encode()).hexdigest() if secret else ""
        with self._transaction() as c:
            row = c.execute("SELECT last_seq, secret FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                c.execute(
                    "INSERT INTO runs (id, name, created, host, pid, optimizer, control, config,"
                    " last_seen, lrs, secret) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (run_id, name, now, host, pid, optimizer, control,
                     json.dumps(config or {}, default=str), now, json.dumps(list(lrs)), digest),
                )  # fmt: skip
                return 0
            if row[1] and not hmac.compare_digest(row[1], digest):
                raise RunOwned(f"run id {run_id!r} belongs to another client")
            c.execute(
                "UPDATE runs SET finished=NULL, last_seen=?, control=? WHERE id=?",
                (now, control, run_id),
            )
            return int(row[0])

    def committed_seq(self, run_id: str) -> int:
        """The last batch sequence number committed for ``run_id`` (0 if none)."""
        row = self._conn.execute("SELECT last_seq FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise UnknownRun(f"unknown run id {run_id!r}")
        return int(row[0])

    def _series_id(self, c: sqlite3.Connection, run_id: str, name: str) -> int:
        known = self._series.get(run_id)
        if known is None:
            known = self._series[run_id] = {}
        sid = known.get(name)
        if sid is None:
            key = (run_id, name)
            c.execute("INSERT OR IGNORE INTO series (run_id, name) VALUES (?,?)", key)
            sid = c.execute("SELECT id FROM series WHERE run_id=? AND name=?", key).fetchone()[0]
            known[name] = sid
        return sid

    def forget(self, run_id: str) -> None:
        """Drop the run's cached series ids (memory only; a later write looks them up)."""
        self._series.pop(run_id, None)

    def write_batches(
        self, batches: Sequence[Any], now: float | None = None, *, commit: bool = True
    ) -> list[str]:
        """Commit metrics batches (protocol ``Metrics``) in one transaction; with ``commit``
        False, write them in the open transaction and leave it open (see :meth:`commit`).

        Returns, per batch, ``"written"``; ``"duplicate"`` for a resend at or below the run's
        committed sequence (skipped); or ``"gap"`` when an earlier batch the client still holds
        is missing (skipped: the client must resend from the committed sequence on).

        The points of every written batch go to SQLite in one ``executemany`` and each run's
        row is updated once, however many of its batches the call carries.
        """
        now = time.time() if now is None else now
        written: list[str] = []
        rows: list[tuple[int, int, float]] = []
        # run id -> [last_seq, points, dropped, last_step, last_loss, lrs] of its written batches
        runs: dict[str, list[Any]] = {}
        with self._transaction(commit) as c:
            seqs: dict[str, int] = {}
            for b in batches:
                last = seqs.get(b.run_id)
                if last is None:
                    row = c.execute("SELECT last_seq FROM runs WHERE id=?", (b.run_id,)).fetchone()
                    if row is None:
                        raise UnknownRun(f"unknown run id {b.run_id!r}")
                    last = seqs[b.run_id] = int(row[0])
                if b.seq <= last:
                    written.append("duplicate")
                    continue
                if max(last + 1, b.base_seq or b.seq) != b.seq:
                    written.append("gap")
                    continue
                ids = [self._series_id(c, b.run_id, n) for n in b.names]
                rows += zip(map(ids.__getitem__, b.keys), b.steps, b.values, strict=True)
                last_step, last_loss, lrs = self._summary(b)
                run = runs.get(b.run_id)
                if run is None:
                    runs[b.run_id] = [b.seq, len(b.steps), b.dropped, last_step, last_loss, lrs]
                else:
                    run[0] = b.seq
                    run[1] += len(b.steps)
                    run[2] = b.dropped
                    run[3] = max(run[3], last_step)
                    run[4] = run[4] if last_loss is None else last_loss
                    run[5] = run[5] if lrs is None else lrs
                seqs[b.run_id] = b.seq
                written.append("written")
            c.executemany(_INSERT_POINTS, rows)
            c.executemany(
                "UPDATE runs SET last_seq=?, last_seen=?, points=points+?, dropped=?,"
                " last_step=MAX(last_step, ?), last_loss=COALESCE(?, last_loss),"
                " lrs=COALESCE(?, lrs) WHERE id=?",
                [(seq, now, n, dropped, step, loss, lrs, run_id)
                 for run_id, (seq, n, dropped, step, loss, lrs) in runs.items()],
            )  # fmt: skip
        return written

    @staticmethod
    def _summary(b: Any) -> tuple[int, float | None, str | None]:
        """The batch's last step, last loss and last LR per group (None where absent)."""
        last_step = max(b.steps) if b.steps else -1
        n = len(b.keys)
        reverse = b.keys[::-1]  # list.index on it finds a key's last point in C

        def last(key: int) -> float | None:
            try:
                return b.values[n - 1 - reverse.index(key)]
            except ValueError:
                return None

        last_loss = None
        if "loss" in b.names:
            last_loss = last(b.names.index("loss"))
            if last_loss is not None and not math.isfinite(last_loss):
                last_loss = None
        lr_keys = sorted(
            (int(name[3:]) if name != "lr" else 0, i)
            for i, name in enumerate(b.names)
            if name == "lr" or (name.startswith("lr/") and name[3:].isdigit())
        )
        lrs = None
        if lr_keys:
            latest = [last(i) for _, i in lr_keys]
            if None not in latest:
                lrs = json.dumps(latest)
        return last_step, last_loss, lrs

    def touch(self, run_id: str, now: float | None = None) -> None:
        """Record that the run is alive (a heartbeat)."""
        with self._transaction() as c:
            c.execute(
                "UPDATE runs SET last_seen=? WHERE id=?",
                (time.time() if now is None else now, run_id),
            )

    def finish_run(self, run_id: str, now: float | None = None) -> None:
        """Mark the run finished (the client said bye)."""
        now = time.time() if now is None else now
        with self._transaction() as c:
            c.execute("UPDATE runs SET finished=?, last_seen=? WHERE id=?", (now, now, run_id))

    def set_control(self, run_id: str, control: str) -> None:
        """Change the run's control mode (auto, advise, off, paused)."""
        with self._transaction() as c:
            c.execute("UPDATE runs SET control=? WHERE id=?", (control, run_id))

    def add_event(
        self,
        run_id: str,
        step: int,
        kind: str,
        reason: str,
        data: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> int:
        """Record a detection or decision; returns the event id."""
        with self._transaction() as c:
            cur = c.execute(
                "INSERT INTO events (run_id, step, time, kind, reason, data) VALUES (?,?,?,?,?,?)",
                (run_id, step, time.time() if now is None else now, kind, reason,
                 json.dumps(data or {}, default=_json_default)),
            )  # fmt: skip
            return int(cur.lastrowid)

    def add_command(
        self,
        run_id: str,
        action: str,
        value: float,
        *,
        source: str,
        who: str = "",
        reason: str = "",
        lrs_before: Sequence[float] | None = None,
        now: float | None = None,
    ) -> int:
        """Record a new LR command (status pending); returns its id."""
        with self._transaction() as c:
            cur = c.execute(
                "INSERT INTO commands (run_id, action, value, source, who, reason, created,"
                " lrs_before) VALUES (?,?,?,?,?,?,?,?)",
                (run_id, action, value, source, who, reason, time.time() if now is None else now,
                 None if lrs_before is None else json.dumps(list(lrs_before))),
            )  # fmt: skip
            return int(cur.lastrowid)

    def mark_command_sent(self, command_id: int, now: float | None = None) -> None:
        """Record that the command went out to the client (again, after a reconnect)."""
        with self._transaction() as c:
            c.execute(
                "UPDATE commands SET sent=?, status=CASE WHEN status='pending' THEN 'sent'"
                " ELSE status END WHERE id=?",
                (time.time() if now is None else now, command_id),
            )

    def mark_command_done(
        self,
        command_id: int,
        *,
        run_id: str,
        step: int,
        lrs: Sequence[float],
        ok: bool,
        error: str = "",
        now: float | None = None,
    ) -> bool:
        """Record the client's acknowledgement: applied at ``step`` with ``lrs``, or failed.

        Only a command of ``run_id`` that is still pending or sent is updated; returns
        whether one was (an ack for another run's command, or a repeat, changes nothing).
        """
        now = time.time() if now is None else now
        with self._transaction() as c:
            cur = c.execute(
                "UPDATE commands SET status=?, applied_step=?, applied_time=?, lrs_after=?,"
                " error=? WHERE id=? AND run_id=? AND status IN ('pending', 'sent')",
                ("applied" if ok else "failed", step if ok else None, now,
                 json.dumps(list(lrs)), error, command_id, run_id),
            )  # fmt: skip
            if cur.rowcount == 0:
                return False
            if ok and lrs:
                c.execute("UPDATE runs SET lrs=? WHERE id=?", (json.dumps(list(lrs)), run_id))
        return True

    def cancel_pending_commands(self, run_id: str, reason: str) -> None:
        """Mark commands that never reached a finished run as failed."""
        with self._transaction() as c:
            c.execute(
                "UPDATE commands SET status='failed', error=? WHERE run_id=?"
                " AND status IN ('pending', 'sent')",
                (reason, run_id),
            )

    # ---------------------------------------------------------------- reading

    def _run(self, row: sqlite3.Row | tuple, now: float) -> RunRecord:
        (rid, name, created, host, pid, optimizer, control, config, finished, last_seen,
         last_seq, last_step, last_loss, lrs, points, dropped) = row  # fmt: skip
        if finished is not None:
            status = "finished"
        elif now - last_seen > self.stale_after:
            status = "stale"
        else:
            status = "live"
        return RunRecord(
            id=rid, name=name, status=status, created=created, last_seen=last_seen,
            finished=finished, last_seq=last_seq, last_step=last_step, last_loss=last_loss,
            lrs=_json_list(lrs) or [], control=control, host=host, pid=pid, optimizer=optimizer,
            points=points, dropped=dropped, config=json.loads(config),
        )  # fmt: skip

    _RUN_COLUMNS = (
        "id, name, created, host, pid, optimizer, control, config, finished, last_seen,"
        " last_seq, last_step, last_loss, lrs, points, dropped"
    )

    def runs(self, now: float | None = None) -> list[RunRecord]:
        """All runs, newest first."""
        now = time.time() if now is None else now
        rows = self._conn.execute(
            f"SELECT {self._RUN_COLUMNS} FROM runs ORDER BY created DESC"
        ).fetchall()
        return [self._run(r, now) for r in rows]

    def run(self, run_id: str, now: float | None = None) -> RunRecord:
        """The run with this exact id; raises UnknownRun."""
        row = self._conn.execute(
            f"SELECT {self._RUN_COLUMNS} FROM runs WHERE id=?", (run_id,)
        ).fetchone()
        if row is None:
            raise UnknownRun(f"unknown run id {run_id!r}")
        return self._run(row, time.time() if now is None else now)

    def find_run(self, ref: str, now: float | None = None) -> RunRecord:
        """Resolve a run name (the newest run of that name) or a run id; raises UnknownRun."""
        now = time.time() if now is None else now
        row = self._conn.execute(
            f"SELECT {self._RUN_COLUMNS} FROM runs WHERE name=? ORDER BY created DESC LIMIT 1",
            (ref,),
        ).fetchone()
        if row is None:
            row = self._conn.execute(
                f"SELECT {self._RUN_COLUMNS} FROM runs WHERE id=?", (ref,)
            ).fetchone()
        if row is None:
            shown = ref if len(ref) <= 80 else ref[:77] + "..."
            raise UnknownRun(f"no run named or with id {shown!r}; `lrpilot runs` lists them")
        return self._run(row, now)

    def series_names(self, run_id: str) -> list[str]:
        """Names of the series a run has reported, sorted."""
        rows = self._conn.execute(
            "SELECT name FROM series WHERE run_id=? ORDER BY name", (run_id,)
        ).fetchall()
        return [r[0] for r in rows]

    def points(
        self, run_id: str, series: str, start: int | None = None, end: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Steps (int64) and values (float64, NaN where non-finite NaN was sent) of one series,
        ordered by step, optionally limited to ``start <= step <= end``."""
        sql = (
            "SELECT p.step, p.value FROM points p JOIN series s ON p.series = s.id"
            " WHERE s.run_id=? AND s.name=?"
        )
        args: list[Any] = [run_id, series]
        if start is not None:
            sql += " AND p.step >= ?"
            args.append(start)
        if end is not None:
            sql += " AND p.step <= ?"
            args.append(end)
        rows = self._conn.execute(sql + " ORDER BY p.step", args).fetchall()
        if not rows:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
        steps = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        # SQLite stores NaN as NULL; give it back as NaN.
        values = np.fromiter(
            (np.nan if r[1] is None else r[1] for r in rows), dtype=np.float64, count=len(rows)
        )
        return steps, values

    def iter_points(self, run_id: str) -> Iterator[tuple[int, str, float]]:
        """Every stored point of a run as (step, series, value), by step then series."""
        cur = self._conn.execute(
            "SELECT p.step, s.name, p.value FROM points p JOIN series s ON p.series = s.id"
            " WHERE s.run_id=? ORDER BY p.step, s.name",
            (run_id,),
        )
        for step, name, value in cur:
            yield step, name, (math.nan if value is None else value)

    def events(self, run_id: str, since_id: int = 0) -> list[EventRecord]:
        """Events of a run in order, optionally only those with id > ``since_id``."""
        rows = self._conn.execute(
            "SELECT id, run_id, step, time, kind, reason, data FROM events"
            " WHERE run_id=? AND id>? ORDER BY id",
            (run_id, since_id),
        ).fetchall()
        return [EventRecord(*r[:6], data=json.loads(r[6])) for r in rows]

    def commands(self, run_id: str | None = None) -> list[CommandRecord]:
        """LR commands of a run (or of all runs) in the order they were made."""
        sql = (
            "SELECT id, run_id, action, value, source, who, reason, created, sent, status,"
            " applied_step, applied_time, lrs_before, lrs_after, error FROM commands"
        )
        rows = (
            self._conn.execute(sql + " WHERE run_id=? ORDER BY id", (run_id,))
            if run_id is not None
            else self._conn.execute(sql + " ORDER BY id")
        ).fetchall()
        return [self._command(r) for r in rows]

    def command(self, command_id: int) -> CommandRecord:
        """One command by id; raises StoreError if there is none."""
        row = self._conn.execute(
            "SELECT id, run_id, action, value, source, who, reason, created, sent, status,"
            " applied_step, applied_time, lrs_before, lrs_after, error FROM commands WHERE id=?",
            (command_id,),
        ).fetchone()
        if row is None:
            raise StoreError(f"no command with id {command_id}")
        return self._command(row)

    @staticmethod
    def _command(r: tuple) -> CommandRecord:
        return CommandRecord(
            *r[:12], lrs_before=_json_list(r[12]), lrs_after=_json_list(r[13]), error=r[14]
        )

    def pending_commands(self, run_id: str) -> list[CommandRecord]:
        """Commands not yet acknowledged by the client (to resend after a reconnect)."""
        return [c for c in self.commands(run_id) if c.status in ("pending", "sent")]

    def point_count(self, run_id: str | None = None) -> int:
        """Number of stored points, of one run or of all."""
        if run_id is None:
            return int(
                self._conn.execute("SELECT COALESCE(SUM(points), 0) FROM runs").fetchone()[0]
            )
        return self.run(run_id).points


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)
