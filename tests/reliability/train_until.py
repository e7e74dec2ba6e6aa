"""A real torch training loop with Monitor that runs until a stop file appears.

Used by the kill, fault and load tests, which decide from outside when training ends
(after N controller kills, say) instead of guessing a step count. Writes JSON: the run id,
the number of steps, each step's loss and wall-clock time, the LR changes it applied, and
the transport's delivery report.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from lrpilot.client import Monitor, StatsConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--run", default="reliability")
    ap.add_argument("--out", required=True)
    ap.add_argument("--stop-file", required=True)
    ap.add_argument("--pace", type=float, default=0.005, help="seconds to sleep per step")
    ap.add_argument("--min-steps", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=200_000)
    ap.add_argument("--control", default="advise")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(1024, 8)
    y = torch.sin(x.sum(1, keepdim=True))
    losses: list[float] = []
    times: list[float] = []
    with Monitor(
        run=args.run,
        optimizer=opt,
        model=model,
        endpoint=args.endpoint,
        control=args.control,
        close_timeout=30.0,
        stats=StatsConfig.off(),  # exact point counts per step: only loss, batch and lr
    ) as mon:
        print(f"run_id {mon.run_id}", flush=True)
        step = 0
        while step < args.max_steps:
            if step >= args.min_steps and step % 10 == 0 and os.path.exists(args.stop_file):
                break
            idx = torch.randint(0, len(x), (32,))
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.time())
            losses.append(loss.item())
            mon.step(loss=loss, batch=32)
            step += 1
            if args.pace:
                time.sleep(args.pace)
    report = mon.report
    changes = [
        {"command_id": c.command_id, "step": c.step, "lrs": c.lrs_after} for c in mon.changes
    ]
    with open(args.out, "w") as f:
        json.dump(
            {
                "run_id": mon.run_id,
                "steps": step,
                "losses": losses,
                "times": times,
                "changes": changes,
                "acked": report.acked_points,
                "dropped": report.dropped_points,
                "unacked": report.unacked_points,
                "resent_batches": report.resent_batches,
            },
            f,
        )


if __name__ == "__main__":
    main()
