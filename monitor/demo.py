"""``lrpilot demo``: a controller and a real training run whose too-high LR gets corrected.

Everything runs in this one process (the controller on a thread, the training on the main
thread), so Ctrl-C stops all of it and nothing is left behind. The data is scikit-learn's
bundled digits: no download.
"""

from __future__ import annotations

import signal
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["run_demo"]

#: Adam at 0.1 is far above what this MLP tolerates: the loss stalls around 0.5.
DEMO_LR = 0.1


def _digits(seed: int = 0):  # type: ignore[no-untyped-def]
    import torch
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[perm[:1400]], y[perm[:1400]], x[perm[1400:]], y[perm[1400:]]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _start_dashboard(db: str, endpoint: str, http: tuple[str, int], console: Console):  # type: ignore[no-untyped-def]
    """The dashboard on ``http``; if that port is taken (say, by a real `lrpilot serve`),
    on a free one instead, since a demo should just work."""
    from .cli import start_dashboard
    from .errors import ServeError

    try:
        server = start_dashboard(db, endpoint, http, None)
    except ServeError:
        server = start_dashboard(db, endpoint, (http[0], 0), None)
    console.print(f"[bold green]dashboard: {server.url}[/]  (open it to watch the run live)")
    return server


def run_demo(
    steps: int = 2000, db: str | None = None, lr: float | None = None, keep: bool = False,
    pace: float = 0.015, http: tuple[str, int] | None = ("127.0.0.1", 8050),
    budget: float = 80.0,
    console: Console | None = None,
) -> int:  # fmt: skip
    """Start a controller and the dashboard, train an MLP on digits with ``control="auto"``,
    and show the controller's corrections in the terminal and in the browser.

    Training is paced to about ``steps * pace`` seconds and never runs past ``budget``
    seconds, so the demo ends in under two minutes even on a busy machine."""
    import torch

    from ..client import Monitor
    from .server import Controller

    console = console or Console()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # stop as cleanly as on Ctrl-C
    tmp = None
    if db is None:
        tmp = tempfile.TemporaryDirectory(prefix="lrpilot-demo-")
        db = str(Path(tmp.name) / "demo.db")
    lr = DEMO_LR if lr is None else lr
    controller = Controller(db, "tcp://127.0.0.1:*")
    endpoint = controller.bind()
    thread = threading.Thread(target=controller.serve_forever, name="lrpilot-controller")
    thread.start()
    dashboard = None
    console.print(f"[bold]lrpilot demo[/]: controller on {endpoint}, database {db}")
    if http is not None:
        dashboard = _start_dashboard(db, endpoint, http, console)
    console.print(
        f"training a 64-128-128-10 MLP on scikit-learn digits with Adam at lr={lr:g} "
        "(far too high), control=auto"
    )
    try:
        torch.manual_seed(0)
        xtr, ytr, xte, yte = _digits()
        model = torch.nn.Sequential(
            torch.nn.Linear(64, 128), torch.nn.ReLU(),
            torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10),
        )  # fmt: skip
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(1)
        changes_shown = 0
        with (
            Monitor(
                run="demo-digits", optimizer=opt, model=model, endpoint=endpoint, control="auto",
                rewind=True, total_steps=steps,  # the recommended settings for auto control
                config={"optimizer": "Adam", "lr": lr, "batch": 64},
            ) as mon,
            Progress(
                TextColumn("[bold]step {task.completed:>5}/{task.total}"), BarColumn(),
                TextColumn("loss {task.fields[loss]:.3f}  lr {task.fields[lr]:.3g}"),
                TimeElapsedColumn(), console=console, transient=False,
            ) as progress,
        ):  # fmt: skip
            task = progress.add_task("train", total=steps, loss=float("nan"), lr=lr)
            ema = None
            # Paced to last about steps * pace seconds so a person can watch it; a busy
            # machine eats into the sleeps, not into the promise of ending in time.
            started = time.monotonic()
            for step in range(steps):
                idx = torch.randint(0, len(xtr), (64,), generator=gen)
                logits = model(xtr[idx])
                loss = torch.nn.functional.cross_entropy(logits, ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    acc = (logits.argmax(1) == ytr[idx]).float().mean()
                mon.step(loss=loss, acc=acc)
                if step % 25 == 0:  # the display only: one host read every 25 steps
                    value = loss.item()
                    ema = value if ema is None else 0.7 * ema + 0.3 * value
                    progress.update(task, completed=step + 1, loss=ema, lr=mon.lrs[0])
                while changes_shown < len(mon.changes):
                    c = mon.changes[changes_shown]
                    changes_shown += 1
                    rewound = (f", rewound to step {c.rewind_step}"
                               if c.rewind_step is not None else "")  # fmt: skip
                    progress.console.print(
                        f"  [yellow]step {c.step}[/]: lr {c.lrs_before[0]:.3g} -> "
                        f"{c.lrs_after[0]:.3g}{rewound} ({c.source}: {c.reason})"
                    )
                if time.monotonic() - started > budget:
                    progress.console.print(
                        f"  [dim]stopping at step {step + 1}: this machine is busy and the "
                        f"demo keeps to {budget:.0f} s of training[/]"
                    )
                    break
                ahead = started + (step + 1) * pace - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            progress.update(task, completed=mon.steps, lr=mon.lrs[0])  # the final LR
        with torch.no_grad():
            test_acc = (model(xte).argmax(1) == yte).float().mean().item()
        console.print(
            f"done: {len(mon.changes)} LR change(s), final lr {mon.lrs[0]:.3g}, "
            f"held-out accuracy {test_acc:.1%}"
        )
        console.print(f"inspect: lrpilot history demo-digits --db {db}")
        if keep:
            where = f" and the dashboard at {dashboard.url}" if dashboard else ""
            console.print(f"controller still serving on {endpoint}{where}; Ctrl-C to stop")
            while thread.is_alive():
                thread.join(0.5)
        return 0
    except KeyboardInterrupt:
        console.print("interrupted; stopping")
        return 130
    finally:
        if dashboard is not None:
            dashboard.stop()
        controller.stop()
        thread.join(10)
        if tmp is not None:
            tmp.cleanup()
