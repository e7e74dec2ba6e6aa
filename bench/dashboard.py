"""Dashboard server time and payload: first load of a 1M-point run, a zoom, a live tick.

Generates a real SQLite file with the real store, serves the real app with Waitress on a
free loopback port, and calls the real callbacks over HTTP exactly as the browser does
(``POST /_dash-update-component``). Times are wall-clock round trips measured by the client
(so they include HTTP and JSON, and are an upper bound on server time); bytes are response
bodies.

    python bench/dashboard.py            # prints a table, writes bench/results/dashboard.json
    python bench/dashboard.py --points 200000 --live 5   # smaller, faster

Targets (issue 5): (a) first load < 1 s and < 500 KB, (b) zoom < 300 ms, (c) tick < 50 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from lrpilot.client.protocol import Metrics
from lrpilot.dashboard import create_app, ids, serve_dashboard
from lrpilot.monitor.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from dash_http import DashHTTP

RESULTS = Path(__file__).with_name("results") / "dashboard.json"


def write_run(store: Store, run_id: str, n: int, start: int, seq: int, every: int = 10) -> int:
    """Append steps ``start..start+n`` of loss (every step), grad_norm and acc (every
    ``every``), and the LR at the first step; returns the new batch seq."""
    rng = np.random.default_rng(abs(hash(run_id)) % 2**32)
    names = ["loss", "lr", "grad_norm", "acc"]
    chunk = 100_000
    for lo in range(start, start + n, chunk):
        hi = min(start + n, lo + chunk)
        steps = np.arange(lo, hi)
        loss = 2 * np.exp(-steps / 3e5) + 0.2 + 0.1 * rng.standard_normal(len(steps))
        sub = steps[steps % every == 0]
        all_steps = np.concatenate([steps, sub, sub])
        keys = np.concatenate([np.zeros(len(steps)), np.full(len(sub), 2), np.full(len(sub), 3)])
        vals = np.concatenate([loss, np.abs(1 + 0.2 * rng.standard_normal(len(sub))),
                               np.clip(1 - loss[sub - lo] / 3, 0, 1)])  # fmt: skip
        st, ks, vs = all_steps.tolist(), keys.astype(int).tolist(), vals.tolist()
        if lo == 0:
            st.append(0), ks.append(1), vs.append(1e-3)
        seq += 1
        store.write_batches([Metrics(run_id=run_id, seq=seq, names=names, steps=st, keys=ks,
                                     values=vs)])  # fmt: skip
    return seq


def build_body(client: DashHTTP, run_ids: list[str]) -> tuple:
    output = client.output_of(f"{ids.CHARTS}.children")
    inputs = [DashHTTP.entry(ids.RUN_LIST, "value", run_ids),
              DashHTTP.entry(ids.SMOOTHING, "value", 0.9),
              DashHTTP.entry(ids.LOSS_LOG, "value", "linear"),
              DashHTTP.entry(ids.REBUILD, "data", 0)]  # fmt: skip
    outputs = [{"id": ids.CHARTS, "property": "children"},
               {"id": ids.SIGNATURE, "property": "data"}]  # fmt: skip
    return output, outputs, inputs, [], [f"{ids.RUN_LIST}.value"]


def panels_of(response: dict) -> tuple[list[dict], str]:
    """The cursors of the built panels (in page order) and the signature."""
    children = response["response"][ids.CHARTS]["children"]
    cursors = [c["props"]["children"][1]["props"]["data"] for c in children]
    return cursors, response["response"][ids.SIGNATURE]["data"]


def zoom_call(client: DashHTTP, cursor: dict, lo: float, hi: float) -> tuple:
    output = next(d["output"] for d in client.deps
                  if any(i["property"] == "relayoutData" for i in d["inputs"]))  # fmt: skip
    key = cursor["panel"]
    outputs = [{"id": ids.chart_id(key), "property": "figure"},
               {"id": ids.cursor_id(key), "property": "data"}]  # fmt: skip
    inputs = [DashHTTP.entry(ids.chart_id(key), "relayoutData",
                             {"xaxis.range[0]": lo, "xaxis.range[1]": hi})]  # fmt: skip
    state = [DashHTTP.entry(ids.cursor_id(key), "data", cursor),
             DashHTTP.entry(ids.SMOOTHING, "value", 0.9),
             DashHTTP.entry(ids.LOSS_LOG, "value", "linear")]  # fmt: skip
    changed = [json.dumps(ids.chart_id(key), sort_keys=True, separators=(",", ":"))
               + ".relayoutData"]  # fmt: skip
    return client.call(output, outputs, inputs, state, changed)


def tick_call(client: DashHTTP, run_ids: list[str], cursors: list[dict], sig: str, n: int):
    output = client.output_of(f"{ids.REBUILD}.data")
    keys = [c["panel"] for c in cursors]
    outputs = [[{"id": ids.chart_id(k), "property": "figure"} for k in keys],
               [{"id": ids.cursor_id(k), "property": "data"} for k in keys],
               {"id": ids.REBUILD, "property": "data"}]  # fmt: skip
    inputs = [DashHTTP.entry(ids.TICK, "n_intervals", n)]
    state = [DashHTTP.entry(ids.RUN_LIST, "value", run_ids),
             DashHTTP.entry(ids.SMOOTHING, "value", 0.9),
             DashHTTP.entry(ids.LOSS_LOG, "value", "linear"),
             DashHTTP.entry(ids.SIGNATURE, "data", sig),
             [DashHTTP.entry(ids.cursor_id(c["panel"]), "data", c) for c in cursors],
             DashHTTP.entry(ids.REBUILD, "data", 0)]  # fmt: skip
    return client.call(output, outputs, inputs, state, [f"{ids.TICK}.n_intervals"])


def apply_cursor_updates(cursors: list[dict], data: dict) -> list[dict]:
    """What the browser does with the tick's cursor outputs."""
    out = list(cursors)
    for i, k in enumerate(c["panel"] for c in cursors):
        key = json.dumps(ids.cursor_id(k), sort_keys=True, separators=(",", ":"))
        update = data.get("response", {}).get(key, {}).get("data")
        if update is not None:
            out[i] = update
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1_000_000, help="loss points of the big run")
    ap.add_argument("--live", type=int, default=20, help="live runs for the tick")
    ap.add_argument("--live-points", type=int, default=20_000, help="steps per live run")
    ap.add_argument("--steps-per-tick", type=int, default=50, help="new steps per run per tick")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        writer = Store(db)
        t0 = time.perf_counter()
        writer.open_run("big", "big-run", lrs=[1e-3])
        write_run(writer, "big", args.points, 0, 0)
        live_ids = [f"live{i:02d}" for i in range(args.live)]
        seqs = {}
        for rid in live_ids:
            writer.open_run(rid, rid, lrs=[1e-3])
            seqs[rid] = write_run(writer, rid, args.live_points, 0, 0)
        print(f"generated {db.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)  # fmt: skip

        rows: list[dict[str, Any]] = []
        server = serve_dashboard(create_app(Store(db, readonly=True), None), "127.0.0.1", 0)
        try:
            client = DashHTTP(server.url)
            # (a) first load: cold cache, the full page of charts for the 1M-point run
            status, data, nbytes, dt = client.call(*build_body(client, ["big"]))
            assert status == 200, status
            cursors, _ = panels_of(data)
            rows.append({"case": f"(a) first load, {args.points:,}-point run", "seconds": dt,
                         "bytes": nbytes, "target_s": 1.0, "target_bytes": 500_000})  # fmt: skip
            # (b) zoom into 1% of the loss chart (data now cached, as after a first load)
            loss = next(c for c in cursors if c["panel"] == "loss")
            times, sizes = [], []
            for k in range(args.repeat):
                lo = args.points * (0.1 + 0.1 * k)
                status, _, nbytes, dt = zoom_call(client, loss, lo, lo + args.points / 100)
                assert status == 200, status
                times.append(dt)
                sizes.append(nbytes)
            rows.append({"case": "(b) zoom into 1% (median)", "seconds": statistics.median(times),
                         "bytes": int(statistics.median(sizes)), "target_s": 0.3})  # fmt: skip
            # (c) live tick with N live runs selected, each having sent new steps
            status, data, _, _ = client.call(*build_body(client, live_ids))
            cursors, sig = panels_of(data)
            times, sizes = [], []
            step = args.live_points
            for k in range(args.repeat):
                for rid in live_ids:
                    seqs[rid] = write_run(writer, rid, args.steps_per_tick, step, seqs[rid])
                step += args.steps_per_tick
                status, data, nbytes, dt = tick_call(client, live_ids, cursors, sig, k + 1)
                assert status == 200, status
                cursors = apply_cursor_updates(cursors, data)
                times.append(dt)
                sizes.append(nbytes)
            rows.append({"case": f"(c) live tick, {args.live} live runs (median)",
                         "seconds": statistics.median(times),
                         "bytes": int(statistics.median(sizes)), "target_s": 0.05})  # fmt: skip
        finally:
            server.stop()
            writer.close()

    print(f"{'case':<42} {'server ms':>10} {'KB':>8}  target")
    for r in rows:
        ok = r["seconds"] <= r["target_s"] and r["bytes"] <= r.get("target_bytes", float("inf"))
        r["met"] = ok
        target = f"< {r['target_s'] * 1000:.0f} ms" + (
            f", < {r['target_bytes'] / 1000:.0f} KB" if "target_bytes" in r else ""
        )
        print(f"{r['case']:<42} {r['seconds'] * 1000:>10.1f} {r['bytes'] / 1000:>8.1f}  "
              f"{target} {'met' if ok else 'MISSED'}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                    "results": rows}, indent=2))  # fmt: skip
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
