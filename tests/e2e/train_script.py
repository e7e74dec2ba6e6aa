"""A real torch training loop with Monitor, run as its own process by the e2e tests.

It writes, per step, the loss it saw, the LRs its optimizer used, and (with a scheduler) the
LRs the same schedule gives without lrpilot, so the tests can check what the controller
stored and when a command took effect, from the training side.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from lrpilot.client import Monitor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--run", default="e2e")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--pace", type=float, default=0.0)
    ap.add_argument("--groups", type=int, default=1)
    ap.add_argument("--scheduler", choices=("none", "step", "cosine"), default="none")
    ap.add_argument("--control", default="advise")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    layers = [model[0], model[2]] if args.groups == 2 else [model]
    groups = [{"params": m.parameters(), "lr": 0.05 / 10**i} for i, m in enumerate(layers)]
    opt = torch.optim.SGD(groups, lr=0.05)

    def scheduler(o: torch.optim.Optimizer):  # type: ignore[no-untyped-def]
        if args.scheduler == "step":
            return torch.optim.lr_scheduler.StepLR(o, step_size=50, gamma=0.7)
        if args.scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=args.steps)
        return None

    sched = scheduler(opt)
    shadow_opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": g["lr"]}
                                  for g in groups], lr=0.05)  # fmt: skip
    shadow = scheduler(shadow_opt)
    losses: list[float] = []
    used: list[list[float]] = []
    reference: list[list[float]] = []
    x = torch.randn(4096, 8)
    y = torch.sin(x.sum(1, keepdim=True))
    with Monitor(run=args.run, optimizer=opt, model=model, endpoint=args.endpoint,
                 scheduler=sched, control=args.control) as mon:  # fmt: skip
        for _step in range(args.steps):
            idx = torch.randint(0, len(x), (32,))
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            used.append([g["lr"] for g in opt.param_groups])
            reference.append([g["lr"] for g in shadow_opt.param_groups])
            opt.step()
            losses.append(loss.item())
            mon.step(loss=loss, batch=32)
            if sched is not None:
                sched.step()
                shadow_opt.step()
                shadow.step()
            if args.pace:
                time.sleep(args.pace)
    report = mon.report
    with open(args.out, "w") as f:
        json.dump({"run_id": mon.run_id, "losses": losses, "used_lrs": used,
                   "reference_lrs": reference, "acked": report.acked_points,
                   "dropped": report.dropped_points, "unacked": report.unacked_points,
                   "resent_batches": report.resent_batches}, f)  # fmt: skip


if __name__ == "__main__":
    main()
