"""The real client in an ordinary training loop, A/B against the same loop without it.

One ordinary torch model and optimizer per (task, optimizer) of bench/autocontrol.py, plain
beside ``Monitor(control="auto", model=net, rewind=True)`` talking to ``lrpilot serve`` in its
own process, as deployed: what lrpilot costs a user's loop (issue 8's telemetry overhead),
and what the client's cosine cadence measured there. Used by bench/autocontrol.py and
bench/cosine_cadence.py.
"""

from __future__ import annotations

import itertools
import math
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from lrpilot.client import Monitor, StatsConfig

if TYPE_CHECKING:
    from autocontrol import Task


class ServeProcess:
    """``lrpilot serve`` as its own process, as deployed: the A/B overhead runs talk to it,
    so the training process pays only for the client, not for the controller's work."""

    def __init__(self, db: Path, policy_toml: str) -> None:
        policy = db.with_suffix(".toml")
        policy.write_text(policy_toml)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.args = [
            *(sys.executable, "-m", "lrpilot.monitor.cli", "serve", "--db", str(db)),
            *("--listen", self.endpoint, "--policy", str(policy), "--http", "off"),
        ]
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> ServeProcess:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening" not in line:
            self.proc.kill()
            raise RuntimeError(f"lrpilot serve did not start: {line}")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # drain
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def unbatched_overhead(task: Task, opt: str, endpoint: str, steps: int = 300, blocks: int = 10,
                       cos_every: int | str = "default") -> dict[str, float]:  # fmt: skip
    """What the client costs a real training loop: one ordinary torch model and optimizer,
    plain beside lrpilot as a user runs it (``Monitor(control="auto", model=net,
    rewind=True)``: the client's own gradient statistics and per-step cosine in the
    optimizer's hooks, snapshots, the sender thread, a controller in its own process).
    Blocks of ``steps // blocks`` steps alternate between the two loops; the overhead is the
    median of the paired block ratios (the machine is shared: neighbouring blocks see the
    same load). The time inside ``optimizer.step()`` (where the hooks run) and inside
    ``Monitor.step`` are reported per step too."""
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(task.sizes)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(task.sizes) - 2:
            layers.append(torch.nn.ReLU() if task.classify else torch.nn.Tanh())
    net = torch.nn.Sequential(*layers)

    def make() -> torch.optim.Optimizer:
        return (torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9) if opt == "sgd"
                else torch.optim.Adam(net.parameters(), lr=1e-4))  # fmt: skip

    plain, watched = make(), make()
    extra = {}
    if cos_every != "default":  # else the client's default under "auto"
        extra["stats"] = StatsConfig(cos_every=cos_every)
    mon = Monitor(run=f"overhead-{task.name}-{opt}", optimizer=watched, model=net,
                  endpoint=endpoint, control="auto", rewind=True, **extra)  # fmt: skip
    per_block = max(1, steps // blocks)
    times: dict[str, list[float]] = {"plain": [], "lrpilot": []}
    in_opt = {"plain": 0.0, "lrpilot": 0.0}
    in_monitor = 0.0
    for block in range(blocks + 1):  # block 0 warms both loops up and is not counted
        for variant, o in (("plain", plain), ("lrpilot", watched)):
            t_opt = t_mon = 0.0
            t0 = time.perf_counter()
            for _ in range(per_block):
                xs, ys = task.batch()
                out = net(xs[0])
                loss = (F.cross_entropy(out, ys[0]) if task.classify
                        else (out.squeeze(-1) - ys[0]).square().mean())  # fmt: skip
                o.zero_grad()
                loss.backward()
                a = time.perf_counter()
                o.step()
                b = time.perf_counter()
                t_opt += b - a
                if variant == "lrpilot":
                    mon.step(loss=loss.detach())
                    t_mon += time.perf_counter() - b
            if block:
                times[variant].append((time.perf_counter() - t0) / per_block)
                in_opt[variant] += t_opt
                in_monitor += t_mon
    mon.close()
    stats = mon.stats
    cadence = stats.cadence if stats is not None else None
    n = blocks * per_block
    ratios = [b / a for a, b in zip(times["plain"], times["lrpilot"], strict=True)]
    plain_us = statistics.median(times["plain"]) * 1e6
    return {
        "plain_us": plain_us, "lrpilot_us": statistics.median(times["lrpilot"]) * 1e6,
        "overhead": statistics.median(ratios) - 1.0,
        "hooks_us": (in_opt["lrpilot"] - in_opt["plain"]) / n * 1e6,
        "monitor_step_us": in_monitor / n * 1e6,
        "overhead_monitor": in_monitor / n * 1e6 / plain_us,
        "blocks": blocks, "steps_per_block": per_block,
        # the cadence the client ended on (it moves under "budget") and what it measured
        "cos_every": stats.cos_every if stats is not None else cos_every,
        "cos_cost_s": cadence.cost if cadence and math.isfinite(cadence.cost) else None,
        "cos_rest_s": cadence.rest if cadence and math.isfinite(cadence.rest) else None,
    }  # fmt: skip
