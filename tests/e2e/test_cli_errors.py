"""Bad input to the CLI and to `lrpilot serve`: one clear line, non-zero exit, no hang."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import ServeProcess, free_port, lrpilot


@pytest.mark.parametrize(
    "args, message",
    [
        (["set-lr", "nosuchrun", "0.1"], "no run named or with id 'nosuchrun'"),
        (["set-lr", "x", "-1"], "must be finite and > 0, got -1"),
        (["set-lr", "x", "nan"], "must be finite and > 0, got nan"),
        (["set-lr", "x", "abc"], "'abc' is not a number"),
        (["scale-lr", "x", "0"], "must be finite and > 0, got 0"),
        (["scale-lr", "x", "inf"], "must be finite and > 0, got inf"),
        (["history", "nosuchrun"], "no run named or with id 'nosuchrun'"),
        (["export", "nosuchrun"], "no run named or with id 'nosuchrun'"),
    ],
)
def test_bad_values_and_unknown_runs(serve: ServeProcess, args: list[str], message: str) -> None:
    t0 = time.monotonic()
    r = lrpilot(*args, "--endpoint", serve.endpoint)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("cmd", [["runs"], ["set-lr", "x", "0.1"], ["status"], ["history", "x"]])
def test_unreachable_endpoint_fails_fast(cmd: list[str]) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    r = lrpilot(*cmd, "--endpoint", endpoint, "--timeout", "1")
    assert r.returncode == 1
    assert f"no controller answered at {endpoint}" in r.stderr
    assert time.monotonic() - t0 < 8


def test_malformed_endpoint() -> None:
    r = lrpilot("runs", "--endpoint", "localhost:5555")
    assert r.returncode == 1 and "malformed endpoint 'localhost:5555'" in r.stderr


def test_db_errors_for_readers(tmp_path: Path) -> None:
    r = lrpilot("runs", "--db", str(tmp_path / "none.db"))
    assert r.returncode == 1 and "does not exist" in r.stderr
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"garbage" * 1000)
    r = lrpilot("runs", "--db", str(junk))
    assert r.returncode == 1 and "lrpilot: error:" in r.stderr and "Traceback" not in r.stderr


def serve_once(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lrpilot.monitor.cli", "serve", "--http", "off", *args],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip


def test_port_in_use(serve: ServeProcess, tmp_path: Path) -> None:
    r = serve_once("--db", str(tmp_path / "other.db"), "--listen", serve.endpoint)
    assert r.returncode == 1 and "already in use" in r.stderr, r.stderr


def test_same_db_twice(serve: ServeProcess) -> None:
    r = serve_once("--db", str(serve.db), "--listen", f"tcp://127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "in use by another lrpilot controller" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "listen, message",
    [
        ("tcp://127.0.0.1", "malformed endpoint"),
        ("127.0.0.1:5555", "malformed endpoint"),
        ("tcp://127.0.0.1:99999", "port must be 1-65535"),
        ("tcp://0.0.0.0:5555", "not a loopback address"),
    ],
)
def test_bad_listen_endpoints(tmp_path: Path, listen: str, message: str) -> None:
    r = serve_once("--db", str(tmp_path / "x.db"), "--listen", listen)
    assert r.returncode == 1 and message in r.stderr, r.stderr


def test_unwritable_db_path(tmp_path: Path) -> None:
    r = serve_once("--db", str(tmp_path / "no" / "such" / "dir" / "x.db"),
                   "--listen", f"tcp://127.0.0.1:{free_port()}")  # fmt: skip
    assert r.returncode == 1 and "choose a writable --db" in r.stderr, r.stderr
    afile = tmp_path / "afile"
    afile.write_text("")
    r = serve_once("--db", str(afile / "x.db"), "--listen", f"tcp://127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "choose a writable --db" in r.stderr, r.stderr


def test_sigterm_and_sigint_stop_cleanly(tmp_path: Path) -> None:
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = ServeProcess(tmp_path / f"{sig.name}.db").start()
        assert proc.proc is not None
        proc.proc.send_signal(sig)
        assert proc.proc.wait(10) == 0


@pytest.mark.parametrize("where", ["missing/x.csv", "."])
def test_export_to_an_unwritable_path_is_one_line(tmp_path: Path, where: str) -> None:
    """Found by the CLI fuzz's soak mode: a missing folder was a FileNotFoundError traceback."""
    from lrpilot.monitor.store import Store

    db = tmp_path / "runs.db"
    store = Store(db)
    store.open_run("0123456789ab", "myrun")
    store.close()
    out = tmp_path / where
    r = lrpilot("export", "myrun", "--db", str(db), "--output", str(out))
    assert r.returncode == 1, r
    assert r.stderr.strip().splitlines() == [
        f"lrpilot: error: cannot write {out}: "
        f"{'No such file or directory' if where != '.' else 'Is a directory'}; "
        "check that its folder exists and is writable"
    ], r.stderr
