"""What the lrpilot client costs a training loop, beside TensorBoard, W&B, MLflow and Aim.

One process, one run, side by side (issue 6):

1. Per-call cost of reporting 4 scalars per step (mean, p50, p99 in microseconds over
   ``--calls`` calls after ``--warmup``), with Python floats and with 0-dim tensors:
   ``Monitor.step`` with the controller up (a real ``lrpilot serve`` subprocess on a free
   loopback port, temporary database) and down (nothing listening), then each peer.
   A peer that cannot be imported or started is listed with the reason, not dropped.
2. The client's overhead on a real training step of a ~10M-parameter MLP on CPU (batch 64,
   SGD with momentum), as a percentage of the step: Monitor only, default statistics,
   every-step global norm, every-step global + per-layer norms, everything every step.
   Variants run in interleaved blocks; the cost is reported two ways: measured directly
   (time inside ``Monitor.step``, ``after_step``, ``drain`` and the optimizer pre-hook) and
   end to end (step time minus the baseline step time, noisier on a shared machine).
3. The cost of ``cos_grad_update`` every optimizer step (what ``control="auto"`` sends) on
   the digits MLP (64-128-128-10) and the 10M-parameter MLP, with SGD momentum and Adam:
   the collector with only the cosine on, sampled (the default ``cos_sample=8``) and exact
   (``cos_sample=1``), beside the every-step global grad norm, as a fraction of the step
   without statistics measured in the same interleaved blocks.
4. Peak RSS of a client process over ``--mem-steps`` steps with the controller down.

Prints a table and writes JSON (default bench/results/overhead.json).

    python bench/overhead.py            # full run, about 5 minutes on 2 CPU cores
    python bench/overhead.py --quick    # a smoke run in well under a minute

Peers are a benchmark extra, never a dependency of lrpilot:
``pip install tensorboard wandb mlflow aim``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lrpilot.client.monitor import Monitor
from lrpilot.client.stats import StatsCollector, StatsConfig
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results" / "overhead.json"
NAMES = ("loss", "acc", "tokens", "aux")  # the 4 scalars reported per step
Call = Callable[[int], Any]

# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def controller(tmp: Path) -> Iterator[str]:
    """A real controller: ``lrpilot serve`` in a subprocess on a free loopback port."""
    cmd = [sys.executable, "-m", "lrpilot.monitor.cli", "serve", "--db", str(tmp / "bench.db"),
           "--listen", "tcp://127.0.0.1:*"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "lrpilot controller listening on tcp://..., storing"
        match = re.search(r"listening on (tcp://[0-9.]+:\d+)", line)
        if match is None:
            raise RuntimeError(f"lrpilot serve did not start: {line!r}")
        yield match.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def time_calls(fn: Call, calls: int, warmup: int) -> dict[str, float]:
    """Time ``fn(i)`` call by call; microseconds."""
    for i in range(warmup):
        fn(i)
    samples = np.empty(calls, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(calls):
        t0 = clock()
        fn(warmup + i)
        samples[i] = clock() - t0
    return _summary(samples)


def time_interleaved(
    fns: dict[str, Call], calls: int, warmup: int, chunk: int = 1000
) -> dict[str, dict[str, float]]:
    """Like :func:`time_calls` for several callables, alternating chunks of calls so that
    drift in the machine's load falls on all of them alike."""
    for fn in fns.values():
        for i in range(warmup):
            fn(i)
    samples = {name: np.empty(calls, dtype=np.int64) for name in fns}
    clock = time.perf_counter_ns
    for start in range(0, calls, chunk):
        for name, fn in fns.items():
            out = samples[name]
            for i in range(start, min(start + chunk, calls)):
                t0 = clock()
                fn(warmup + i)
                out[i] = clock() - t0
    return {name: _summary(s) for name, s in samples.items()}


def _summary(samples_ns: np.ndarray) -> dict[str, float]:
    us = samples_ns / 1000.0
    return {
        "mean_us": float(us.mean()),
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "max_us": float(us.max()),
    }


def values(kind: str) -> tuple[Any, ...]:
    if kind == "float":
        return (0.5, 0.9, 4096.0, 0.01)
    return tuple(torch.tensor(v) for v in (0.5, 0.9, 4096.0, 0.01))


# ----------------------------------------------------------------------------- peers
# Each setup returns (call, close); the call reports the 4 scalars of step i.


def setup_lrpilot(endpoint: str, kind: str, tmp: Path) -> tuple[Call, Callable[[], Any]]:
    mon = Monitor(run=f"bench-{kind}", endpoint=endpoint, control="off", close_timeout=2.0)
    a, b, c, d = values(kind)
    step = mon.step

    def call(i: int) -> None:
        step(loss=a, acc=b, tokens=c, aux=d)

    def close() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "points not confirmed" when the controller is down
            return mon.close()

    return call, close


def setup_deque(kind: str, tmp: Path) -> tuple[Call, Callable[[], Any]]:
    q: deque[tuple[int, tuple[Any, ...]]] = deque(maxlen=100_000)
    vals = values(kind)

    def call(i: int) -> None:
        q.append((i, vals))

    return call, lambda: None


def setup_tensorboard(kind: str, tmp: Path) -> tuple[Call, Callable[[], Any]]:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp / f"tb-{kind}"))
    pairs = list(zip(NAMES, values(kind), strict=True))
    add = writer.add_scalar

    def call(i: int) -> None:
        for name, v in pairs:
            add(name, v, i)

    return call, writer.close


def setup_wandb(kind: str, tmp: Path) -> tuple[Call, Callable[[], Any]]:
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    run = wandb.init(mode="offline", dir=str(tmp), project="lrpilot-bench", name=f"b-{kind}")
    row = dict(zip(NAMES, values(kind), strict=True))
    log = run.log

    def call(i: int) -> None:
        log(row, step=i)

    return call, run.finish


def setup_mlflow(kind: str, tmp: Path) -> tuple[Call, Callable[[], Any]]:
    # mlflow 3 keeps the file store behind a flag ("maintenance mode"); the issue asks for it.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    import mlflow

    mlflow.set_tracking_uri((tmp / "mlruns").as_uri())  # the local file store
    run = mlflow.start_run(run_name=f"b-{kind}")
    row = dict(zip(NAMES, values(kind), strict=True))
    log = mlflow.log_metrics
    try:
        log(row, step=0)
    except Exception:  # mlflow wants numbers: a user converts tensors with float()
        vals = values(kind)

        def call(i: int) -> None:
            log({n: float(v) for n, v in zip(NAMES, vals, strict=True)}, step=i)

        call.note = "tensors converted with float() by the caller"  # type: ignore[attr-defined]
    else:

        def call(i: int) -> None:
            log(row, step=i)

    del run
    return call, mlflow.end_run


def setup_aim(kind: str, tmp: Path) -> tuple[Call, Callable[[], Any]]:
    from aim import Run

    run = Run(repo=str(tmp / "aim"), experiment=f"b-{kind}", system_tracking_interval=None)
    pairs = list(zip(NAMES, values(kind), strict=True))
    track = run.track
    try:
        track(pairs[0][1], name="probe", step=0)
    except Exception:  # Aim wants numbers: a user converts tensors with float()

        def call(i: int) -> None:
            for name, v in pairs:
                track(float(v), name=name, step=i)

        call.note = "tensors converted with float() by the caller"  # type: ignore[attr-defined]
    else:

        def call(i: int) -> None:
            for name, v in pairs:
                track(v, name=name, step=i)

    return call, run.close


PEERS: dict[str, Callable[[str, Path], tuple[Call, Callable[[], Any]]]] = {
    "TensorBoard SummaryWriter.add_scalar x4": setup_tensorboard,
    "wandb.log (offline)": setup_wandb,
    "mlflow.log_metrics (file store)": setup_mlflow,
    "Aim Run.track x4": setup_aim,
}


def per_call(args: argparse.Namespace, tmp: Path, endpoint: str) -> list[dict[str, Any]]:
    down = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    rows: list[dict[str, Any]] = []
    for kind in ("float", "tensor"):
        # The floor and lrpilot up/down alternate in chunks (their comparison is the target);
        # the peers, 100x slower, run one after the other.
        ours = {
            "deque.append (floor)": setup_deque(kind, tmp),
            "lrpilot Monitor.step (controller up)": setup_lrpilot(endpoint, kind, tmp),
            "lrpilot Monitor.step (controller down)": setup_lrpilot(down, kind, tmp),
        }
        gc.collect()
        timings = time_interleaved({n: c for n, (c, _) in ours.items()}, args.calls, args.warmup)
        for name, (_, close) in ours.items():
            row: dict[str, Any] = {"logger": name, "values": kind, **timings[name], "status": "ok"}
            report = close()
            if report is not None:
                row["acked_points"] = report.acked_points
                row["dropped_points"] = report.dropped_points
            rows.append(row)
            print(f"  {_fmt_row(row)}", flush=True)
        if args.no_peers:
            continue
        for name, setup in PEERS.items():
            row = {"logger": name, "values": kind}
            try:
                call, close = setup(kind, tmp)
            except ImportError as exc:
                row["status"] = f"not installed ({exc.name or exc})"
            except Exception as exc:
                row["status"] = f"failed to start: {type(exc).__name__}: {exc}"[:200]
            else:
                try:
                    gc.collect()
                    row.update(time_calls(call, args.calls, args.warmup))
                    row["status"] = "ok"
                    if getattr(call, "note", ""):
                        row["note"] = call.note  # type: ignore[attr-defined]
                except Exception as exc:
                    row["status"] = f"failed: {type(exc).__name__}: {exc}"[:200]
                finally:
                    with contextlib.suppress(Exception):
                        close()
            rows.append(row)
            print(f"  {_fmt_row(row)}", flush=True)
    return rows


# ----------------------------------------------------------------------------- training step


def mlp(width: int = 2048, inputs: int = 1024, classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Linear(inputs, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, classes),
    )  # fmt: skip


NO_EXTRAS = {"layers": False, "param_norms": False, "nonfinite": False, "cos_grad_update": False}
VARIANTS: dict[str, StatsConfig | None] = {
    "baseline (no client)": None,
    "Monitor.step(loss) only": StatsConfig.off(),
    "default stats": StatsConfig(),
    "global grad norm every step": StatsConfig(grad_norm_every=1, **NO_EXTRAS),
    "global + per-layer norms every step": StatsConfig(
        grad_norm_every=1, layers_every=1, **{**NO_EXTRAS, "layers": True}
    ),
    "everything every step": StatsConfig(grad_norm_every=1, layers_every=1, update_ratio=True),
}


def training(args: argparse.Namespace, endpoint: str) -> dict[str, Any]:
    torch.manual_seed(0)
    model = mlp()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.randn(64, 1024), torch.randint(0, 10, (64,))
    loss_fn = nn.functional.cross_entropy
    block = args.block
    step_times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    client_times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    steps_done = dict.fromkeys(VARIANTS, 0)
    clock = time.perf_counter
    hook_t = [0.0, 0.0]  # start of the collector's pre-hook, time spent in it

    def hook_start(*_: Any) -> None:
        hook_t[0] = clock()

    def hook_end(*_: Any) -> None:
        hook_t[1] += clock() - hook_t[0]

    for _ in range(3):  # warm-up: allocator, threads, first-touch of the momentum buffers
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    monitors = {
        v: Monitor(run=f"mlp-{i}", endpoint=endpoint, control="off", close_timeout=2.0)
        for i, v in enumerate(VARIANTS) if VARIANTS[v] is not None
    }  # fmt: skip
    for _ in range(args.rounds):
        for variant, cfg in VARIANTS.items():
            mon = monitors.get(variant)
            h1 = opt.register_step_pre_hook(hook_start)
            stats = StatsCollector(model, opt, cfg) if cfg is not None else None
            h2 = opt.register_step_pre_hook(hook_end)
            # Blocks start one step after a multiple of 10, so the collector's first step in
            # a block (which has no previous step to compare with) is never a sampled one.
            first = steps_done[variant] + 1
            for step in range(first, first + block):
                hook_t[1] = 0.0
                t0 = clock()
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
                t1 = clock()
                if stats is not None:
                    stats.after_step(step)
                    if step % 20 == 0:
                        stats.drain()  # the Monitor's flush takes these (copy: CPU no-op)
                if mon is not None:
                    mon.step(loss=loss)
                t2 = clock()
                step_times[variant].append(t2 - t0)
                client_times[variant].append(t2 - t1 + hook_t[1])
            steps_done[variant] = first + block - 1
            if stats is not None:
                stats.drain()
                stats.close()
            h1.remove()
            h2.remove()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mon in monitors.values():
            mon.close()
    base = float(np.mean(step_times["baseline (no client)"]))
    base_median = float(np.median(step_times["baseline (no client)"]))
    rows = []
    for variant in VARIANTS:
        st = np.asarray(step_times[variant])
        ct = np.asarray(client_times[variant]) if variant != "baseline (no client)" else None
        rows.append({
            "variant": variant,
            "steps": len(st),
            "step_ms_mean": float(st.mean() * 1e3),
            "step_ms_median": float(np.median(st) * 1e3),
            "client_us_per_step": float(ct.mean() * 1e6) if ct is not None else 0.0,
            "client_pct_direct": float(ct.mean() / base * 100) if ct is not None else 0.0,
            "overhead_pct_end_to_end": float((np.median(st) / base_median - 1) * 100),
        })  # fmt: skip
    return {
        "model": f"MLP 1024-2048-2048-2048-10, {n_params / 1e6:.1f}M parameters, fp32, CPU",
        "optimizer": "SGD(lr=1e-3, momentum=0.9)",
        "batch": 64,
        "torch_threads": torch.get_num_threads(),
        "baseline_step_ms": base * 1e3,
        "default_config": {k: getattr(StatsConfig(), k) for k in StatsConfig.__dataclass_fields__},
        "rows": rows,
    }


# ----------------------------------------------------------------------------- cosine

COS_ONLY = StatsConfig(grad_norm=False, layers=False, param_norms=False, nonfinite=False,
                       amp=False, cos_every=1)  # fmt: skip
COS_VARIANTS: dict[str, StatsConfig | None] = {
    "no statistics": None,
    "cosine every step (cos_sample=8, default)": COS_ONLY,
    "cosine every step, exact (cos_sample=1)": replace(COS_ONLY, cos_sample=1),
    "global grad norm every step": StatsConfig(grad_norm_every=1, **NO_EXTRAS),
}
COS_MODELS: dict[str, tuple[Callable[[], nn.Module], int, int]] = {
    # name: (model factory, input width, steps per block)
    "digits MLP 64-128-128-10": (
        lambda: nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
        ),
        64,
        400,
    ),
    "MLP 1024-2048x3-10 (10.5M)": (mlp, 1024, 25),
}


def cosine_cost(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per-step client time of the cosine (its optimizer hooks, after_step and drain) as a
    share of the step without statistics, from interleaved blocks of each variant."""
    rows = []
    for model_name, (factory, inputs, block) in COS_MODELS.items():
        for opt_name in ("SGD momentum", "Adam"):
            torch.manual_seed(0)
            model = factory()
            if opt_name == "Adam":
                opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
            else:
                opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            x, y = torch.randn(64, inputs), torch.randint(0, 10, (64,))
            n_block = max(block // (10 if args.quick else 1), 2)
            step_t, client_t = _cosine_case(model, opt, x, y, n_block, args.rounds)
            base = float(np.median(step_t["no statistics"]))
            for variant in COS_VARIANTS:
                st, ct = np.asarray(step_t[variant]), np.asarray(client_t[variant])
                client = float(np.median(ct)) if variant != "no statistics" else 0.0
                r = {
                    "model": model_name, "optimizer": opt_name, "variant": variant,
                    "params": sum(p.numel() for p in model.parameters()), "steps": len(st),
                    "step_ms_median": float(np.median(st) * 1e3),
                    "client_us_per_step": client * 1e6,
                    "client_pct_of_step": client / base * 100,
                    "overhead_pct_end_to_end": float((np.median(st) / base - 1) * 100),
                }  # fmt: skip
                rows.append(r)
                print(
                    f"  {model_name:<27} {opt_name:<12} {variant:<42} step "
                    f"{r['step_ms_median']:7.2f} ms  client {r['client_us_per_step']:7.0f} us"
                    f" = {r['client_pct_of_step']:5.2f}%  end-to-end "
                    f"{r['overhead_pct_end_to_end']:+6.2f}%",
                    flush=True,
                )
    return rows


def _cosine_case(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
    block: int, rounds: int,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:  # fmt: skip
    clock = time.perf_counter
    hook = [0.0, 0.0]  # start of the collector's hook, time spent in its hooks this step

    def start(*_: Any) -> None:
        hook[0] = clock()

    def stop(*_: Any) -> None:
        hook[1] += clock() - hook[0]

    def one_step() -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(5):
        one_step()
    done = dict.fromkeys(COS_VARIANTS, 0)
    step_t: dict[str, list[float]] = {v: [] for v in COS_VARIANTS}
    client_t: dict[str, list[float]] = {v: [] for v in COS_VARIANTS}
    for _ in range(rounds):
        for variant, cfg in COS_VARIANTS.items():
            hooks = [opt.register_step_pre_hook(start), opt.register_step_post_hook(start)]
            stats = StatsCollector(model, opt, cfg) if cfg is not None else None
            hooks += [opt.register_step_pre_hook(stop), opt.register_step_post_hook(stop)]
            for i in range(block):
                step = done[variant] + i
                hook[1] = 0.0
                t0 = clock()
                one_step()
                t1 = clock()
                if stats is not None:
                    stats.after_step(step)
                    if step % 20 == 19:
                        stats.drain()  # the Monitor's flush takes these (copy: CPU no-op)
                t2 = clock()
                if i:  # a block's first step has no previous update to compare with
                    step_t[variant].append(t2 - t0)
                    client_t[variant].append(t2 - t1 + hook[1])
            done[variant] += block
            if stats is not None:
                stats.drain()
                stats.close()
            for h in hooks:
                h.remove()
    return step_t, client_t


# ----------------------------------------------------------------------------- memory


def _hwm() -> int:
    """Peak RSS in bytes: VmHWM of this process image. (``ru_maxrss`` is no good here: Linux
    carries the parent's high-water mark across fork and exec.)"""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: best effort


def memory_child(steps: int, endpoint: str) -> None:
    """Run in a fresh process: Monitor.step with 4 floats, controller down; print JSON."""
    import psutil

    proc = psutil.Process()
    peak_at_start = _hwm()
    mon = Monitor(run="bench-memory", endpoint=endpoint, control="off", close_timeout=0.5)
    a, b, c, d = values("float")
    samples = []
    every = max(steps // 20, 1)
    start_rss = proc.memory_info().rss
    t0 = time.perf_counter()
    for i in range(steps):
        mon.step(loss=a, acc=b, tokens=c, aux=d)
        if i % every == 0:
            samples.append((i, proc.memory_info().rss))
    elapsed = time.perf_counter() - t0
    samples.append((steps, proc.memory_info().rss))
    dropped = mon.dropped
    peak = _hwm()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mon.close()
    peak_close = _hwm()
    print(json.dumps({
        "steps": steps, "elapsed_s": elapsed, "rss_start_mb": start_rss / 2**20,
        "rss_samples_mb": [(i, r / 2**20) for i, r in samples],
        "peak_rss_at_start_mb": peak_at_start / 2**20, "peak_rss_mb": peak / 2**20,
        "peak_rss_after_close_mb": peak_close / 2**20, "dropped_points": dropped,
    }))  # fmt: skip


def memory(args: argparse.Namespace) -> dict[str, Any]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(args.mem_steps), "--endpoint", endpoint],
        capture_output=True, text=True, timeout=900, check=True,
    )  # fmt: skip
    res = json.loads(out.stdout.strip().splitlines()[-1])
    rss = [r for _, r in res["rss_samples_mb"]]
    half = len(rss) // 2
    res["growth_second_half_mb"] = max(rss[half:]) - rss[half]
    return res


# ----------------------------------------------------------------------------- report


def _fmt_row(row: dict[str, Any]) -> str:
    label = f"{row['logger']} [{row['values']}]"
    if row.get("status") != "ok":
        return f"{label:<58} {row.get('status')}"
    note = f"  ({row['note']})" if row.get("note") else ""
    return (
        f"{label:<58} mean {row['mean_us']:>9.2f}  p50 {row['p50_us']:>9.2f}  "
        f"p99 {row['p99_us']:>9.2f} us{note}"
    )


def targets(calls: list[dict[str, Any]], train: dict[str, Any] | None) -> dict[str, Any]:
    def get(logger: str, kind: str) -> dict[str, Any] | None:
        for r in calls:
            if r["logger"] == logger and r["values"] == kind and r.get("status") == "ok":
                return r
        return None

    out: dict[str, Any] = {}
    up_f = get("lrpilot Monitor.step (controller up)", "float")
    up_t = get("lrpilot Monitor.step (controller up)", "tensor")
    down_f = get("lrpilot Monitor.step (controller down)", "float")
    down_t = get("lrpilot Monitor.step (controller down)", "tensor")
    if up_f:
        out["float mean <= 3 us"] = (up_f["mean_us"], up_f["mean_us"] <= 3.0)
        out["float p99 <= 25 us"] = (up_f["p99_us"], up_f["p99_us"] <= 25.0)
    if up_t:
        out["tensor mean <= 5 us"] = (up_t["mean_us"], up_t["mean_us"] <= 5.0)
    for kind, up in (("float", up_f), ("tensor", up_t)):
        peers = [r for r in calls if r["values"] == kind and r.get("status") == "ok"
                 and not r["logger"].startswith(("lrpilot", "deque"))]  # fmt: skip
        if up and peers:
            cheapest = min(peers, key=lambda r: r["mean_us"])
            ratio = cheapest["mean_us"] / up["mean_us"]
            out[f">= 50x cheaper than cheapest peer ({kind}: {cheapest['logger']})"] = (
                ratio,
                ratio >= 50,
            )
    for kind, up, down in (("float", up_f, down_f), ("tensor", up_t, down_t)):
        if up and down:  # 10% allowance for timer noise between two runs of the same code
            ratio = down["mean_us"] / up["mean_us"]
            out[f"controller down no slower than up ({kind}, ratio, 10% noise allowance)"] = (
                ratio,
                ratio <= 1.10,
            )
    if train:
        row = next(r for r in train["rows"] if r["variant"] == "default stats")
        out["default stats <= 2% of the MLP step (direct)"] = (
            row["client_pct_direct"],
            row["client_pct_direct"] <= 2.0,
        )
    return {k: {"measured": v, "met": ok} for k, (v, ok) in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls per logger")
    parser.add_argument("--warmup", type=int, default=1_000, help="untimed calls first")
    parser.add_argument("--rounds", type=int, default=4, help="training: rounds of blocks")
    parser.add_argument("--block", type=int, default=50, help="training: steps per block")
    parser.add_argument("--mem-steps", type=int, default=1_000_000, help="memory: steps")
    parser.add_argument("--no-peers", action="store_true", help="skip TensorBoard, W&B...")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["calls", "train", "cosine", "memory"]
    )
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write results")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child is not None:
        memory_child(args.memory_child, args.endpoint)
        return 0
    if args.quick:
        args.calls, args.warmup, args.rounds, args.block = 2_000, 200, 2, 20
        args.mem_steps = 100_000
    for name in ("calls", "warmup", "rounds", "block", "mem_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpus": os.cpu_count(), "platform": platform.platform()},
        "calls": args.calls, "warmup": args.warmup,
    }  # fmt: skip
    calls: list[dict[str, Any]] = []
    train = None
    with (
        tempfile.TemporaryDirectory(prefix="lrpilot-bench-") as tmp_s,
        controller(Path(tmp_s)) as endpoint,
    ):
        tmp = Path(tmp_s)
        if "calls" not in args.skip:
            print(f"per-call cost, 4 scalars per step ({args.calls} calls after {args.warmup}):")
            calls = per_call(args, tmp, endpoint)
            results["per_call"] = calls
        if "train" not in args.skip:
            print("\ntraining-step overhead (10M-parameter MLP, CPU, batch 64):", flush=True)
            train = training(args, endpoint)
            results["training"] = train
            print(f"  {train['model']}, baseline step {train['baseline_step_ms']:.1f} ms")
            for r in train["rows"]:
                print(
                    f"  {r['variant']:<38} step {r['step_ms_median']:7.2f} ms   client "
                    f"{r['client_us_per_step']:8.1f} us = {r['client_pct_direct']:5.2f}% direct"
                    f"   end-to-end {r['overhead_pct_end_to_end']:+6.2f}%"
                )
    if "cosine" not in args.skip:
        print("\ncos_grad_update every step (client time per step, % of the step without "
              "statistics, medians):", flush=True)  # fmt: skip
        results["cosine"] = cosine_cost(args)
    if "memory" not in args.skip:
        print(f"\nclient memory over {args.mem_steps:,} steps, controller down:", flush=True)
        mem = memory(args)
        results["memory"] = mem
        print(
            f"  RSS start {mem['rss_start_mb']:.1f} MB, peak {mem['peak_rss_mb']:.1f} MB "
            f"(peak before the loop {mem['peak_rss_at_start_mb']:.1f} MB, after close "
            f"{mem['peak_rss_after_close_mb']:.1f} MB), "
            f"growth over the second half {mem['growth_second_half_mb']:.1f} MB, "
            f"{mem['elapsed_s'] / mem['steps'] * 1e6:.2f} us/step, "
            f"{mem['dropped_points']:,} points dropped (bounded buffer)"
        )
    results["targets"] = targets(calls, train)
    print("\ntargets:")
    for name, t in results["targets"].items():
        print(f"  {'met   ' if t['met'] else 'MISSED'} {name}: {t['measured']:.3g}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
