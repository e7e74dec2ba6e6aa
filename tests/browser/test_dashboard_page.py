"""The dashboard in a real chromium: `lrpilot serve`, a real torch run, LR set from the page.

`lrpilot serve --http` runs as a real subprocess (controller and dashboard), the training
loop is a real subprocess (tests/e2e/train_script.py). The LR typed into the page is checked
where it matters: in the training process's optimizer, at the step the controller says it
was applied.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lrpilot.dashboard import create_app, ids, serve_dashboard
from lrpilot.monitor.store import Store
from screenshots import screenshot
from support import ROOT, ServeProcess, free_port, wait_for

pytestmark = pytest.mark.browser
TRAIN = ROOT / "tests" / "e2e" / "train_script.py"


def _sel(cid: str | dict) -> str:
    if isinstance(cid, dict):
        cid = json.dumps(cid, sort_keys=True, separators=(",", ":"))
    return f"[id='{cid}']"


def _points(page, panel: str) -> int:  # type: ignore[no-untyped-def]
    """Points of the first trace of a chart, as plotly holds them in the browser."""
    return page.evaluate(
        "(sel) => { const g = document.querySelector(sel + ' .js-plotly-plot');"
        " return g && g.data && g.data.length ? g.data[0].x.length : -1; }",
        _sel(ids.chart_id(panel)),
    )


def test_empty_state_tells_how_to_start(tmp_path: Path, page) -> None:  # type: ignore[no-untyped-def]
    Store(tmp_path / "runs.db").close()
    server = serve_dashboard(create_app(Store(tmp_path / "runs.db", readonly=True)), "127.0.0.1", 0)
    try:
        page.goto(server.url)
        page.wait_for_selector(f"{_sel(ids.EMPTY)} >> text=No runs yet")
        assert "mon.step(loss=loss)" in page.inner_text(_sel(ids.EMPTY))
        screenshot(page, "empty-state")
    finally:
        page.goto("about:blank")  # stop polling first: a refused tick is a console error
        server.stop()


def test_live_run_set_lr_from_the_page(tmp_path: Path, page) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "train.json"
    http = f"127.0.0.1:{free_port()}"
    ctl = ServeProcess(tmp_path / "runs.db", None, "--http", http).start()
    try:
        url = ctl.output_line("dashboard at ").split("dashboard at ", 1)[1].strip()
        assert url == f"http://{http}/"
        train = subprocess.Popen(
            [sys.executable, str(TRAIN), "--endpoint", ctl.endpoint, "--run", "browser-e2e",
             "--steps", "1500", "--pace", "0.01", "--out", str(out)],
        )  # fmt: skip
        store = Store(tmp_path / "runs.db", readonly=True)
        try:
            page.goto(url)
            # the run is listed and selected; its loss chart appears
            page.wait_for_selector(f"{_sel(ids.RUN_LIST)} >> text=browser-e2e")
            page.wait_for_selector(f"{_sel(ids.chart_id('loss'))} .js-plotly-plot")
            # the loss chart grows without a reload
            first = wait_for(lambda: _points(page, "loss") > 0 and _points(page, "loss"), 10)
            wait_for(lambda: _points(page, "loss") > first + 20, 10, "the loss chart to grow")
            # a bad value is refused in the page
            page.fill(_sel(ids.LR_INPUT), "-3")
            page.click(_sel(ids.ACTION_BUTTONS["set"]))
            page.wait_for_selector(f"{_sel(ids.LR_MESSAGE)} >> text=must be > 0")
            # set the LR; the command goes sent -> applied with its step
            page.fill(_sel(ids.LR_INPUT), "0.0123")
            page.click(_sel(ids.ACTION_BUTTONS["set"]))
            page.wait_for_selector(f"{_sel(ids.LR_MESSAGE)} >> text=set LR to 0.0123")
            page.wait_for_selector(f"{_sel(ids.CMD_TABLE)} >> text=applied @", timeout=10_000)
            command = wait_for(lambda: [c for c in store.commands() if c.status == "applied"], 10)
            applied_step = command[0].applied_step
            # the marker appears on the LR chart
            wait_for(lambda: page.evaluate(
                "(sel) => { const g = document.querySelector(sel + ' .js-plotly-plot');"
                " return g.data.some(t => t.meta === 'markers|manual' && t.x.length > 0); }",
                _sel(ids.chart_id("lr"))), 10, "the LR change marker")  # fmt: skip
            # pause / resume automatic control
            page.click(_sel(ids.ACTION_BUTTONS["pause"]))
            page.wait_for_selector(f"{_sel(ids.LR_MESSAGE)} >> text=automatic control paused")
            page.click(_sel(ids.ACTION_BUTTONS["resume"]))
            page.wait_for_selector(f"{_sel(ids.LR_MESSAGE)} >> text=automatic control resumed")
            time.sleep(1.2)  # one more live tick so the screenshot shows the latest state
            screenshot(page, "live-run")
            train.wait(180)  # 1,500 paced steps; a loaded CI machine is slow
        finally:
            page.goto("about:blank")  # stop polling first: a refused tick is a console error
            if train.poll() is None:
                train.kill()
                train.wait(10)
    finally:
        assert ctl.stop() == 0, "lrpilot serve did not exit cleanly on SIGTERM"
    assert train.returncode == 0
    used = json.loads(out.read_text())["used_lrs"]
    assert used[applied_step][0] == pytest.approx(0.0123), "the optimizer runs with the new LR"
    assert used[applied_step - 1][0] != pytest.approx(0.0123)
