"""Helpers for tests: free ports, polling, controllers and CLI runs that always stop."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from lrpilot.monitor.server import Controller

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> object:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


class ThreadedController:
    """A Controller on a background thread; ``endpoint`` and ``db`` for the test."""

    def __init__(self, db: Path, **kwargs: object) -> None:
        self.db = db
        self.controller = Controller(db, "tcp://127.0.0.1:*", **kwargs)  # type: ignore[arg-type]
        self.endpoint = self.controller.bind()
        self.thread = threading.Thread(target=self.controller.serve_forever, daemon=True)

    def __enter__(self) -> ThreadedController:
        self.thread.start()
        if not self.controller.ready.wait(5):
            pytest.fail("controller did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
        self.thread.join(10)
        if self.thread.is_alive():
            pytest.fail("controller thread did not stop within 10 s")


def lrpilot(*args: str, timeout: float = 30.0, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run the real ``lrpilot`` command line."""
    return subprocess.run(
        [sys.executable, "-m", "lrpilot.monitor.cli", *args],
        capture_output=True, text=True, timeout=timeout, **kw,  # type: ignore[call-overload]
    )  # fmt: skip


class ServeProcess:
    """``lrpilot serve`` as a real subprocess on a free loopback port."""

    def __init__(self, db: Path, port: int | None = None, *extra: str) -> None:
        self.db = db
        self.port = port or free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.extra = extra or ("--http", "off")
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> ServeProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lrpilot.monitor.cli", "serve", "--db", str(self.db),
             "--listen", self.endpoint, *self.extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until bound (or exited)
        if "listening" not in line:
            rest = self.proc.stdout.read() if self.proc.poll() is not None else ""
            self.stop()
            pytest.fail(f"lrpilot serve did not start: {line}{rest}")
        self.lines.append(line)
        # Keep reading on a thread so a chatty controller never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def output_line(self, prefix: str, timeout: float = 10.0) -> str:
        """The first output line starting with ``prefix`` (waits for it)."""

        def find() -> str | None:
            return next((x for x in self.lines if x.startswith(prefix)), None)

        return wait_for(find, timeout, what=f"a line starting with {prefix!r}")  # type: ignore[return-value]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            pytest.fail("lrpilot serve did not stop on SIGTERM within 10 s")
