"""Detection backends: the child process decides exactly as the inline one does."""

from __future__ import annotations

import math
import random

import zmq
from lrpilot.client.protocol import Metrics, encode
from lrpilot.monitor.control import Decision
from lrpilot.monitor.detection import Detection, InlineDetection, WorkerDetection
from lrpilot.monitor.policy import RunPolicy


def batches(run_id: str, seed: int) -> list[Metrics]:
    """A loss that falls, goes flat, blows up; LR and grad norm beside it."""
    rng = random.Random(seed)
    out = []
    for b in range(60):
        steps, keys, values = [], [], []
        for s in range(b * 20, b * 20 + 20):
            loss = 2.0 / (1 + s / 50) if s < 600 else 0.7 if s < 1000 else 0.7 * 1.02 ** (s - 1000)
            steps += [s, s, s]
            keys += [0, 1, 2]
            values += [loss * (1 + rng.gauss(0, 0.02)), 0.1, math.nan if s == 1150 else 1.0]
        out.append(Metrics(run_id=run_id, seq=b + 1, names=["loss", "lr", "grad_norm"],
                           steps=steps, keys=keys, values=values))  # fmt: skip
    return out


def drive(det: Detection) -> tuple[list[tuple[str, Decision]], Decision | None]:
    runs = {"a1": "auto", "b2": "advise"}
    for run_id, mode in runs.items():
        det.open(run_id, mode, RunPolicy())
    feeds = {run_id: batches(run_id, seed) for seed, run_id in enumerate(runs)}
    for i in range(60):
        for run_id, feed in feeds.items():
            det.observe(run_id, feed[i], encode(feed[i]))
        if i == 30:
            det.lr_changed("a1", 620)
            det.pause("b2")
        if i == 45:
            det.resume("b2")
        det.flush()
    approved = det.approve("b2")
    det.drop("a1")
    det.observe("a1", feeds["a1"][0], encode(feeds["a1"][0]))  # forgotten: ignored
    det.flush()
    out: list[tuple[str, Decision]] = []
    for _ in range(200):
        out += det.results()
        if det.backlog == 0:
            break
        if det.socket is not None:
            det.socket.poll(50)
    return out + det.results(), approved


def test_the_worker_makes_the_inline_decisions_in_the_same_order() -> None:
    inline = drive(InlineDetection())
    assert inline[0], "the feed must cause decisions for the comparison to mean anything"
    ctx = zmq.Context()
    worker = WorkerDetection(ctx)
    try:
        assert drive(worker) == inline
        assert worker.backlog == 0
    finally:
        worker.close()
        ctx.term()


def test_the_child_exits_when_the_controller_dies_without_a_word() -> None:
    """A SIGKILLed controller leaves no detection process behind."""
    import os
    import subprocess
    import sys
    import time

    code = (
        "import os, zmq\n"
        "from lrpilot.client.protocol import encode\n"
        "from lrpilot.monitor.detection import WorkerDetection\n"
        "from lrpilot.monitor.policy import RunPolicy\n"
        "import test_detection as t\n"
        "w = WorkerDetection(zmq.Context())\n"
        "w.open('a1', 'auto', RunPolicy())\n"
        "for b in t.batches('a1', 0): w.observe('a1', b, encode(b))\n"
        "w.flush()\n"
        "print(w._proc.pid, flush=True)\n"
        "os._exit(0)\n"  # no close(): as if killed
    )
    here = os.path.dirname(__file__)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=here, env={**os.environ, "PYTHONPATH": here})  # fmt: skip
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    raise AssertionError("the detection process outlived its controller by 10 s")
