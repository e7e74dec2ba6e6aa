"""Detector quality and cost on seeded, labelled synthetic loss curves (issue 4).

Curves: clean descents (exponential, power law), plateaus (a descent that stops at a kink),
oscillation (a zig-zag of 1, 2 or 4 noise sigmas added to a descent), spikes that recover
(x2 or x3 the loss for 5 or 20 steps), divergence (a NaN, an exponential blow-up, a net that
dies back to ln 10, a net that never learns). Minibatch noise is multiplicative, Gaussian or
Student-t with 3 degrees of freedom (same scale), at 1%, 2%, 5% and 10% of the loss.

Scoring, per detector with its default settings: a detection of the detector's kind inside a
labelled event of that kind is a true positive (the first one; later ones in the same event
are repeats and not scored) and its delay is ``step - onset``; any other detection is a false
positive, except inside a divergence (a broken run may look like anything). False alarms per
100k clean steps count false positives on steps outside every labelled event. Alongside, the
plateau curves go through torch's ReduceLROnPlateau with its defaults on the raw loss; its
reductions before the plateau's onset are its false alarms.

    python bench/detectors.py    # ~1.5 min on 2 cores; table + bench/results/detectors.json
    python bench/detectors.py --seeds 2 --clean-seeds 4   # quicker

Targets: precision >= 0.95, recall >= 0.95, median delay <= patience + window/10, <= 1 false
alarm per 100k clean steps at ordinary noise, the four detectors together <= 20 us per record.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import random
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from lrpilot.monitor.detectors import (
    DivergenceDetector,
    OscillationDetector,
    PlateauDetector,
    SpikeDetector,
)

DETECTORS = {
    "plateau": PlateauDetector,
    "oscillation": OscillationDetector,
    "spike": SpikeDetector,
    "divergence": DivergenceDetector,
}
NOISE_LEVELS = (0.01, 0.02, 0.05, 0.10)
ORDINARY = (0.01, 0.02, 0.05)  # per-step minibatch noise a practitioner calls ordinary
FAMILIES = ("gauss", "t3")
EVENT_LEN = 6000
ONSET = 3000
CLEAN_LEN = 20_000
LN10 = math.log(10)


def _delay_target(kind: str) -> float:
    """patience + window/10 for each detector's defaults (see docs/detectors.md)."""
    p, o, s, d = (cls().config for cls in DETECTORS.values())
    return {
        "plateau": p.patience + p.patience / 10,  # the fit window is the patience
        "oscillation": o.window + o.window / 10,  # the test window is its patience
        "spike": s.recent // 2 + 1 + s.window / 10,  # median of `recent` must cross
        "divergence": d.patience + d.window / 10,
    }[kind]


# ------------------------------------------------------------------------ curves


def _noise(rng: random.Random, family: str) -> float:
    z = rng.gauss(0.0, 1.0)
    if family == "t3":
        z /= math.sqrt(rng.gammavariate(1.5, 2.0) / 3.0)
    return z


def _descent(shape: str, t: int, start: float = LN10) -> float:
    if shape == "exp":  # 6.1% lower every 500 steps
        return start * math.exp(-t / 8000)
    return start * (1 + t / 500) ** -1.0  # power law: 2.4% per 500 steps at step 20k


def scenarios() -> list[tuple[str, str, dict[str, Any]]]:
    """(scenario name, labelled kind or "clean", parameters)."""
    out: list[tuple[str, str, dict[str, Any]]] = [
        ("clean-exp", "clean", {"shape": "exp"}),
        ("clean-power", "clean", {"shape": "power"}),
        ("plateau-exp", "plateau", {"shape": "exp"}),
        ("plateau-power", "plateau", {"shape": "power"}),
    ]
    out += [(f"oscillation-{a}sd", "oscillation", {"amp": a}) for a in (1, 2, 4)]
    out += [
        (f"spike-x{1 + h}-{d}steps", "spike", {"height": h, "dur": d})
        for h in (1.0, 2.0)
        for d in (5, 20)
    ]
    out += [
        ("divergence-nan", "divergence", {"how": "nan"}),
        ("divergence-blowup", "divergence", {"how": "blowup"}),
        ("divergence-dies", "divergence", {"how": "dies"}),
        ("divergence-never-learns", "divergence", {"how": "never"}),
    ]
    return out


def curve(
    kind: str, params: dict[str, Any], sigma: float, family: str, seed: int | str
) -> tuple[list[float], tuple[int, int] | None]:
    """A noisy curve and its labelled event interval (onset, end) or None for clean ones."""
    rng = random.Random(seed)
    if kind == "clean":
        shape = params["shape"]
        return [
            _descent(shape, t) * (1 + sigma * _noise(rng, family)) for t in range(CLEAN_LEN)
        ], None
    n, t0 = EVENT_LEN, ONSET
    base = [_descent("exp", t) for t in range(n)]
    event = (t0, n)
    if kind == "plateau":
        shape = params["shape"]
        base = [_descent(shape, min(t, t0)) for t in range(n)]
    elif kind == "spike":
        h, d = params["height"], params["dur"]
        for t in range(t0, min(n, t0 + d + 60)):
            bump = h if t < t0 + d else h * math.exp(-(t - t0 - d) / 10)  # recovers
            base[t] *= 1 + bump
        event = (t0, t0 + d + 60)
    elif kind == "divergence":
        how = params["how"]
        if how == "blowup":
            base = [
                b if t < t0 else base[t0] * math.exp((t - t0) / 150) for t, b in enumerate(base)
            ]
        elif how == "dies":
            base = [b if t < t0 else LN10 for t, b in enumerate(base)]
        elif how == "never":
            base = [LN10] * n
            event = (0, n)
    out = [b * (1 + sigma * _noise(rng, family)) for b in base]
    if kind == "oscillation":
        # The zig-zag's amplitude is given in noise sigmas at the current level.
        amp = params["amp"]
        for t in range(t0, n):
            out[t] += amp * sigma * base[t] * (-1) ** t
    if kind == "divergence" and params["how"] == "nan":
        out[t0:] = [math.nan] * (n - t0)
    return out, event


# ------------------------------------------------------------------------ scoring


def _torch_reductions(values: list[float], stop: int) -> int:
    """Reductions by ReduceLROnPlateau (torch defaults) on values[:stop]."""
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, min_lr=0.0, eps=0.0)
    count = 0
    lr = 1.0
    for v in values[:stop]:
        sched.step(v)
        new = opt.param_groups[0]["lr"]
        if new != lr:
            count += 1
            lr = new
    return count


def score_config(job: tuple[float, str, int, int]) -> dict[str, Any]:
    """Run every scenario at one noise setting; return raw tallies."""
    sigma, family, seeds, clean_seeds = job
    tallies = {
        k: {"tp": 0, "fp": 0, "fp_clean": 0, "events": 0, "delays": [], "clean_steps": 0}
        for k in DETECTORS
    }
    per_scenario: dict[str, dict[str, Any]] = {}
    torch_fa = {"reductions": 0, "steps": 0, "ours": 0}
    for name, kind, params in scenarios():
        n_seeds = clean_seeds if kind == "clean" else seeds
        sc = per_scenario.setdefault(name, {"kind": kind, "found": 0, "curves": 0, "delays": []})
        for seed in range(n_seeds):
            values, event = curve(kind, params, sigma, family, f"{sigma}-{family}-{name}-{seed}")
            dets = {k: cls() for k, cls in DETECTORS.items()}
            found = {k: False for k in DETECTORS}
            fired: dict[str, list[int]] = {k: [] for k in DETECTORS}
            for t, v in enumerate(values):
                for k, det in dets.items():
                    if det.update(t, v) is not None:
                        fired[k].append(t)
            sc["curves"] += 1
            for k in DETECTORS:
                tal = tallies[k]
                clean_steps = len(values) - (event[1] - event[0] if event else 0)
                tal["clean_steps"] += clean_steps
                if kind == k:
                    tal["events"] += 1
                for t in fired[k]:
                    inside = event is not None and event[0] <= t < event[1]
                    if inside and kind == k:
                        if not found[k]:
                            found[k] = True
                            tal["tp"] += 1
                            tal["delays"].append(t - event[0])
                            sc["found"] += 1
                            sc["delays"].append(t - event[0])
                    elif inside and kind == "divergence":
                        pass  # a broken run may look like anything
                    else:
                        tal["fp"] += 1
                        if not inside:
                            tal["fp_clean"] += 1
            if kind == "plateau":
                assert event is not None
                torch_fa["reductions"] += _torch_reductions(values, event[0])
                torch_fa["steps"] += event[0]
                torch_fa["ours"] += sum(1 for t in fired["plateau"] if t < event[0])
    return {"sigma": sigma, "family": family, "tallies": tallies, "scenarios": per_scenario,
            "torch": torch_fa}  # fmt: skip


def cost_per_record(points: int = 200_000) -> dict[str, float]:
    """Microseconds per record for each detector and for the four together."""
    values, _ = curve("clean", {"shape": "exp"}, 0.02, "gauss", 1)
    values = (values * (points // len(values) + 1))[:points]
    out = {}
    for k, cls in DETECTORS.items():
        det = cls()
        update = det.update
        start = time.perf_counter()
        for t, v in enumerate(values):
            update(t, v)
        out[k] = (time.perf_counter() - start) / points * 1e6
    dets = [cls().update for cls in DETECTORS.values()]
    start = time.perf_counter()
    for t, v in enumerate(values):
        for update in dets:
            update(t, v)
    out["all four"] = (time.perf_counter() - start) / points * 1e6
    return out


def _pct(xs: list[int], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return float(xs[min(len(xs) - 1, math.ceil(q * len(xs)) - 1)])


def summarise(rows: list[dict[str, Any]], levels: tuple[float, ...] | None) -> dict[str, Any]:
    """Precision, recall, delays and false alarms per detector over the chosen noise levels."""
    out = {}
    for k in DETECTORS:
        tp = fp = fp_clean = events = clean = 0
        delays: list[int] = []
        for r in rows:
            if levels is not None and r["sigma"] not in levels:
                continue
            t = r["tallies"][k]
            tp += t["tp"]
            fp += t["fp"]
            fp_clean += t["fp_clean"]
            events += t["events"]
            clean += t["clean_steps"]
            delays += t["delays"]
        out[k] = {
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / events if events else None,
            "median_delay": statistics.median(delays) if delays else None,
            "p90_delay": _pct(delays, 0.9),
            "delay_target": _delay_target(k),
            "false_alarms_per_100k": fp_clean / clean * 1e5 if clean else None,
            "clean_steps": clean,
            "tp": tp,
            "fp": fp,
            "events": events,
        }
    return out


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=4, help="curves per labelled scenario per noise")
    ap.add_argument("--clean-seeds", type=int, default=8, help="clean curves per shape per noise")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "detectors.json"))
    args = ap.parse_args(argv)

    started = time.perf_counter()
    jobs = [(s, f, args.seeds, args.clean_seeds) for s in NOISE_LEVELS for f in FAMILIES]
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        rows = pool.map(score_config, jobs, chunksize=1)
    cost = cost_per_record()

    overall_ordinary = summarise(rows, ORDINARY)
    print(f"\nDetectors at ordinary noise ({', '.join(f'{s:.0%}' for s in ORDINARY)}; "
          "Gaussian and Student-t df 3), default settings")  # fmt: skip
    head = (f"{'detector':12} {'precision':>9} {'recall':>7} {'med delay':>9} {'p90':>6} "
            f"{'target':>7} {'FA/100k clean':>13} {'us/record':>9}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for k, m in overall_ordinary.items():
        print(f"{k:12} {_fmt(m['precision'], '9.3f')} {_fmt(m['recall'], '7.3f')} "
              f"{_fmt(m['median_delay'], '9.0f')} {_fmt(m['p90_delay'], '6.0f')} "
              f"{m['delay_target']:7.0f} {_fmt(m['false_alarms_per_100k'], '13.2f')} "
              f"{cost[k]:9.2f}")  # fmt: skip
    print(f"{'all four':12} {'':>9} {'':>7} {'':>9} {'':>6} {'':>7} {'':>13} "
          f"{cost['all four']:9.2f}")  # fmt: skip

    print("\nPer noise level: precision / recall / false alarms per 100k clean steps")
    by_level = {}
    for sigma in NOISE_LEVELS:
        for family in FAMILIES:
            sub = [r for r in rows if r["sigma"] == sigma and r["family"] == family]
            by_level[f"{family}-{sigma}"] = m = summarise(sub, None)
            tag = "ordinary" if sigma in ORDINARY else "heavy"
            cells = "  ".join(
                f"{k[:5]} {_fmt(v['precision'], '.2f')}/{_fmt(v['recall'], '.2f')}/"
                f"{_fmt(v['false_alarms_per_100k'], '.1f')}"
                for k, v in m.items()
            )
            print(f"{family:5} {sigma:4.0%} ({tag:8}) {cells}")

    print("\nReduceLROnPlateau (torch defaults, raw loss) vs ours on the plateau curves' descent")
    torch_rows = {}
    for r in rows:
        tf = r["torch"]
        key = f"{r['family']}-{r['sigma']}"
        torch_rows[key] = {
            "torch_per_100k": tf["reductions"] / tf["steps"] * 1e5 if tf["steps"] else None,
            "ours_per_100k": tf["ours"] / tf["steps"] * 1e5 if tf["steps"] else None,
            "steps": tf["steps"],
        }
        print(f"  {key:12} torch {torch_rows[key]['torch_per_100k']:8.0f} / 100k   "
              f"ours {torch_rows[key]['ours_per_100k']:6.1f} / 100k  "
              f"({tf['steps']} steps)")  # fmt: skip

    print("\nPer scenario, all noise levels: recall and median delay")
    scen: dict[str, dict[str, Any]] = {}
    for r in rows:
        for name, s in r["scenarios"].items():
            agg = scen.setdefault(name, {"kind": s["kind"], "found": 0, "curves": 0, "delays": []})
            agg["found"] += s["found"]
            agg["curves"] += s["curves"]
            agg["delays"] += s["delays"]
    for name, s in scen.items():
        if s["kind"] == "clean":
            continue
        med = statistics.median(s["delays"]) if s["delays"] else None
        print(f"  {name:26} recall {s['found'] / s['curves']:.2f}  median delay "
              f"{_fmt(med, '.0f')}")  # fmt: skip

    elapsed = time.perf_counter() - started
    print(f"\n{len(scen)} scenarios x {len(jobs)} noise settings in {elapsed:.0f} s")
    result = {
        "ordinary_noise": list(ORDINARY),
        "overall_ordinary": overall_ordinary,
        "overall_all_noise": summarise(rows, None),
        "by_noise": by_level,
        "torch_reduce_lr_on_plateau": torch_rows,
        "scenarios": {
            k: {
                **v,
                "delays": None,
                "median_delay": statistics.median(v["delays"]) if v["delays"] else None,
            }
            for k, v in scen.items()
        },
        "us_per_record": cost,
        "settings": vars(args),
        "seconds": elapsed,
        "python": sys.version.split()[0],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
