"""Write actions need the token when one is set; non-loopback binds need one at all.

Driven over real HTTP against a real Waitress server, as a browser (or an attacker) would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dash_http import DashHTTP
from lrpilot.dashboard import DashboardSecurityError, create_app, ids, serve_dashboard
from lrpilot.dashboard.security import Guard, check_bind, is_loopback
from lrpilot.monitor.errors import ServeError
from lrpilot.monitor.store import Store

TOKEN = "s3cret-token-for-tests"


class FakeController:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def request(self, op: str, **args: Any) -> Any:
        self.calls.append((op, args))
        return {"command_id": 1}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "runs.db")
    s.open_run("r1", "run-one", lrs=[1e-3])
    return Store(tmp_path / "runs.db", readonly=True)


def _set_lr(client: DashHTTP, token: str | None, value: str = "2e-3") -> tuple[int, Any]:
    output = client.output_of(f"{ids.LR_MESSAGE}.children")
    buttons = [DashHTTP.entry(b, "n_clicks", 1 if a == "set" else None)
               for a, b in ids.ACTION_BUTTONS.items()]  # fmt: skip
    inputs = [*buttons, DashHTTP.entry(ids.LR_INPUT, "n_submit")]
    state = [DashHTTP.entry(ids.LR_RUN, "value", "r1"), DashHTTP.entry(ids.LR_INPUT, "value",
             value), DashHTTP.entry(ids.TOKEN, "value", token)]  # fmt: skip
    outputs = [{"id": ids.LR_MESSAGE, "property": "children"},
               {"id": ids.LR_MESSAGE, "property": "className"}]  # fmt: skip
    status, data, _, _ = client.call(output, outputs, inputs, state,
                                     [f"{ids.ACTION_BUTTONS['set']}.n_clicks"])  # fmt: skip
    return status, data


@pytest.fixture
def served(store: Store) -> Iterator[tuple[DashHTTP, FakeController]]:
    ctl = FakeController()
    server = serve_dashboard(create_app(store, ctl, token=TOKEN), "127.0.0.1", 0)
    try:
        yield DashHTTP(server.url), ctl
    finally:
        server.stop()


@pytest.mark.parametrize("offered", [None, "", "wrong-token-xyz", TOKEN + "x"])
def test_write_without_the_right_token_is_refused(served, offered: str | None) -> None:
    client, ctl = served
    status, data = _set_lr(client, offered)
    assert status == 200
    assert "refused" in data["response"][ids.LR_MESSAGE]["children"]
    assert ctl.calls == [], "nothing may reach the controller"


def test_write_with_the_token_goes_through(served, caplog) -> None:
    client, ctl = served
    with caplog.at_level(logging.DEBUG):
        status, data = _set_lr(client, TOKEN)
    assert status == 200 and "set LR to 0.002" in data["response"][ids.LR_MESSAGE]["children"]
    assert [c[0] for c in ctl.calls] == ["set_lr"] and ctl.calls[0][1]["value"] == 2e-3
    assert TOKEN not in caplog.text, "the token is never logged"


def test_loopback_without_token_allows_writes(store: Store) -> None:
    ctl = FakeController()
    server = serve_dashboard(create_app(store, ctl), "127.0.0.1", 0)
    try:
        status, _ = _set_lr(DashHTTP(server.url), None)
    finally:
        server.stop()
    assert status == 200 and [c[0] for c in ctl.calls] == ["set_lr"]


def test_non_loopback_bind_without_token_is_refused(store: Store) -> None:
    with pytest.raises(DashboardSecurityError, match="not a loopback address, without a token"):
        serve_dashboard(create_app(store, FakeController()), "0.0.0.0", 0)


def test_non_loopback_bind_with_token_starts(store: Store) -> None:
    server = serve_dashboard(create_app(store, FakeController(), token=TOKEN), "0.0.0.0", 0)
    server.stop()


def test_short_tokens_are_refused(store: Store) -> None:
    with pytest.raises(DashboardSecurityError, match="3 characters long"):
        create_app(store, token="abc")


def test_guard_compares_and_hides_the_token() -> None:
    g = Guard(TOKEN)
    assert g.allows(TOKEN) and not g.allows(None) and not g.allows(TOKEN[:-1])
    assert TOKEN not in repr(g) and Guard(None).allows(None)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.2")
    check_bind("127.0.0.1", False)


def test_port_in_use_is_a_clear_error(store: Store) -> None:
    app = create_app(store)
    first = serve_dashboard(app, "127.0.0.1", 0)
    try:
        with pytest.raises(ServeError, match="port is in use"):
            serve_dashboard(create_app(store), "127.0.0.1", first.port)
    finally:
        first.stop()
