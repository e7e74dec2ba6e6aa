"""Call a served Dash app's callbacks over real HTTP, as the browser does (tests and bench)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any


class DashHTTP:
    """POSTs to ``/_dash-update-component`` of the app at ``url``.

    ``call`` takes the callback's output spec string (from ``/_dash-dependencies``), its
    inputs and state as ``(id, property, value)`` entries (a list of them for ALL patterns)
    and returns ``(status, json_or_None, response_bytes, seconds)``.
    """

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        with urllib.request.urlopen(f"{self.url}/_dash-dependencies", timeout=10) as r:
            self.deps = json.loads(r.read())

    def output_of(self, contains: str) -> str:
        """The output spec of the one callback whose output contains ``contains``."""
        found = [d["output"] for d in self.deps if contains in d["output"]]
        if len(found) != 1:
            raise LookupError(f"{len(found)} callbacks output {contains!r}: {found}")
        return found[0]

    @staticmethod
    def entry(cid: Any, prop: str, value: Any = None) -> dict[str, Any]:
        return {"id": cid, "property": prop, "value": value}

    def call(
        self,
        output: str,
        outputs: Any,
        inputs: list,
        state: list,
        changed: list[str],
    ) -> tuple[int, Any, int, float]:
        body = json.dumps({"output": output, "outputs": outputs, "inputs": inputs,
                           "state": state, "changedPropIds": changed}).encode()  # fmt: skip
        req = urllib.request.Request(
            f"{self.url}/_dash-update-component", data=body,
            headers={"Content-Type": "application/json"}, method="POST",
        )  # fmt: skip
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        dt = time.perf_counter() - t0
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        return status, data, len(raw), dt
