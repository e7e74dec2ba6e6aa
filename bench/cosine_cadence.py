"""What the cosine's cadence saves a real training loop: the client with its cosine every
optimizer step (``StatsConfig(cos_every=1)``) beside the client on the ``"budget"`` cadence
(the default under ``control="auto"``), in one run.

Each round runs :func:`client_ab.unbatched_overhead` (an ordinary torch loop without and
with ``Monitor(control="auto", model=net, rewind=True)``, paired blocks, a controller in its
own process) once with the cosine every step and once with the default
``cos_every="budget"``, for the benchmark's four tiny CPU models (digits /
regression MLP, SGD momentum / Adam). The two variants alternate within each round, so a
change in the machine's load hits both.

    python bench/cosine_cadence.py              # 2 rounds, ~2 min on 2 cores

Writes bench/results/cosine_cadence.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from autocontrol import POLICY_TOML, digits_task, regression_task
from client_ab import ServeProcess, unbatched_overhead

VARIANTS: tuple[str, ...] = ("1", "budget")  # every step, and the default


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2000, help="steps per loop and variant")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cosine_cadence.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # as bench/autocontrol.py: two threads stall on 2 shared cores
    torch.set_flush_denormal(True)
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        ServeProcess(Path(tmp) / "o.db", POLICY_TOML) as serve,
    ):
        for task in (digits_task(1), regression_task(1)):
            for opt in ("sgd", "adam"):
                for rnd in range(args.rounds):
                    for variant in VARIANTS:
                        every = int(variant) if variant.isdigit() else variant
                        r = unbatched_overhead(task, opt, serve.endpoint, args.steps,
                                               cos_every=every)  # fmt: skip
                        row = {"cell": f"{task.name}/{opt}", "round": rnd,
                               "variant": variant} | r  # fmt: skip
                        rows.append(row)
                        print(f"{row['cell']:16} round {rnd} cos_every={row['variant']:6} "
                              f"(ran every {r['cos_every']}): plain {r['plain_us']:.0f} us, "
                              f"hooks {r['hooks_us']:.0f} us, Monitor.step "
                              f"{r['monitor_step_us']:.0f} us, A/B {r['overhead']:+.1%}",
                              flush=True)  # fmt: skip
    summary = {}
    for cell in dict.fromkeys(r["cell"] for r in rows):
        summary[cell] = {
            v: {k: statistics.median(r[k] for r in rows if r["cell"] == cell and r["variant"] == v)
                for k in ("overhead", "hooks_us", "monitor_step_us", "plain_us", "cos_every")}
            for v in VARIANTS
        }  # fmt: skip
        every, budget = summary[cell]["1"], summary[cell]["budget"]
        print(f"{cell:16} median A/B: every step {every['overhead']:+.1%} (hooks "
              f"{every['hooks_us']:.0f} us), budget {budget['overhead']:+.1%} (hooks "
              f"{budget['hooks_us']:.0f} us, every {budget['cos_every']:.0f})")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config": vars(args), "rows": rows,
                                          "summary": summary}, indent=1))  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
