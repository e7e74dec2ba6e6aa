"""Quality of automatic LR control over a sweep of starting LRs (issue 8).

Every lrpilot run goes through the real client and controller: one in-process
:class:`~lrpilot.monitor.server.Controller` thread on ``tcp://127.0.0.1:*`` with its SQLite
store, and one ``Monitor(control="auto")`` per run. Each Monitor drives a small real
``torch.optim.SGD`` "proxy" optimizer (one dummy parameter, never stepped) whose
``param_groups[0]["lr"]`` is read back every step as that run's LR: the controller's commands
reach the training loop only through the client's real command path (and, for "auto on top
of cosine", through its scheduler composition with a real ``CosineAnnealingLR``). Each
Monitor has ``rewind=True`` (the recommended setting with control="auto") and, as its
``model``, a :class:`RunView` of its run's slice of the batched tensors, so the client's own
Rewinder takes and restores the snapshots.

To fit in minutes on two cores, all runs of one (task, optimizer) are trained at once as one
batched model: weights ``[models, in, out]``, ``bmm`` forward, autograd backward, and a
per-model SGD-momentum / Adam that takes a per-model LR tensor. Models are independent (a
NaN in one touches no other). Per model and step the loop computes, on the tensors' device,
the loss and ``cos_grad_update``: the cosine between this step's gradient and the previous
parameter update (SGD: the momentum buffer; Adam: m_hat / (sqrt(v_hat) + eps)), positive when
successive steps agree (too small), negative when they overshoot. It is sent on the cadence
the real client would use: first the ordinary loop of bench/client_ab.py runs the real
client, whose ``"budget"`` cadence measures the cosine's cost and the rest of the step; then
each batched run follows its own :class:`~lrpilot.client.cadence.CosineCadence` on a clock
with those costs (every step at first and after each LR change, every 4th on these models
otherwise).

Tasks: (1) scikit-learn digits, MLP 64-128-128-10 (ReLU), accuracy on a held-out split;
(2) streaming ill-conditioned noisy regression: 32 features with scales spanning two decades
(0.1 .. 10), a teacher that is a random tanh MLP of the unscaled inputs (output unit
variance), label noise sigma 0.3, fresh samples every step (192k), student 32-64-64-1 tanh,
MSE on 10k held-out noisy samples (the noise floor is 0.09). SGD momentum 0.9 and Adam;
11 half-decade starting LRs; 3,000 steps of batch 64. Methods: fixed LR; torch
ReduceLROnPlateau (factor 0.5, patience 2) on a validation loss every 100 steps; cosine
decay to 0; lrpilot auto; lrpilot auto on top of cosine.

    python bench/autocontrol.py                 # the full benchmark, ~6-8 min on 2 cores
    python bench/autocontrol.py --seeds 1 --methods fixed,auto --tasks regression  # dev loop
    python bench/autocontrol.py --tasks digits --optimizers adam --starts 7,8  # two starts

Writes bench/results/autocontrol.json (``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from client_ab import ServeProcess, unbatched_overhead
from lrpilot.client import Monitor, StatsConfig
from lrpilot.client.cadence import CosineCadence
from lrpilot.monitor.server import Controller

METHODS = ("fixed", "plateau", "cosine", "auto", "auto_cosine")
LRPILOT = ("auto", "auto_cosine")
OPTIMIZERS = ("sgd", "adam")
TASKS = ("digits", "regression")
FIRST_LR = {"sgd": -4.0, "adam": -5.0}  # log10 of the smallest start; 11 half-decade steps
BATCH = 64
EVAL_EVERY = 100
# The client reserves "cos_grad_update" for the cosine its own StatsCollector computes from a
# real model; here one batched model stands for many runs, so the bench computes each run's
# cosine itself and sends it under this name. The controller's policy file points the
# alignment detector at it; nothing else in the policy is changed.
COS_SERIES = "batched_cos_grad_update"
BUDGET_NOTE = " (budget: every step at first and after LR changes)"
POLICY_TOML = f'[alignment]\nseries = "{COS_SERIES}"\n'


# ------------------------------------------------------------------------------ tasks


@dataclass
class Task:
    """Data and model shape of one task; ``batch(step)`` gives each seed its own batch."""

    name: str
    sizes: tuple[int, ...]
    act: Any
    seeds: int
    x_val: torch.Tensor = field(default=None)  # type: ignore[assignment]
    y_val: torch.Tensor = field(default=None)  # type: ignore[assignment]
    x_test: torch.Tensor = field(default=None)  # type: ignore[assignment]
    y_test: torch.Tensor = field(default=None)  # type: ignore[assignment]
    classify: bool = False
    gen: torch.Generator = field(default_factory=torch.Generator)
    extra: dict[str, Any] = field(default_factory=dict)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``[seeds, BATCH, in]`` and targets ``[seeds, BATCH]`` for one step."""
        if self.classify:
            x, y = self.extra["x"], self.extra["y"]
            idx = torch.randint(0, len(x), (self.seeds, BATCH), generator=self.gen)
            return x[idx], y[idx]
        z = torch.randn(self.seeds, BATCH, 32, generator=self.gen)
        y = self.extra["teacher"](z) + 0.3 * torch.randn(self.seeds, BATCH, generator=self.gen)
        return z * self.extra["scales"], y


def digits_task(seeds: int) -> Task:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    x, y = x[perm], y[perm]
    task = Task("digits", (64, 128, 128, 10), torch.relu, seeds, classify=True)
    task.extra = {"x": x[:1200], "y": y[:1200]}
    task.x_val, task.y_val = x[1200:1400], y[1200:1400]
    task.x_test, task.y_test = x[1400:], y[1400:]
    task.gen.manual_seed(7)
    return task


def regression_task(seeds: int) -> Task:
    g = torch.Generator().manual_seed(4321)
    w1 = torch.randn(32, 64, generator=g) * 1.5 / math.sqrt(32)
    w2 = torch.randn(64, 64, generator=g) * 1.5 / math.sqrt(64)
    w3 = torch.randn(64, generator=g) / math.sqrt(64)

    def raw(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.tanh(z @ w1) @ w2) @ w3

    sd = float(raw(torch.randn(50_000, 32, generator=g)).std())

    def teacher(z: torch.Tensor) -> torch.Tensor:
        return raw(z) / sd

    scales = torch.logspace(-1, 1, 32)[torch.randperm(32, generator=g)]
    task = Task("regression", (32, 64, 64, 1), torch.tanh, seeds)
    task.extra = {"teacher": teacher, "scales": scales}
    for split, n in (("val", 2000), ("test", 10_000)):
        z = torch.randn(n, 32, generator=g)
        setattr(task, f"x_{split}", z * scales)
        setattr(task, f"y_{split}", teacher(z) + 0.3 * torch.randn(n, generator=g))
    task.gen.manual_seed(11)
    return task


# ------------------------------------------------------------------------------ batched model


class BatchedMLP:
    """``models`` independent MLPs as ``[models, in, out]`` weights; model m uses seed
    ``seed_of[m]`` for its initialisation (torch.nn.Linear's default uniform init)."""

    def __init__(self, sizes: tuple[int, ...], act: Any, seed_of: torch.Tensor, seeds: int):
        self.act = act
        self.params: list[torch.Tensor] = []
        for s in range(seeds):
            torch.manual_seed(1000 + s)
            layers = [torch.nn.Linear(a, b) for a, b in itertools.pairwise(sizes)]
            for i, layer in enumerate(layers):
                w = layer.weight.detach().t().contiguous()
                b = layer.bias.detach().reshape(1, -1)
                if s == 0:
                    self.params += [torch.empty(len(seed_of), *w.shape),
                                    torch.empty(len(seed_of), *b.shape)]  # fmt: skip
                mask = seed_of == s
                self.params[2 * i][mask] = w
                self.params[2 * i + 1][mask] = b
        for p in self.params:
            p.requires_grad_(True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        n = len(self.params) // 2
        for i in range(n):
            h = torch.baddbmm(self.params[2 * i + 1], h, self.params[2 * i])
            if i < n - 1:
                h = self.act(h)
        return h


class BatchedOptimizer:
    """SGD with momentum 0.9 (torch's rule) or Adam (torch's defaults), one LR per model.

    :meth:`step` also returns cos(g_t, u_{t-1}) per model, u being the previous update's
    descent direction (0 on the first step).
    """

    def __init__(self, kind: str, params: list[torch.Tensor]) -> None:
        self.kind = kind
        self.params = params
        self.t = torch.zeros(params[0].shape[0])  # per model: a rewind restores its own
        self.state = [torch.zeros_like(p) for p in params]  # momentum buffer / exp_avg
        self.prev = self.state if kind == "sgd" else [torch.zeros_like(p) for p in params]
        self.sq = [torch.zeros_like(p) for p in params] if kind == "adam" else []

    @torch.no_grad()
    def step(self, lr: torch.Tensor) -> torch.Tensor:
        m = lr.shape[0]
        dot = torch.zeros(m)
        gg = torch.zeros(m)
        uu = torch.zeros(m)
        self.t += 1
        for i, p in enumerate(self.params):
            g = p.grad
            u = self.prev[i]
            dot += (g * u).flatten(1).sum(1)
            gg += (g * g).flatten(1).sum(1)
            uu += (u * u).flatten(1).sum(1)
            shape = (m,) + (1,) * (p.dim() - 1)
            if self.kind == "sgd":
                buf = self.state[i]
                buf.mul_(0.9).add_(g)
                p.sub_(lr.view(shape) * buf)
            else:
                ea, sq = self.state[i], self.sq[i]
                ea.lerp_(g, 0.1)
                sq.mul_(0.999).addcmul_(g, g, value=0.001)
                bc1 = (1 - 0.9**self.t).view(shape)
                bc2 = (1 - 0.999**self.t).view(shape)
                upd = (ea / bc1) / ((sq / bc2).sqrt_().add_(1e-8))
                self.prev[i] = upd
                p.sub_(lr.view(shape) * upd)
            p.grad = None
        return torch.where(uu > 0, dot / (gg * uu).sqrt().clamp_min(1e-30), 0.0)


class RunView(torch.nn.Module):
    """Model ``m`` of a batched group as the client's rewind sees a model.

    ``Monitor(model=RunView(...), rewind=True)`` then snapshots and restores this run exactly
    as it would an ordinary module: ``state_dict()`` holds model m's weights *and* its slice
    of the batched optimizer's state (momentum / Adam moments, step count), since the proxy
    optimizer the Monitor drives holds none; ``load_state_dict`` writes them back.
    """

    def __init__(self, model: BatchedMLP, optim: BatchedOptimizer, m: int) -> None:
        super().__init__()
        self._batched = (model, optim)
        self._m = m

    def _tensors(self) -> dict[str, torch.Tensor]:
        model, optim = self._batched
        lists = {"w": model.params, "s": optim.state, "q": optim.sq}
        if optim.prev is not optim.state:
            lists["u"] = optim.prev
        out = {f"{k}{i}": t for k, ts in lists.items() for i, t in enumerate(ts)}
        out["t"] = optim.t
        return out

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return {k: t[self._m] for k, t in self._tensors().items()}

    def load_state_dict(self, state: Any, strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        with torch.no_grad():
            for k, t in self._tensors().items():
                t[self._m] = state[k]


# ------------------------------------------------------------------------------ the controller


class InProcessController:
    """A real Controller on a thread (as tests/support.py's ThreadedController); ``rules``:
    extra ``[policy]`` lines for a dev loop (the benchmark runs the defaults)."""

    def __init__(self, db: Path, rules: str = "") -> None:
        policy = db.with_suffix(".toml")
        policy.write_text(POLICY_TOML + (f"[policy]\n{rules}\n" if rules else ""))
        self.controller = Controller(db, "tcp://127.0.0.1:*", policy=policy)
        self.endpoint = self.controller.bind()
        self.thread = threading.Thread(target=self.controller.serve_forever, daemon=True)

    def __enter__(self) -> InProcessController:
        self.thread.start()
        if not self.controller.ready.wait(10):
            raise RuntimeError("the controller did not start within 10 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
        self.thread.join(30)


# ------------------------------------------------------------------------------ one sweep


def _proxy(lr: float) -> torch.optim.SGD:
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)


def _no_stats() -> dict[str, Any]:
    """Monitor kwargs that keep the client's own gradient statistics off the proxy optimizer
    (it has no gradients; the bench sends each run's statistics itself)."""
    try:
        from lrpilot.client import StatsConfig
    except ImportError:  # a client without device statistics
        return {}
    return {"stats": StatsConfig.off()}


def run_group(task: Task, opt: str, methods: tuple[str, ...], lrs: list[float], steps: int,
              endpoint: str, cos_every: int = 1,
              budget: tuple[float, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """Train every (method, start LR, seed) of one (task, optimizer) at once; the cosine is
    sent every ``cos_every`` steps, as the client's ``StatsConfig(cos_every=...)`` does, or,
    with ``budget`` = (the cosine's cost, the rest of the step) in seconds as the real client
    measured them, when each run's own :class:`CosineCadence` on that clock says (as
    ``cos_every="budget"`` does: dense at first and after each LR change, then thinner)."""
    seeds = task.seeds
    combos = [(meth, lr, s) for meth in methods for lr in lrs for s in range(seeds)]
    n = len(combos)
    seed_of = torch.tensor([c[2] for c in combos])
    model = BatchedMLP(task.sizes, task.act, seed_of, seeds)
    optim = BatchedOptimizer(opt, model.params)
    lr_now = [c[1] for c in combos]
    proxies: dict[int, torch.optim.SGD] = {}
    scheds: dict[int, Any] = {}
    plateaus: dict[int, Any] = {}
    monitors: dict[int, Monitor] = {}
    for m, (meth, lr, s) in enumerate(combos):
        if meth == "fixed":
            continue
        proxies[m] = _proxy(lr)
        if meth in ("cosine", "auto_cosine"):
            scheds[m] = torch.optim.lr_scheduler.CosineAnnealingLR(proxies[m], T_max=steps)
        if meth == "plateau":
            plateaus[m] = torch.optim.lr_scheduler.ReduceLROnPlateau(
                proxies[m], factor=0.5, patience=2
            )
        if meth in LRPILOT:
            monitors[m] = Monitor(
                run=f"{task.name}-{opt}-{meth}-lr{lr:.0e}-s{s}", optimizer=proxies[m],
                endpoint=endpoint, control="auto", scheduler=scheds.get(m), close_timeout=30,
                model=RunView(model, optim, m), rewind=True, **_no_stats(),
                # "auto" knows the run's length and decays the LR at its end itself;
                # "auto_cosine" leaves the decay to its cosine schedule.
                total_steps=steps if meth == "auto" else None,
                config={"task": task.name, "optimizer": opt, "method": meth, "lr0": lr,
                        "seed": s},
            )  # fmt: skip
    mon_items = sorted(monitors.items())
    sched_items = sorted(scheds.items())
    cadences = {m: CosineCadence(StatsConfig().cos_budget) for m in monitors} if budget else {}
    clocks = dict.fromkeys(cadences, 0.0)
    seen_changes = dict.fromkeys(cadences, 0)
    lr_t = torch.tensor(lr_now)
    x_val = task.x_val.expand(n, *task.x_val.shape)
    mon_time = 0.0
    train_time = 0.0
    nan_step = [None] * n
    cos_bins = (0, 100, 300, 1000, steps)  # mean cos_grad_update per phase, for the record
    cos_sums = torch.zeros(len(cos_bins) - 1, n)
    t_start = time.perf_counter()
    for step in range(steps):
        t0 = time.perf_counter()
        xs, ys = task.batch()
        x, y = xs[seed_of], ys[seed_of]
        out = model(x)
        if task.classify:
            loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1),
                                   reduction="none").view(n, -1).mean(1)  # fmt: skip
        else:
            loss = (out.squeeze(-1) - y).square().mean(1)
        loss.sum().backward()
        cos = optim.step(lr_t)
        host = torch.stack([loss.detach(), cos]).tolist()
        cos_sums[sum(step >= b for b in cos_bins[1:-1])] += torch.nan_to_num(cos)
        t1 = time.perf_counter()
        train_time += t1 - t0
        losses, coses = host
        for m, mon in mon_items:
            cadence = cadences.get(m)
            if cadence is not None and budget is not None:
                due = cadence.tick(step, clocks[m])
                clocks[m] += budget[1] + (budget[0] if due else 0.0)
                if due:
                    cadence.spent(budget[0])
            else:
                due = step % cos_every == 0
            if step and due:
                mon.step(loss=losses[m], **{COS_SERIES: coses[m]})
            else:
                mon.step(loss=losses[m])
            if cadence is not None and len(mon.changes) > seen_changes[m]:
                seen_changes[m] = len(mon.changes)
                cadence.lr_changed()
        t2 = time.perf_counter()
        mon_time += t2 - t1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
            for _, sc in sched_items:
                sc.step()
        if (step + 1) % EVAL_EVERY == 0:
            val = evaluate(model, task, x_val, task.y_val)
            for m, sc in plateaus.items():
                sc.step(val[m])
        for m, p in proxies.items():
            lr_now[m] = p.param_groups[0]["lr"]
        lr_t = torch.tensor(lr_now)
        for m in range(n):
            if nan_step[m] is None and not math.isfinite(losses[m]):
                nan_step[m] = step
    wall = time.perf_counter() - t_start
    changes = {m: mon.changes for m, mon in mon_items}
    rewinds = {m: mon.rewinds for m, mon in mon_items}
    dropped = {m: mon.dropped for m, mon in mon_items}
    t_close = time.perf_counter()
    for _, mon in mon_items:
        mon.close()
    close_time = time.perf_counter() - t_close
    x_test = task.x_test.expand(n, *task.x_test.shape)
    final = evaluate(model, task, x_test, task.y_test, accuracy=task.classify)
    widths = torch.tensor([b - a for a, b in itertools.pairwise(cos_bins)])
    cos_means = (cos_sums / widths.view(-1, 1)).t().tolist()
    runs = []
    for m, (meth, lr, s) in enumerate(combos):
        ch = changes.get(m, [])
        runs.append({
            "method": meth, "lr0": lr, "seed": s, "result": final[m], "final_lr": lr_now[m],
            "nan_step": nan_step[m], "changes": len(ch), "rewinds": rewinds.get(m, 0),
            "dropped": dropped.get(m, 0),
            "steps_lost": sum(c.step - c.rewind_step for c in ch if c.rewind_step is not None),
            "increases": sum(c.lrs_after[0] > c.lrs_before[0] for c in ch),
            "triggers": [c.trigger for c in ch],
            "mean_cos": [round(c, 3) for c in cos_means[m]],
            "lr_path": [(c.step, c.lrs_after[0]) for c in ch],
        })  # fmt: skip
    return {
        "runs": runs, "wall_s": wall, "train_s": train_time, "monitor_s": mon_time,
        "close_s": close_time, "monitor_calls": len(mon_items) * steps, "models": n,
    }  # fmt: skip


@torch.no_grad()
def evaluate(model: BatchedMLP, task: Task, x: torch.Tensor, y: torch.Tensor,
             accuracy: bool = False) -> list[float]:  # fmt: skip
    out = model(x)
    if accuracy:
        return (out.argmax(-1) == y).float().mean(1).tolist()
    if task.classify:
        n = out.shape[0]
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.repeat(n),
                               reduction="none").view(n, -1).mean(1).tolist()  # fmt: skip
    return (out.squeeze(-1) - y).square().mean(1).tolist()


# ------------------------------------------------------------------------------ scoring


def per_start(runs: list[dict[str, Any]], method: str, lrs: list[float], classify: bool,
              dead_level: float) -> list[dict[str, Any]]:  # fmt: skip
    """Mean result over seeds at each start; a NaN or dead seed makes the start fail."""
    out = []
    for lr in lrs:
        rs = [r for r in runs if r["method"] == method and r["lr0"] == lr]
        vals = [r["result"] for r in rs]
        bad = [not math.isfinite(v) or (v < dead_level if classify else v > dead_level)
               for v in vals]  # fmt: skip
        nan = sum(not math.isfinite(v) for v in vals)
        mean = statistics.fmean(vals) if all(math.isfinite(v) for v in vals) else math.nan
        out.append({"lr0": lr, "result": mean, "nan": nan, "dead": sum(bad) - nan,
                    "changes": statistics.fmean(r["changes"] for r in rs),
                    "increases": statistics.fmean(r["increases"] for r in rs),
                    "rewinds": statistics.fmean(r.get("rewinds", 0) for r in rs),
                    "steps_lost": statistics.fmean(r.get("steps_lost", 0) for r in rs),
                    })  # fmt: skip
    return out


def span(ok: list[bool]) -> float:
    """Longest run of consecutive good starts, in decades (half a decade per step)."""
    best = cur = 0
    for good in ok:
        cur = cur + 1 if good else 0
        best = max(best, cur)
    return 0.5 * (best - 1) if best else 0.0


def score(group: dict[str, Any], classify: bool, lrs: list[float], methods: tuple[str, ...],
          dead_level: float, steps: int) -> dict[str, Any]:  # fmt: skip
    runs = group["runs"]
    table = {m: per_start(runs, m, lrs, classify, dead_level) for m in methods}
    fixed = [r["result"] for r in table["fixed"]]
    finite_fixed = [v for v in fixed if math.isfinite(v)]
    best_fixed = max(finite_fixed) if classify else min(finite_fixed)
    cosine = [r["result"] for r in table.get("cosine", [])]
    finite_cos = [v for v in cosine if math.isfinite(v)]
    best_cos = (max(finite_cos) if classify else min(finite_cos)) if finite_cos else math.nan
    # Only starts where fixed LR trained (neither NaN nor dead) can be made worse than it.
    alive = [r["nan"] == 0 and r["dead"] == 0 for r in table["fixed"]]
    cells = {}
    for meth in methods:
        vals = [r["result"] for r in table[meth]]
        pairs = [(v, f) for v, f, a in zip(vals, fixed, alive, strict=True) if a]
        if classify:
            ok = [math.isfinite(v) and v >= best_fixed - 0.01 for v in vals]
            ok_loose = ok
            # "worse than fixed by": the ratio of accuracies, and the drop in points
            ratios = [f / v if math.isfinite(v) and v > 0 else math.inf for v, f in pairs]
            drop = max(((f - v) * 100 for v, f in pairs), default=0.0)
        else:
            ok = [math.isfinite(v) and v <= 1.1 * best_fixed for v in vals]
            ok_loose = [math.isfinite(v) and v <= 1.25 * best_fixed for v in vals]
            ratios = [v / f if math.isfinite(v) else math.inf for v, f in pairs]
            drop = math.nan
        finite = sorted(v if math.isfinite(v) else (-math.inf if classify else math.inf)
                        for v in vals)  # fmt: skip
        med = statistics.median(finite)
        vs_cos = (best_cos / med if classify else med / best_cos) if finite_cos else math.nan
        cells[meth] = {
            "span": span(ok), "span_1.25x": span(ok_loose),
            "worst_vs_fixed": max(ratios, default=math.nan),
            "worst_drop_points": drop, "nan": sum(r["nan"] for r in table[meth]),
            "dead": sum(r["dead"] for r in table[meth]),
            "changes_per_run": statistics.fmean(r["changes"] for r in table[meth]),
            "increases_per_run": statistics.fmean(r["increases"] for r in table[meth]),
            "rewinds_per_run": statistics.fmean(r["rewinds"] for r in table[meth]),
            "lost_share": statistics.fmean(r["steps_lost"] for r in table[meth]) / steps,
            "median": med, "median_vs_tuned_cosine": vs_cos,
            "per_start": table[meth],
        }  # fmt: skip
    return {"best_fixed": best_fixed, "best_cosine": best_cos, "cells": cells, "lrs": lrs,
            "classify": classify, "dead_level": dead_level}  # fmt: skip


# ------------------------------------------------------------------------------ main


def fmt(v: float, spec: str) -> str:
    return "nan" if not math.isfinite(v) else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument(
        "--rules",
        default="",
        help="extra [policy] lines, e.g. "
        '"climb_threshold = 0.01" (dev loop; the benchmark runs the defaults)',
    )
    ap.add_argument("--starts", default="", help="indices 0-10 of the starting LRs to run "
                    "(dev loop; spans over a subset are not the benchmark's)")  # fmt: skip
    ap.add_argument("--overhead-steps", type=int, default=2000)
    ap.add_argument("--cos-every", default="default",
                    help="the cosine's cadence: the client's default under auto "
                         "(\"budget\": each batched run follows its own cadence on the "
                         "costs the A/B loop's real client measured), \"budget\" or "
                         "every N steps")  # fmt: skip
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "autocontrol.json"))
    ap.add_argument("--rescore", metavar="JSON", help="print the tables of a saved run again")
    args = ap.parse_args(argv)
    cos_every: int | str = args.cos_every
    if cos_every not in ("default", "budget"):
        if not str(cos_every).isdigit() or int(cos_every) < 1:
            ap.error(f'--cos-every must be "default", "budget" or an int >= 1, got {cos_every!r}')
        cos_every = int(cos_every)
    if args.rescore:
        return rescore(Path(args.rescore))
    methods = tuple(m for m in METHODS if m in args.methods.split(","))
    if "fixed" not in methods:
        methods = ("fixed", *methods)
    torch.set_num_threads(1)  # two threads stall on a shared 2-core machine (measured 5x)
    torch.set_flush_denormal(True)
    t_all = time.perf_counter()
    results: dict[str, Any] = {"config": vars(args) | {"methods": list(methods)}, "cells": {}}
    with (
        tempfile.TemporaryDirectory() as tmp,
        InProcessController(Path(tmp) / "b.db", args.rules.replace(";", "\n")) as ctl,
        ServeProcess(Path(tmp) / "overhead.db", POLICY_TOML) as serve,
    ):
        for task_name in args.tasks.split(","):
            task = digits_task(args.seeds) if task_name == "digits" else regression_task(args.seeds)
            dead_level = 0.2 if task.classify else 0.9 * float(task.y_test.var())
            for opt in args.optimizers.split(","):
                lrs = [10 ** (FIRST_LR[opt] + 0.5 * i) for i in range(11)]
                if args.starts:
                    lrs = [lrs[int(i)] for i in args.starts.split(",")]
                t0 = time.perf_counter()
                # The real client in an ordinary loop first: its cadence (it moves under
                # "budget") is the one the batched runs then use.
                ov = unbatched_overhead(task, opt, serve.endpoint, args.overhead_steps,
                                        cos_every=cos_every)  # fmt: skip
                measured = (ov["cos_cost_s"], ov["cos_rest_s"])
                group = run_group(task, opt, methods, lrs, args.steps, ctl.endpoint,
                                  int(ov["cos_every"]),
                                  measured if None not in measured else None)  # fmt: skip
                scored = score(group, task.classify, lrs, methods, dead_level, args.steps)
                mon_us = group["monitor_s"] / max(group["monitor_calls"], 1) * 1e6
                scored["timing"] = {
                    "group_wall_s": time.perf_counter() - t0, "train_s": group["train_s"],
                    "monitor_s": group["monitor_s"], "monitor_us_per_step": mon_us,
                    "models": group["models"], "unbatched": ov,
                    "monitor_share_of_unbatched_step": mon_us / ov["plain_us"],
                }  # fmt: skip
                scored["runs"] = group["runs"]
                results["cells"][f"{task_name}/{opt}"] = scored
                print_cell(task_name, opt, scored, lrs)
                sys.stdout.flush()
    results["wall_s"] = time.perf_counter() - t_all
    print_summary(results)
    print(f"total wall time {results['wall_s']:.0f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    return 0


def rescore(path: Path) -> int:
    """Score the runs saved in ``path`` again (after a change to the scoring) and print."""
    results = json.loads(path.read_text())
    methods = tuple(results["config"]["methods"])
    for key, cell in results["cells"].items():
        task, opt = key.split("/")
        lrs = [10 ** (FIRST_LR[opt] + 0.5 * i) for i in range(11)]
        runs = cell["runs"]
        for r in runs:  # JSON has no NaN literal by default; json.dumps wrote NaN anyway
            r["result"] = float(r["result"])
        scored = score({"runs": runs}, task == "digits", lrs, methods,
                       cell.get("dead_level", 0.2 if task == "digits" else 0.98),
                       results["config"]["steps"])  # fmt: skip
        scored["timing"], scored["runs"] = cell["timing"], runs
        results["cells"][key] = scored
        print_cell(task, opt, scored, lrs)
    print_summary(results)
    print(f"total wall time {results['wall_s']:.0f} s (of the saved run)")
    path.write_text(json.dumps(results, indent=1, default=str))
    return 0


def print_cell(task: str, opt: str, scored: dict[str, Any], lrs: list[float]) -> None:
    classify = task == "digits"
    unit = "acc" if classify else "test MSE"
    print(f"\n== {task} / {opt}: best fixed {unit} {scored['best_fixed']:.4g}, "
          f"tuned cosine {scored['best_cosine']:.4g}")  # fmt: skip
    head = "method       " + " ".join(f"{lr:>7.0e}" for lr in lrs)
    print(head)
    for meth, cell in scored["cells"].items():
        vals = []
        for r in cell["per_start"]:
            v = r["result"]
            s = fmt(v * 100 if classify else v, ".1f" if classify else ".3f")
            mark = "!" if r["nan"] else ("d" if r["dead"] else "")
            vals.append(f"{s + mark:>7}")
        print(f"{meth:<12} " + " ".join(vals))
    t = scored["timing"]
    print(f"   timing: {t['group_wall_s']:.0f} s for {t['models']} models; monitor "
          f"{t['monitor_us_per_step']:.1f} us/step vs unbatched step "
          f"{t['unbatched']['plain_us']:.0f} us; real client on it: hooks "
          f"{t['unbatched']['hooks_us']:.0f} us + Monitor.step "
          f"{t['unbatched']['monitor_step_us']:.0f} us, A/B overhead "
          f"{t['unbatched']['overhead']:+.1%}; cosine every "
          f"{t['unbatched'].get('cos_every', 1)} steps"
          f"{BUDGET_NOTE if t['unbatched'].get('cos_cost_s') else ''}")  # fmt: skip


def print_summary(results: dict[str, Any]) -> None:
    print(
        "\ncell                 method       span  span1.25  worst/fixed  NaN dead "
        "changes  incr  rewinds  lost  median/cosine  monitor  Mon.step  A/B(all)"
    )
    for key, scored in results["cells"].items():
        t = scored["timing"]
        ov = t["monitor_share_of_unbatched_step"]
        ab = t["unbatched"]["overhead"]
        ab_mon = t["unbatched"].get("overhead_monitor", math.nan)
        for meth, c in scored["cells"].items():
            loose = fmt(c["span_1.25x"], ".1f") if "regression" in key else "  -"
            over = f"{ov:.1%}  {ab_mon:+.1%}  {ab:+.0%}" if meth in LRPILOT else "-"
            print(f"{key:<20} {meth:<12} {c['span']:>4.1f}  {loose:>8}  "
                  f"{fmt(c['worst_vs_fixed'], '.3f'):>11}  {c['nan']:>3} {c['dead']:>4} "
                  f"{c['changes_per_run']:>7.1f} {c['increases_per_run']:>5.1f}  "
                  f"{c['rewinds_per_run']:>7.1f} {c.get('lost_share', 0.0):>5.1%}  "
                  f"{fmt(c['median_vs_tuned_cosine'], '.3f'):>13}"
                  f"  {over:>8}")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
