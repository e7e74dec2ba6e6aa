"""Hostile HTTP input against the live dashboard of a real ``lrpilot serve``.

The dashboard is served by Waitress from a real ``lrpilot serve --http`` subprocess with a
token, beside a well-behaved run streaming to it. Hypothesis sends every callback of the page
(as listed by ``/_dash-dependencies``) well-formed requests whose values are anything JSON can
hold, malformed envelopes, random bytes and oversized bodies. The server must answer each with
a status, never a 5xx; must log no traceback and never the token; must still serve the page;
and the run streaming meanwhile must lose nothing and receive no command.
``LRPILOT_SOAK=1`` multiplies the examples by 20.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from dash_http import DashHTTP
from harness import SOAK, fuzz_settings, step_counts
from hypothesis import given
from hypothesis import strategies as st
from lrpilot.dashboard import ids
from lrpilot.monitor.store import Store
from streamer import Streamer
from support import ServeProcess, free_port, wait_for

EXAMPLES = 3000 if SOAK else 150
SETTINGS = fuzz_settings(EXAMPLES)
TOKEN = f"fuzz-{uuid.uuid4().hex}"

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1e308, -1e308, math.nan, math.inf, 2**53 + 1]),
    st.text(max_size=300),
    st.sampled_from(["", "../../etc/passwd", "' OR 1=1 --", "<script>x</script>", "loss", "lr"]),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=20), inner, max_size=5)
    ),
    max_leaves=25,
)


class Page:
    """The served dashboard: its URL, its callbacks, and raw POSTs to the callback endpoint."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = DashHTTP(url)
        self.deps = self.http.deps
        self.statuses: list[int] = []

    def post(self, body: bytes, content_type: str = "application/json") -> int:
        req = urllib.request.Request(
            f"{self.url}/_dash-update-component", data=body,
            headers={"Content-Type": content_type}, method="POST",
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                r.read()
                status = r.status
        except urllib.error.HTTPError as exc:
            exc.read()
            status = exc.code
        self.statuses.append(status)
        return status

    def get(self, path: str) -> int:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as r:
            r.read()
            return r.status


def _concrete(spec_id: str, key: Any) -> tuple[Any, bool]:
    """A concrete component id for a spec id, and whether it is an ALL pattern (a list)."""
    if not spec_id.startswith("{"):
        return spec_id, False
    pattern = json.loads(spec_id)
    is_all = any(v == ["ALL"] for v in pattern.values())
    return {k: (key if isinstance(v, list) else v) for k, v in pattern.items()}, is_all


def _slot(spec: dict[str, Any], key: Any, value: Any, n: int) -> Any:
    cid, is_all = _concrete(spec["id"], key)
    entry = {"id": cid, "property": spec["property"], "value": value}
    return [dict(entry) for _ in range(n)] if is_all else entry


def _outputs(output: str, key: Any, n: int) -> Any:
    parts = output[2:-2].split("...") if output.startswith("..") else [output]
    outs = []
    for part in parts:
        cid, prop = part.rsplit(".", 1)  # "figure@<hash>" as the browser sends it
        outs.append(_slot({"id": cid, "property": prop}, key, None, n))
        outs[-1] = (
            [{k: v for k, v in o.items() if k != "value"} for o in outs[-1]]
            if isinstance(outs[-1], list)
            else {k: v for k, v in outs[-1].items() if k != "value"}
        )
    return outs if output.startswith("..") else outs[0]


def envelope(dep: dict[str, Any], values: list[Any], key: Any, n: int) -> dict[str, Any]:
    """A well-formed request for callback ``dep`` carrying ``values`` in its inputs and state."""
    specs = dep["inputs"] + dep["state"]
    slots = [_slot(s, key, v, n) for s, v in zip(specs, values, strict=False)]
    first = dep["inputs"][0]
    cid, _ = _concrete(first["id"], key)
    shown = json.dumps(cid, sort_keys=True, separators=(",", ":")) if isinstance(cid, dict) else cid
    return {
        "output": dep["output"],
        "outputs": _outputs(dep["output"], key, n),
        "inputs": slots[: len(dep["inputs"])],
        "state": slots[len(dep["inputs"]) :],
        "changedPropIds": [f"{shown}.{first['property']}"],
    }


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServeProcess, Streamer, Page]]:
    """``lrpilot serve --http --token`` with a well-behaved run streaming to it."""
    tmp = tmp_path_factory.mktemp("fuzz-http")
    ctl = ServeProcess(
        tmp / "runs.db", None, "--http", f"127.0.0.1:{free_port()}", "--token", TOKEN
    ).start()
    streamer: Streamer | None = None
    try:
        url = ctl.output_line("dashboard at ").split("dashboard at ", 1)[1].strip()
        streamer = Streamer(ctl.endpoint, close_timeout=10).start()
        wait_for(lambda: streamer.steps > 50, 20, "the well-behaved run to stream")
        yield ctl, streamer, Page(url)
    finally:
        if streamer is not None and streamer._thread is not None and streamer._thread.is_alive():
            streamer._stop.set()
            streamer._thread.join(30)
        ctl.stop()


@st.composite
def well_formed(draw: st.DrawFn, deps: list[dict[str, Any]], run_id: str) -> dict[str, Any]:
    dep = draw(st.sampled_from(deps))
    n = len(dep["inputs"]) + len(dep["state"])
    real = st.sampled_from([[run_id], run_id, {"panel": "loss", "runs": [run_id]}])
    values = draw(st.lists(st.one_of(JSON_VALUES, real), min_size=n, max_size=n))
    key = draw(st.sampled_from(["loss", "lr", "grad_norm", "scalar:acc", "nope", 7]))
    count = draw(st.integers(0, 3))
    return envelope(dep, values, key, count)


def test_callbacks_survive_any_values(served: tuple[ServeProcess, Streamer, Page]) -> None:
    _, streamer, page = served

    @SETTINGS
    @given(st.data())
    def check(data: st.DataObject) -> None:
        body = data.draw(well_formed(page.deps, streamer.run_id))
        status = page.post(json.dumps(body).encode())
        assert status in (200, 204), f"{status} for {json.dumps(body)[:400]}"

    check()
    assert page.get("/") == 200
    assert page.statuses.count(200) > EXAMPLES // 10  # most calls reached a callback's body


def _mutations(deps: list[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """Malformed callback requests: wrong shapes, wrong counts, wrong ids, not JSON at all."""

    @st.composite
    def broken_envelope(draw: st.DrawFn) -> bytes:
        dep = draw(st.sampled_from(deps))
        n = len(dep["inputs"]) + len(dep["state"])
        body = envelope(dep, [None] * n, "loss", 1)
        how = draw(st.sampled_from(["drop", "replace", "extra", "shorten", "rename"]))
        key = draw(st.sampled_from(sorted(body)))
        if how == "drop":
            del body[key]
        elif how == "replace":
            body[key] = draw(JSON_VALUES)
        elif how == "extra" and isinstance(body[key], list):
            body[key] = [*body[key], draw(JSON_VALUES)]
        elif how == "shorten" and isinstance(body[key], list):
            body[key] = body[key][:-1] or draw(JSON_VALUES)
        else:
            body["output"] = draw(st.text(max_size=80))
        return json.dumps(body).encode()

    return st.one_of(
        broken_envelope(),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=2000),
    )


def test_malformed_requests_get_a_4xx(served: tuple[ServeProcess, Streamer, Page]) -> None:
    page = served[2]

    @SETTINGS
    @given(_mutations(page.deps))
    def check(body: bytes) -> None:
        status = page.post(body)
        # 204: a mutation that happens to stay well formed (e.g. an extra changedPropId).
        assert status in (200, 204, 400), f"{status} for {body[:300]!r}"

    check()
    assert page.post(b"{" + b" " * (3 * 1024 * 1024) + b"}") == 413
    assert page.post(b"output=x", "application/x-www-form-urlencoded") == 400
    assert page.get("/") == 200


def test_wrong_tokens_change_nothing(served: tuple[ServeProcess, Streamer, Page]) -> None:
    ctl, streamer, page = served
    dep = next(d for d in page.deps if ids.LR_MESSAGE in d["output"])
    states = [streamer.run_id, "0.0123", None]  # run, LR field, token (set below)
    inputs = [None] * (len(dep["inputs"]) - 1) + [1]  # pressing Enter in the LR field

    @SETTINGS
    @given(st.one_of(JSON_VALUES, st.just(TOKEN[:-1]), st.just(TOKEN + "x"), st.just("")))
    def check(token: Any) -> None:
        body = envelope(dep, [*inputs, *states[:2], token], "loss", 1)
        body["changedPropIds"] = [f"{ids.LR_INPUT}.n_submit"]
        status, data, _, _ = page.http.call(
            body["output"], body["outputs"], body["inputs"], body["state"], body["changedPropIds"]
        )
        assert status == 200
        shown = json.dumps(data)
        assert "refused" in shown and TOKEN not in shown

    check()
    with Store(ctl.db, readonly=True) as store:
        assert store.commands(streamer.run_id) == []


def test_nothing_lost_and_nothing_leaked(served: tuple[ServeProcess, Streamer, Page]) -> None:
    ctl, streamer, page = served
    report = streamer.stop()
    assert report.unacked_points == 0 and report.dropped_points == 0
    assert report.acked_points == 2 * streamer.steps
    counts = step_counts(ctl.db, streamer.run_id)
    assert len(counts) == streamer.steps and set(counts.values()) == {2}
    log = "".join(ctl.lines)
    assert "Traceback" not in log
    assert TOKEN not in log
    # Rate-limited: a few lines per kind, not one per bad request.
    refused = sum("malformed callback request" in line for line in ctl.lines)
    assert refused <= 20, refused
    assert page.statuses and max(page.statuses) < 500
