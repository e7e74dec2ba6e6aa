"""Hostile command lines against the ``lrpilot`` CLI, beside a live controller and run.

Hypothesis builds argument lists for every client command (runs, set-lr, scale-lr, pause,
resume, approve, history, events, export, status): run names that exist and that do not,
numbers that are not numbers, durations that overflow, endpoints that are not endpoints,
database files that are missing, corrupt or directories. Every one must end with exit code
0, 1 or 2 and, when it fails, a message of one line (argparse's usage line aside), never a
traceback. The CLI runs in-process (``cli.main``) for speed; a few cases also go through the
real ``lrpilot`` subprocess. ``LRPILOT_SOAK=1`` multiplies the examples by 10.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import pytest
from harness import SOAK, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st
from lrpilot.monitor import cli
from streamer import Streamer
from support import ThreadedController, lrpilot

EXAMPLES = 1500 if SOAK else 150
SETTINGS = fuzz_settings(EXAMPLES)
COMMANDS = ["runs", "set-lr", "scale-lr", "pause", "resume", "approve", "history", "events",
            "export", "status"]  # fmt: skip
NUMBERS = st.sampled_from(
    ["0.01", "1e-3", "0", "-1", "nan", "inf", "-inf", "1e999", "1e-400", "0x10", "abc", "",
     " 3 ", "1_000", "9" * 400]
)  # fmt: skip
# Valid ones stay short: a long --timeout against the dead endpoint would wait it out.
TIMEOUTS = st.sampled_from(["0.2", "0", "-1", "nan", "inf", "-inf", "1e999", "1e308", "abc", "",
                            "9" * 400])  # fmt: skip
TEXT = st.text(max_size=300).filter(lambda s: "\x00" not in s)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Streamer, dict]]:
    """A controller, a run streaming to it, and files a user could point --db at."""
    tmp = tmp_path_factory.mktemp("fuzz-cli")
    corrupt = tmp / "corrupt.db"
    corrupt.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    text_file = tmp / "notes.txt"
    text_file.write_text("not a database\n" * 100)
    with ThreadedController(tmp / "runs.db") as c:
        streamer = Streamer(c.endpoint, close_timeout=5).start()
        files = {
            "db": str(c.db),
            "corrupt": str(corrupt),
            "text": str(text_file),
            "dir": str(tmp),
            "missing": str(tmp / "missing.db"),
            "out": str(tmp / "out" / "x.csv"),
        }
        try:
            yield c.endpoint, streamer, files
        finally:
            streamer._stop.set()
            assert streamer._thread is not None
            streamer._thread.join(30)


@st.composite
def command_line(draw: st.DrawFn, endpoint: str, run: str, files: dict) -> list[str]:
    cmd = draw(st.sampled_from(COMMANDS))
    argv = [cmd]
    if cmd != "runs" and cmd != "status":
        argv.append(draw(st.one_of(st.just(run), st.just("well-behaved"), TEXT)))
    if cmd in ("set-lr", "scale-lr"):
        argv.append(draw(NUMBERS))
    options = st.sampled_from(
        [
            ["--endpoint", endpoint],
            ["--endpoint", "tcp://127.0.0.1:1", "--timeout", "0.2"],
            ["--endpoint", draw(TEXT)],
            ["--timeout", draw(TIMEOUTS)],
            ["--db", files[draw(st.sampled_from(sorted(files)))]],
            ["--db", draw(TEXT)],
            ["--wait-timeout", draw(st.sampled_from(["0.5", "nan", "-1", "inf", "1e308"]))],
            ["--no-wait"],
            ["--json"],
            ["--format", draw(st.sampled_from(["csv", "jsonl", "xml", ""]))],
            ["-o", files["out"]],
            ["--keys", draw(st.sampled_from([files["dir"], files["missing"], ""]))],
            [draw(TEXT)],
        ]
    )
    for opt in draw(st.lists(options, max_size=4)):
        argv += opt
    # Keep a wait bounded when the fuzz did not pick one (a dead endpoint waits 3 s otherwise).
    if cmd in ("set-lr", "scale-lr", "approve"):
        return [cmd, "--endpoint", endpoint, "--timeout", "0.5", "--wait-timeout", "0.5", *argv[1:]]
    return [cmd, "--endpoint", endpoint, "--timeout", "0.5", *argv[1:]]


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse: usage error
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def test_any_command_line_ends_with_one_clear_line(world: tuple[str, Streamer, dict]) -> None:
    endpoint, streamer, files = world
    outcomes: dict[int, int] = {}

    @SETTINGS
    @given(st.data())
    def check(data: st.DataObject) -> None:
        argv = data.draw(command_line(endpoint, streamer.run_id, files))
        code, _out, err = _run(argv)
        outcomes[code] = outcomes.get(code, 0) + 1
        assert code in (0, 1, 2), (argv, code, err)
        assert "Traceback" not in err, (argv, err)
        if code == 1:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("lrpilot: error: "), (argv, err)
        if code == 2:
            assert err.strip().splitlines()[-1].startswith("lrpilot"), (argv, err)

    check()
    assert outcomes.get(0) and outcomes.get(1) and outcomes.get(2), outcomes


@pytest.mark.parametrize(
    "argv",
    [
        ["runs", "--timeout", "inf"],
        ["set-lr", "x", "nan"],
        ["export", "no-such-run", "--db", "{corrupt}"],
        ["history", "x", "--db", "{dir}"],
        ["runs", "--endpoint", "http://example.com"],
    ],
)
def test_real_subprocess_errors_are_one_line(
    world: tuple[str, Streamer, dict], argv: list[str]
) -> None:
    _, _, files = world
    proc = lrpilot(*[a.format(**files) for a in argv])
    assert proc.returncode in (1, 2), proc
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("lrpilot"), proc.stderr
