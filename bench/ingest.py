"""Ingest throughput of the lrpilot controller, beside the bare SQLite and pyzmq rates.

In one run on this machine (issue 7):

(a) sustained records/s through a real ``lrpilot serve`` (storage and detection on):
    ``--clients`` simulated clients x ``--steps`` steps x 4 scalars, in batches of
    ``--batch-steps`` steps, driven by ``--procs`` processes speaking the wire protocol
    (tests/reliability/harness.py: hello, bounded window, resend, bye);
(b) the bare SQLite insert rate into the same schema: through ``Store.write_batches`` and
    with a raw ``executemany`` into the same ``points`` table (one run's rows, 160,000 per
    transaction: SQLite's best case, the issue's yardstick), and a raw ``executemany`` of the
    rows as the controller commits them under load (every client's batches interleaved,
    2,000 points per executemany, 20,000 per transaction, so a commit rewrites 400 series'
    pages; the same work, without the controller);
(c) the raw pyzmq receive rate, DEALER -> ROUTER, msgpack batches of the same shape,
    received and decoded (untyped);
(d) LR command latency under the load of (a): ``--torch-runs`` real torch runs (2, as the
    issue asks) with Monitor (one OpenMP thread each, ``--torch-threads``) get a ``set_lr``
    request every ``--command-every`` seconds, in turn; latency is the controller's
    ``applied_time`` minus the wall time just before the request was sent (also split:
    until the controller sent the command to the run);
(e) the controller's peak RSS (VmHWM);
(f) detection alone, in this process: microseconds per record of ``RunController.observe``
    on one run's batches of the same shape, a series at a time (what the controller does)
    beside point by point (the path batches carrying the cosine take).

Prints a table and writes JSON (default bench/results/ingest.json).

    python bench/ingest.py              # 100 clients x 10,000 steps (4M records)
    python bench/ingest.py --quick      # 10 clients x 2,000 steps, a smoke run
    python bench/ingest.py --profile    # also cProfile the controller, print hotspots
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import pstats
import queue
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "reliability"), str(ROOT / "tests")]

import msgspec  # noqa: E402
import zmq  # noqa: E402
from harness import SimClient, drive, peak_rss_mb, start_training  # noqa: E402
from lrpilot.client.protocol import Metrics, encode  # noqa: E402
from lrpilot.monitor.remote import ControllerClient  # noqa: E402
from lrpilot.monitor.store import _INSERT_POINTS, Store  # noqa: E402

TARGET_RATE = 300_000
TARGET_FRACTION = 0.5
TARGET_P99_MS = 50.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- (a) through the controller


def _driver(endpoint: str, names: list[str], steps: int, batch_steps: int, q: Any) -> None:
    clients = [SimClient(endpoint, n, steps, batch_steps=batch_steps) for n in names]
    t0 = time.time()
    drive(clients, timeout=3600, ctx=zmq.Context())
    q.put(
        {
            "start": t0,
            "end_wall": time.time(),
            "sent": sum(c.sent_points for c in clients),
            "acked": sum(c.acked_points for c in clients),
            "done": sum(c.done for c in clients),
            "resent": sum(c.resent for c in clients),
            "run_ids": [c.run_id for c in clients],
        }
    )


class Serve:
    """``lrpilot serve`` as a subprocess, optionally under cProfile."""

    def __init__(self, db: Path, profile: Path | None) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        prefix = [sys.executable]
        if profile is not None:
            prefix += ["-m", "cProfile", "-o", str(profile)]
        self.proc = subprocess.Popen(
            [
                *prefix,
                "-m",
                "lrpilot.monitor.cli",
                "serve",
                "--db",
                str(db),
                "--listen",
                self.endpoint,
                "--http",
                "off",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening" not in line:
            self.proc.kill()
            raise RuntimeError(f"lrpilot serve did not start: {line}")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextlib.contextmanager
def _torch_threads(n: int) -> Any:
    """Start the torch run with ``n`` OpenMP threads (0: torch's default). Its model is tiny;
    torch's default OpenMP threads spin between ops and burn ~0.8 of a core here, CPU the
    controller and its detection process would otherwise have."""
    old = os.environ.get("OMP_NUM_THREADS")
    if n > 0:
        os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


def bench_controller(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    profile = tmp / "controller.prof" if args.profile else None
    db = tmp / "ingest.db"
    serve = Serve(db, profile)
    stop = tmp / "stop"
    trains: list[Any] = []
    latencies: list[float] = []
    to_sent: list[float] = []  # request sent -> command sent to the run
    runs = [f"torch-{i}" for i in range(args.torch_runs)]
    try:
        with _torch_threads(args.torch_threads):
            for run in runs:
                out = tmp / f"train-{run}.json"
                trains.append(
                    start_training(serve.endpoint, out, stop, "--run", run, "--pace", "0.01")
                )
        client = ControllerClient(serve.endpoint, timeout=30)
        deadline = time.monotonic() + 60
        while not all(
            any(r["name"] == run and r["last_step"] > 5 for r in client.request("runs"))
            for run in runs
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the torch runs did not start streaming")
            time.sleep(0.1)
        idle: list[float] = []  # the same command latency with no load, for comparison
        for k in range(10):
            t = time.time()
            reply = client.request("set_lr", run=runs[k % len(runs)], value=0.02 + 0.001 * k,
                                   who="b")  # fmt: skip
            state = client.wait_applied(reply["command_id"], timeout=30)
            idle.append((state["applied_time"] - t) * 1000)
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        names = [f"sim-{i}" for i in range(args.clients)]
        groups = [names[i :: args.procs] for i in range(args.procs)]
        procs = [
            ctx.Process(target=_driver, args=(serve.endpoint, g, args.steps, args.batch_steps, q))
            for g in groups
            if g
        ]
        for p in procs:
            p.start()
        sent: list[tuple[int, float]] = []
        results: list[dict[str, Any]] = []
        k = 0
        while len(results) < len(procs):
            t = time.time()
            run = runs[k % len(runs)]
            reply = client.request("set_lr", run=run, value=0.01 + 0.001 * (k % 10), who="b")
            sent.append((reply["command_id"], t))
            k += 1
            end = time.monotonic() + args.command_every
            while time.monotonic() < end and len(results) < len(procs):
                with contextlib.suppress(queue.Empty):
                    results.append(q.get(timeout=max(end - time.monotonic(), 0.001)))
        for p in procs:
            p.join(60)
        rss = peak_rss_mb(serve.proc.pid)
        time.sleep(0.5)  # let the last command acks land before reading them
        stop.touch()
        for train in trains:
            train.communicate(timeout=60)
        for cid, t in sent:
            state = client.request("command", id=cid)
            if state["status"] == "applied":
                latencies.append((state["applied_time"] - t) * 1000)
                to_sent.append((state["sent"] - t) * 1000)
        status = client.request("status")
    finally:
        stop.touch()
        for train in trains:
            if train.poll() is None:
                train.kill()
        serve.stop()
    start = min(r["start"] for r in results)
    end = max(r["end_wall"] for r in results)
    total = args.clients * args.steps * 4
    with Store(db, readonly=True) as store:
        stored = sum(store.run(rid).points for r in results for rid in r["run_ids"])
    out = {
        "records": total,
        "stored": stored,
        "acked": sum(r["acked"] for r in results),
        "clients_done": sum(r["done"] for r in results),
        "seconds": end - start,
        "records_per_s": total / (end - start),
        "resent_batches": sum(r["resent"] for r in results),
        "commands": len(sent),
        "torch_runs": len(runs),
        "commands_applied": len(latencies),
        "command_ms_p50": statistics.median(latencies) if latencies else None,
        "command_ms_p99": _pct(latencies, 99),
        "idle_command_ms_p50": statistics.median(idle),
        "idle_command_ms_max": max(idle),
        "command_ms_max": max(latencies, default=None),
        "command_to_sent_ms_p50": statistics.median(to_sent) if to_sent else None,
        "command_to_sent_ms_p99": _pct(to_sent, 99),
        "peak_rss_mb": rss,
        "rejected": status["rejected"],
    }
    if profile is not None and profile.exists():
        stats = pstats.Stats(str(profile))
        stats.sort_stats("tottime")
        rows = []
        for (file, line, fn), (_cc, nc, tt, ct, _) in sorted(
            stats.stats.items(),
            key=lambda kv: kv[1][2],
            reverse=True,  # type: ignore[attr-defined]
        )[:20]:
            rows.append(
                {
                    "function": f"{Path(file).name}:{line}:{fn}",
                    "calls": nc,
                    "tottime_s": round(tt, 3),
                    "cumtime_s": round(ct, 3),
                }
            )
        out["profile_top"] = rows
    return out


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


# ---------------------------------------------------------------- (f) detection alone


def bench_detection(batch_steps: int, steps: int = 10_000, repeats: int = 5) -> dict[str, float]:
    """Microseconds per record through one run's RunController, both paths, same batches."""
    from lrpilot.monitor.control import RunController

    batches = []
    for first in range(0, steps, batch_steps):
        ss = range(first, min(first + batch_steps, steps))
        values = [x for s in ss for x in (1.0 / (1.0 + 0.01 * s), 0.5, 1.0 + (s % 5) * 0.1, 0.1)]
        batches.append(([s for s in ss for _ in range(4)], ["loss", "acc", "grad_norm", "lr"],
                        [0, 1, 2, 3] * len(ss), values))  # fmt: skip
    out = {}
    for name in ("observe", "_observe_by_point"):
        best = math.inf
        for _ in range(repeats):  # the best of a few: the machine is shared
            ctl = RunController("advise")
            feed = getattr(ctl, name)
            t0 = time.perf_counter()
            for batch in batches:
                feed(*batch)
            best = min(best, time.perf_counter() - t0)
        out[name] = best / (4 * steps) * 1e6
    return {"series_us_per_record": out["observe"], "point_us_per_record": out["_observe_by_point"]}


# ---------------------------------------------------------------- (b) bare SQLite


def _batches(n_batches: int, batch_steps: int, run_id: str) -> list[Metrics]:
    out = []
    for b in range(n_batches):
        first = b * batch_steps
        steps = [s for s in range(first, first + batch_steps) for _ in range(4)]
        values = [0.5, 0.25, 1.5, 0.1] * batch_steps
        out.append(
            Metrics(
                run_id=run_id,
                seq=b + 1,
                names=["loss", "acc", "grad_norm", "lr"],
                steps=steps,
                keys=[0, 1, 2, 3] * batch_steps,
                values=values,
            )
        )
    return out


def bench_sqlite(records: int, batch_steps: int, tmp: Path) -> dict[str, Any]:
    per_batch = 4 * batch_steps
    n = max(records // per_batch, 1)
    batches = _batches(n, batch_steps, "bench")
    # Through Store, 2000 batches per transaction (the controller's drain limit).
    store = Store(tmp / "store.db")
    store.open_run("bench", "bench")
    t0 = time.perf_counter()
    for i in range(0, n, 2000):
        store.write_batches(batches[i : i + 2000])
    t_store = time.perf_counter() - t0
    store.close()
    # Raw executemany into the same table (schema made by Store), same pragmas.
    Store(tmp / "raw.db").close()
    con = sqlite3.connect(tmp / "raw.db")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    rows = [
        (1 + k, s, v) for b in batches for s, k, v in zip(b.steps, b.keys, b.values, strict=True)
    ]
    t0 = time.perf_counter()
    for i in range(0, len(rows), 2000 * per_batch):
        with con:
            con.executemany(
                "INSERT INTO points (series, step, value) VALUES (?,?,?)",
                rows[i : i + 2000 * per_batch],
            )
    t_raw = time.perf_counter() - t0
    con.close()
    return {
        "records": n * per_batch,
        "store_write_batches_per_s": n * per_batch / t_store,
        "raw_executemany_per_s": len(rows) / t_raw,
    }


def bench_sqlite_as_served(records: int, clients: int, batch_steps: int, tmp: Path) -> float:
    """Raw executemany of the rows the controller writes, as it writes them under load:
    ``clients`` runs' batches interleaved in arrival order, one executemany per
    ``_COMMIT_POINTS`` points, one transaction per ``_TXN_POINTS``, the Store's pragmas. 400
    series' pages change in every commit instead of 4; bare SQLite is much slower at that
    than at one run's rows in 160,000-row transactions."""
    from lrpilot.monitor.server import _COMMIT_POINTS, _TXN_POINTS

    store = Store(tmp / "served.db")  # its pragmas (WAL, cache, checkpoint) on its connection
    con = store._conn
    per_batch = 4 * batch_steps
    batches = []
    for first in range(0, max(records // (clients * per_batch), 1) * batch_steps, batch_steps):
        for r in range(clients):
            batches.append([(4 * r + k + 1, s, 0.5 + 1e-6 * s) for s in
                            range(first, first + batch_steps) for k in range(4)])  # fmt: skip
    per_write = max(_COMMIT_POINTS // per_batch, 1)
    per_commit = max(_TXN_POINTS // (per_write * per_batch), 1)  # writes per transaction
    writes = [
        [row for b in batches[i : i + per_write] for row in b]
        for i in range(0, len(batches), per_write)
    ]
    t0 = time.perf_counter()
    for i in range(0, len(writes), per_commit):
        with con:
            for rows in writes[i : i + per_commit]:
                con.executemany(_INSERT_POINTS, rows)
    seconds = time.perf_counter() - t0
    store.close()
    return sum(map(len, writes)) / seconds


# ---------------------------------------------------------------- (c) raw pyzmq


def _zmq_sender(endpoint: str, frames: list[bytes], n: int) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.SNDHWM, 0)
    s.connect(endpoint)
    for _ in range(n):
        s.send_multipart(frames)
    s.send_multipart([b"END"])
    s.close(linger=-1)
    ctx.term()


def bench_pyzmq(records: int, batch_steps: int) -> dict[str, Any]:
    per_batch = 4 * batch_steps
    n = max(records // per_batch, 1)
    frames = encode(_batches(1, batch_steps, "bench")[0])
    ctx = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    r.setsockopt(zmq.RCVHWM, 0)
    port = r.bind_to_random_port("tcp://127.0.0.1")
    proc = mp.get_context("spawn").Process(
        target=_zmq_sender, args=(f"tcp://127.0.0.1:{port}", frames, n)
    )
    proc.start()
    decoder = msgspec.msgpack.Decoder()
    got = 0
    t0 = 0.0
    while True:
        msg = r.recv_multipart()
        if got == 0:
            t0 = time.perf_counter()
        if msg[1] == b"END":
            break
        got += len(decoder.decode(msg[2])["steps"])
    dt = time.perf_counter() - t0
    proc.join(30)
    r.close(0)
    ctx.term()
    return {"records": got, "records_per_s": got / dt}


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--batch-steps", type=int, default=20, help="steps per batch (Monitor's)")
    ap.add_argument("--procs", type=int, default=2, help="processes driving the clients")
    ap.add_argument("--command-every", type=float, default=0.2, help="seconds between set_lr")
    ap.add_argument(
        "--torch-threads", type=int, default=1, help="OpenMP threads of each torch run (0: default)"
    )
    ap.add_argument(
        "--torch-runs", type=int, default=2, help="real torch runs that receive the LR commands"
    )
    ap.add_argument("--quick", action="store_true", help="10 clients x 2,000 steps")
    ap.add_argument("--profile", action="store_true", help="cProfile the controller")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ingest.json"))
    args = ap.parse_args()
    if args.quick:
        args.clients, args.steps = 10, 2_000
    with tempfile.TemporaryDirectory(prefix="lrpilot-ingest-") as d:
        tmp = Path(d)
        ctl = bench_controller(args, tmp)
        sql = bench_sqlite(min(ctl["records"], 2_000_000), args.batch_steps, tmp)
        sql["raw_as_served_per_s"] = bench_sqlite_as_served(
            min(ctl["records"], 2_000_000), args.clients, args.batch_steps, tmp
        )
        raw = bench_pyzmq(min(ctl["records"], 4_000_000), args.batch_steps)
        det = bench_detection(args.batch_steps)
    fraction = ctl["records_per_s"] / sql["raw_executemany_per_s"]
    fraction_served = ctl["records_per_s"] / sql["raw_as_served_per_s"]
    p99 = ctl["command_ms_p99"]
    rows = [
        (
            "controller, storage + detection",
            f"{ctl['records_per_s']:,.0f} rec/s",
            f">= {TARGET_RATE:,}",
            ctl["records_per_s"] >= TARGET_RATE,
        ),
        ("bare SQLite, raw executemany", f"{sql['raw_executemany_per_s']:,.0f} rec/s", "", None),
        (
            "  same, rows as the controller commits",
            f"{sql['raw_as_served_per_s']:,.0f} rec/s",
            "",
            None,
        ),
        (
            "bare SQLite, Store.write_batches",
            f"{sql['store_write_batches_per_s']:,.0f} rec/s",
            "",
            None,
        ),
        (
            "controller / raw SQLite",
            f"{fraction:.0%}",
            f">= {TARGET_FRACTION:.0%}",
            fraction >= TARGET_FRACTION,
        ),
        ("  of raw SQLite as the controller commits", f"{fraction_served:.0%}", "", None),
        ("raw pyzmq + msgpack receive", f"{raw['records_per_s']:,.0f} rec/s", "", None),
        (
            "command latency p50 / p99 / max",
            f"{ctl['command_ms_p50'] or 0:.1f} / {p99 or 0:.1f} / {ctl['command_ms_max'] or 0:.1f}"
            f" ms ({ctl['commands_applied']}/{ctl['commands']}, {ctl['torch_runs']} torch runs)",
            f"p99 < {TARGET_P99_MS:g} ms",
            p99 is not None and p99 < TARGET_P99_MS,
        ),
        (
            "  of which request -> sent: p50/p99",
            f"{ctl['command_to_sent_ms_p50'] or 0:.1f} / "
            f"{ctl['command_to_sent_ms_p99'] or 0:.1f} ms",
            "",
            None,
        ),
        (
            "same, no load: p50 / max",
            f"{ctl['idle_command_ms_p50']:.1f} / {ctl['idle_command_ms_max']:.1f} ms",
            "",
            None,
        ),
        ("controller peak RSS", f"{ctl['peak_rss_mb']:.0f} MiB", "", None),
        (
            "detection alone: series / point path",
            f"{det['series_us_per_record']:.2f} / {det['point_us_per_record']:.2f} us/rec",
            "",
            None,
        ),
        (
            "stored / sent",
            f"{ctl['stored']:,} / {ctl['records']:,}",
            "equal",
            ctl["stored"] == ctl["records"],
        ),
    ]
    print(
        f"\nlrpilot ingest: {args.clients} clients x {args.steps} steps x 4 scalars, "
        f"batches of {args.batch_steps} steps, {platform.node()} ({os.cpu_count()} CPUs)\n"
    )
    for name, value, target, ok in rows:
        mark = "" if ok is None else ("  ok" if ok else "  MISSED")
        print(f"  {name:<34} {value:>34}  {target:<14}{mark}")
    if "profile_top" in ctl:
        print("\ncontroller hotspots (tottime):")
        for r in ctl["profile_top"][:15]:
            print(f"  {r['tottime_s']:>8.2f} s  {r['calls']:>10}  {r['function']}")
    result = {
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "controller": ctl,
        "sqlite": sql,
        "pyzmq": raw,
        "detection": det,
        "targets": {
            "records_per_s": TARGET_RATE,
            "fraction_of_sqlite": TARGET_FRACTION,
            "command_p99_ms": TARGET_P99_MS,
        },
        "fraction_of_sqlite": fraction,
        "fraction_of_sqlite_as_served": fraction_served,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
