"""The ``lrpilot`` command line: serve the controller, list runs, change an LR, export data.

Every subcommand that can fail on user input prints one line, ``lrpilot: error: ...``, and
exits non-zero; only the project's own errors are caught, so a real bug still shows its
traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import IO, Any, NoReturn

from ..client.protocol import DEFAULT_ENDPOINT
from .errors import ControllerError, LrpilotError, OutputError
from .remote import ControllerClient
from .store import Store

__all__ = ["main"]


def _endpoint_default() -> str:
    return os.environ.get("LRPILOT_ENDPOINT") or DEFAULT_ENDPOINT


def _number(text: str) -> float:
    """argparse type: a finite number > 0, with a clear message otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be finite and > 0, got {text}")
    return value


_MAX_SECONDS = 7 * 24 * 3600.0  # a week: anything longer is a typo, and overflows poll()


def _duration(low: float, high: float, *, zero_ok: bool) -> Callable[[str], float]:
    """argparse type: seconds within ``[low, high]`` (``(low, high]`` unless ``zero_ok``)."""
    opening = "[" if zero_ok else "("

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        above = value >= low if zero_ok else value > low
        if not math.isfinite(value) or not above or value > high:
            raise argparse.ArgumentTypeError(
                f"must be in {opening}{low:g}, {high:g}] seconds, got {text}"
            )
        return value

    return parse


_seconds = _duration(0.0, _MAX_SECONDS, zero_ok=False)  # timeouts, staleness
_pace = _duration(0.0, 10.0, zero_ok=True)  # the demo's sleep per step


def _count(text: str) -> int:
    """argparse type: a whole number of steps, 1 to 10 million."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 10_000_000:
        raise argparse.ArgumentTypeError(f"must be in [1, 10000000], got {text}")
    return value


def _fmt_time(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_num(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: IO[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*headers, box=None, header_style="bold")
    for row in rows:
        table.add_row(*[_fmt_num(c) for c in row])
    Console(file=out, width=max(120, len(headers) * 14), soft_wrap=True).print(table)


# --------------------------------------------------------------------------- sources


def _client(args: argparse.Namespace) -> ControllerClient:
    return ControllerClient(args.endpoint, args.timeout, keys=args.keys)


@contextmanager
def _open_db(path: str) -> Iterator[Store]:
    store = Store(path, readonly=True)
    try:
        yield store
    finally:
        store.close()


def _runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.db:
        from dataclasses import asdict

        with _open_db(args.db) as store:
            return [asdict(r) for r in store.runs()]
    return _client(args).request("runs")


def _history(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.db:
        from dataclasses import asdict

        with _open_db(args.db) as store:
            return [asdict(c) for c in store.commands(store.find_run(args.run).id)]
    return _client(args).request("history", run=args.run)


def _events(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.db:
        from dataclasses import asdict

        with _open_db(args.db) as store:
            return [asdict(e) for e in store.events(store.find_run(args.run).id)]
    return _client(args).request("events", run=args.run)


# --------------------------------------------------------------------------- commands


def _http_address(text: str) -> tuple[str, int] | None:
    """argparse type for --http: HOST:PORT, or 'off'."""
    if text == "off":
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT or off, got {text!r}")
    return host.strip("[]"), int(port)


def _token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get("LRPILOT_TOKEN") or None


def start_dashboard(
    db: str,
    endpoint: str | None,
    http: tuple[str, int],
    token: str | None,
    keys: str | None = None,
) -> Any:
    """Serve the dashboard for ``db`` in a thread (read-only when ``endpoint`` is None)."""
    from ..dashboard import create_app, serve_dashboard

    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    controller = ControllerClient(endpoint, keys=keys) if endpoint else None
    app = create_app(Store(db, readonly=True), controller, token=token, readonly=not endpoint)
    return serve_dashboard(app, *http)


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import Controller

    logging.basicConfig(level=logging.INFO, format="%(asctime)s lrpilot %(message)s")
    controller = Controller(
        args.db, args.listen, stale_after=args.stale_after, policy=args.policy, keys=args.keys
    )
    endpoint = controller.bind()
    dashboard = None
    try:
        if args.http is not None:
            # The dashboard is a client of this controller: it talks over loopback.
            local = endpoint.replace("tcp://0.0.0.0:", "tcp://127.0.0.1:")
            dashboard = start_dashboard(args.db, local, args.http, _token(args), args.keys)
    except LrpilotError:
        controller.close()
        raise

    def _stop(signum: int, _frame: Any) -> None:
        controller.stop()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    auth = " (CURVE authentication)" if args.keys else ""
    print(f"lrpilot controller listening on {endpoint}{auth}, storing to {args.db}", flush=True)
    if dashboard is not None:
        print(f"dashboard at {dashboard.url}", flush=True)
    if args.policy:
        print(f"policy {args.policy} (reloaded on save)", flush=True)
    print("stop with Ctrl-C", flush=True)
    try:
        controller.serve_forever()
    finally:
        if dashboard is not None:
            dashboard.stop()
    print(f"lrpilot controller stopped; {controller.stats.points} points stored", flush=True)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    Store(args.db, readonly=True).close()  # a clear error now rather than in the page
    server = start_dashboard(args.db, None, args.http, _token(args))
    print(f"dashboard (read-only) for {args.db} at {server.url}; stop with Ctrl-C", flush=True)
    stop = False

    def _stop(signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop:
            time.sleep(0.2)
    finally:
        server.stop()
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from .keys import generate_keys

    d = generate_keys(args.dir)
    print(f"wrote CURVE keys to {d}:")
    print(f"  controller: lrpilot serve --keys {d} --listen tcp://0.0.0.0:5555")
    print(f"  clients:    copy {d}/client.key_secret and {d}/server.key to each training "
          "machine's key directory; Monitor(keys=DIR) or LRPILOT_KEYS=DIR")  # fmt: skip
    print(f"  more clients: add their public .key files to {d}/authorized/")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    runs = _runs(args)
    if args.json:
        json.dump(runs, sys.stdout, indent=1)
        print()
        return 0
    if not runs:
        print("no runs yet: start one with Monitor(run=..., endpoint=...)")
        return 0
    rows = [
        (r["name"], r["id"], r["status"], r["last_step"] + 1, r["last_loss"],
         r["lrs"][0] if r["lrs"] else None, r["control"], _fmt_time(r["created"]))
        for r in runs
    ]  # fmt: skip
    _print_table(
        ("run", "id", "status", "steps", "last loss", "lr", "control", "started"), rows, sys.stdout
    )
    return 0


def _change_lr(args: argparse.Namespace, op: str, **kw: Any) -> int:
    client = _client(args)
    sent = client.request(op, run=args.run, who=f"cli:{os.environ.get('USER', '?')}", **kw)
    cid = sent["command_id"]
    if args.no_wait:
        print(f"command {cid} sent to run {sent['run']} ({sent['run_id']})")
        return 0
    state = client.wait_applied(cid, timeout=args.wait_timeout)
    if state["status"] == "failed":
        raise ControllerError(f"run {sent['run']} refused command {cid}: {state['error']}")
    lrs = ", ".join(f"{x:.6g}" for x in state["lrs_after"] or [])
    print(
        f"run {sent['run']} ({sent['run_id']}): LR now {lrs}, "
        f"in effect from step {state['applied_step']}"
    )
    return 0


def cmd_set_lr(args: argparse.Namespace) -> int:
    return _change_lr(args, "set_lr", value=args.value)


def cmd_scale_lr(args: argparse.Namespace) -> int:
    return _change_lr(args, "scale_lr", factor=args.factor)


def cmd_pause(args: argparse.Namespace) -> int:
    _client(args).request("pause", run=args.run)
    print(f"automatic control of {args.run} paused")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    return _change_lr(args, "approve")


def cmd_resume(args: argparse.Namespace) -> int:
    _client(args).request("resume", run=args.run)
    print(f"automatic control of {args.run} resumed")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    commands = _history(args)
    if args.json:
        json.dump(commands, sys.stdout, indent=1)
        print()
        return 0
    if not commands:
        print(f"no LR changes for {args.run}")
        return 0
    rows = [
        (c["id"], _fmt_time(c["created"]), c["source"], c["action"], c["value"],
         c["status"], c["applied_step"], ", ".join(f"{x:.4g}" for x in c["lrs_after"] or []),
         c["reason"] or c["error"])
        for c in commands
    ]  # fmt: skip
    _print_table(
        ("id", "time", "source", "action", "value", "status", "step", "lr after", "reason"),
        rows,
        sys.stdout,
    )
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    events = _events(args)
    if args.json:
        json.dump(events, sys.stdout, indent=1)
        print()
        return 0
    if not events:
        print(f"no events for {args.run}")
        return 0
    rows = [(e["step"], _fmt_time(e["time"]), e["kind"], e["reason"]) for e in events]
    _print_table(("step", "time", "kind", "reason"), rows, sys.stdout)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    db = args.db or _client(args).request("ping")["db"]
    with _open_db(db) as store:
        run = store.find_run(args.run)
        out: IO[str] = sys.stdout
        if args.output:
            try:
                out = open(args.output, "w", newline="")  # noqa: SIM115
            except OSError as exc:
                raise OutputError(
                    f"cannot write {args.output}: {exc.strerror or exc}; check that its folder "
                    "exists and is writable"
                ) from None
        n = 0
        try:
            if args.format == "csv":
                writer = csv.writer(out)
                writer.writerow(("step", "series", "value"))
                for step, name, value in store.iter_points(run.id):
                    writer.writerow((step, name, repr(value)))
                    n += 1
            else:
                for step, name, value in store.iter_points(run.id):
                    n += 1
                    # JSON has no NaN/inf: write them as strings pandas reads back as floats.
                    v: Any = value if math.isfinite(value) else str(value)
                    out.write(json.dumps({"step": step, "series": name, "value": v}) + "\n")
        finally:
            if args.output:
                out.close()
    if args.output:
        print(f"wrote {n} points of run {run.name} ({run.id}) to {args.output}", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    s = _client(args).request("status")
    print(
        f"controller {s['endpoint']}  db {s['db']} ({s['db_bytes'] / 1e6:.1f} MB, of which "
        f"WAL {s.get('wal_bytes', 0) / 1e6:.1f} MB)"
    )
    print(
        f"up {s['uptime_s']:.0f} s, {s['live_runs']} live runs, {s['points']} points "
        f"({s['points_per_s']:.0f}/s), {s['commands_sent']} commands sent"
    )
    rejected = s["rejected"]
    print("rejected: " + (", ".join(f"{k}: {v}" for k, v in rejected.items()) or "none"))
    if s.get("checkpoint_error"):
        print(f"WAL checkpoints failing: {s['checkpoint_error']} (SQLite's own go on)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(
        steps=args.steps, db=args.db, lr=args.lr, keep=args.keep, pace=args.pace, http=args.http
    )


# --------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error, instead of argparse's usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"lrpilot: error: {_printable(message)} (see `{self.prog} --help`)\n")


def _printable(text: str) -> str:
    """``text`` with control characters escaped: an error echoing a user's input (a run name
    with a carriage return, say) stays one visible line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = _Parser(
        prog="lrpilot",
        description="Training monitor with automatic learning-rate control.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    def remote(sp: argparse.ArgumentParser, db: bool = False) -> None:
        sp.add_argument(
            "--endpoint", default=_endpoint_default(),
            help="controller endpoint (default $LRPILOT_ENDPOINT or %(default)s)",
        )  # fmt: skip
        sp.add_argument("--timeout", type=_seconds, default=3.0, help="seconds to wait for a reply")
        sp.add_argument(
            "--keys", default=os.environ.get("LRPILOT_KEYS"),
            help="CURVE key directory when the controller requires it (default $LRPILOT_KEYS)",
        )  # fmt: skip
        if db:
            sp.add_argument("--db", help="read this database file directly (no controller)")

    def http(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--http", type=_http_address, default=("127.0.0.1", 8050), metavar="HOST:PORT",
            help="dashboard address, or 'off' (default 127.0.0.1:8050)",
        )  # fmt: skip
        sp.add_argument(
            "--token", help="secret required by the dashboard's write actions (default "
            "$LRPILOT_TOKEN); required when --http is not on loopback",
        )  # fmt: skip

    sp = add("serve", cmd_serve, "run the controller (and the dashboard)")
    sp.add_argument("--db", default="lrpilot.db", help="SQLite file (default %(default)s)")
    sp.add_argument("--listen", default=_endpoint_default(), help="endpoint (default %(default)s)")
    sp.add_argument("--policy", help="policy TOML file, reloaded on save (docs/policy.md)")
    sp.add_argument(
        "--keys", help="require CURVE-authenticated clients (a `lrpilot keys` directory); "
        "needed to listen off loopback",
    )  # fmt: skip
    sp.add_argument("--stale-after", type=_seconds, default=15.0, help="seconds before stale")
    http(sp)

    sp = add("dashboard", cmd_dashboard, "serve the dashboard for a database file, read-only")
    sp.add_argument("--db", required=True, help="SQLite file written by lrpilot serve")
    http(sp)

    sp = add("keys", cmd_keys, "generate CURVE keys for the controller and its clients")
    sp.add_argument("dir", help="directory to write the keys into")

    sp = add("runs", cmd_runs, "list runs")
    remote(sp, db=True)
    sp.add_argument("--json", action="store_true", help="print JSON")

    for name, fn, arg, what in (
        ("set-lr", cmd_set_lr, "value", "set the LR of a live run (group 0; others keep ratio)"),
        ("scale-lr", cmd_scale_lr, "factor", "multiply the LR of every param group of a live run"),
    ):
        sp = add(name, fn, what)
        sp.add_argument("run", help="run name (newest run of that name) or run id")
        sp.add_argument(arg, type=_number)
        sp.add_argument("--no-wait", action="store_true", help="return once the command is sent")
        sp.add_argument("--wait-timeout", type=_seconds, default=30.0, help="seconds to wait")
        remote(sp)

    sp = add("approve", cmd_approve, "apply the LR change lrpilot advised for a run")
    sp.add_argument("run")
    sp.add_argument("--no-wait", action="store_true", help="return once the command is sent")
    sp.add_argument("--wait-timeout", type=_seconds, default=30.0, help="seconds to wait")
    remote(sp)

    for name, fn, what in (
        ("pause", cmd_pause, "pause automatic LR control of a run"),
        ("resume", cmd_resume, "resume automatic LR control of a run"),
    ):
        sp = add(name, fn, what)
        sp.add_argument("run")
        remote(sp)

    for name, fn, what in (
        ("history", cmd_history, "LR changes of a run: source, reason, applied step"),
        ("events", cmd_events, "detections and decisions of a run"),
    ):
        sp = add(name, fn, what)
        sp.add_argument("run")
        sp.add_argument("--json", action="store_true", help="print JSON")
        remote(sp, db=True)

    sp = add("export", cmd_export, "write every stored point of a run (step, series, value)")
    sp.add_argument("run")
    sp.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    sp.add_argument("-o", "--output", help="file to write (default stdout)")
    remote(sp, db=True)

    sp = add("status", cmd_status, "controller health: ingest rate, live runs, rejects")
    remote(sp)

    sp = add("demo", cmd_demo, "controller + a real training run whose too-high LR gets fixed")
    sp.add_argument("--steps", type=_count, default=2000, help="training steps")
    sp.add_argument("--pace", type=_pace, default=0.015, help="seconds to sleep per step")
    sp.add_argument("--lr", type=_number, default=None, help="starting LR (default: too high)")
    sp.add_argument("--db", default=None, help="keep the demo's database here")
    sp.add_argument("--keep", action="store_true", help="keep serving after training ends")
    sp.add_argument(
        "--http", type=_http_address, default=("127.0.0.1", 8050), metavar="HOST:PORT",
        help="dashboard address, or 'off'; a busy port falls back to a free one",
    )  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lrpilot`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except LrpilotError as exc:
        print(f"lrpilot: error: {_printable(str(exc))}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `lrpilot export ... | head`
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
