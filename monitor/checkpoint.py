"""WAL checkpoints on a thread of their own, off the controller's loop.

In WAL mode every commit appends pages to the log, and SQLite copies them back into the
database file (a checkpoint) from inside the commit that crosses ``wal_autocheckpoint``. Under
bench/ingest.py's load that commit took ~55 ms instead of ~4 (22 of 272 commits above 30 ms,
all the checkpoints), and every request read meanwhile waited for it. A PASSIVE checkpoint
from another connection copies the same pages without taking the writer's lock, and sqlite3
releases the GIL while it runs: the loop's commits then find the log already copied, and
the log restarts from its beginning at the next commit, as after an automatic checkpoint.
The writer keeps its automatic checkpoint as the fallback should this thread fall behind.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

__all__ = ["Checkpointer"]

log = logging.getLogger("lrpilot.controller")


class Checkpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on ``path`` every ``interval`` seconds.

    A failure (disk full, read-only file, a lock held elsewhere) is counted and logged once
    until a checkpoint succeeds again; it never stops the thread, and the database stays
    consistent whatever happens to a checkpoint (SQLite makes it crash-safe).
    """

    def __init__(self, path: str | Path, interval: float = 0.05) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.path = Path(path)
        self.interval = interval
        # Checkpoints that found the log changed and copied from it (SQLite reports only
        # what the current log holds and how much of it is copied, not a count per call).
        self.checkpoints = 0
        self.errors = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lrpilot-checkpoint", daemon=True)

    def start(self) -> Checkpointer:
        """Start the thread; returns self."""
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread after its current checkpoint. Safe to call twice."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        conn = None
        last = (0, 0)  # (frames in the log, frames copied) at the last look
        try:
            while not self._stop.wait(self.interval):
                try:
                    if conn is None:
                        conn = sqlite3.connect(str(self.path), isolation_level=None)
                    _busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    self._failed(str(exc))
                    continue
                if self.last_error:
                    log.info("WAL checkpoints of %s resumed", self.path)
                    self.last_error = ""
                if done > 0 and (frames, done) != last:  # frames < 0: not in WAL mode (yet)
                    self.checkpoints += 1
                last = (frames, done)
        finally:
            if conn is not None:
                conn.close()

    def _failed(self, error: str) -> None:
        self.errors += 1
        if not self.last_error:
            log.warning("WAL checkpoint of %s failed (%s); SQLite's own checkpoints go on",
                        self.path, error)  # fmt: skip
        self.last_error = error
