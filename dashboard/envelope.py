"""The shape of a Dash callback request, checked before Dash parses it.

Dash trusts the JSON body of ``POST /_dash-update-component``: a missing key, a list where it
expects an object or one input too few ends in an IndexError deep inside Dash, a 500 and a
traceback in the log for each request. :func:`problem` checks the envelope (which callback,
how many inputs and states, each ``{"id", "property", "value"}`` entry naming what the
callback declared) so a malformed request is refused with a 400 and one line. The *values*
inside are the callbacks' business (see :mod:`.inputs`). Pure: no Flask, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_BODY_BYTES", "problem"]

#: Largest callback request accepted. Ours carry a few small cursors: far below this.
MAX_BODY_BYTES = 2 * 1024 * 1024
_MAX_MATCHES = 500  # entries one ALL pattern may expand to
_WILDCARDS = (["ALL"], ["ALLSMALLER"])


def _pattern(spec_id: str) -> dict[str, Any] | None:
    """The id dict of a pattern-matching spec (``'{"panel":["ALL"],...}'``), else None."""
    if not spec_id.startswith("{"):
        return None
    try:
        parsed = json.loads(spec_id)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _entry_ok(entry: Any, spec: Mapping[str, Any], pattern: dict[str, Any] | None) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("property"), str):
        return False
    # An output of an allow_duplicate callback carries "@<hash>" after its property.
    if entry["property"].split("@", 1)[0] != spec["property"]:
        return False
    cid = entry.get("id")
    if pattern is None:
        return cid == spec["id"]
    # Every fixed key of the pattern must match; wildcard keys take a string or number.
    if not isinstance(cid, dict) or set(cid) != set(pattern):
        return False
    for key, want in pattern.items():
        got = cid[key]
        if isinstance(want, list):
            if isinstance(got, bool) or not isinstance(got, (str, int, float)):
                return False
        elif got != want:
            return False
    return True


def _slot_ok(value: Any, spec: Mapping[str, Any]) -> bool:
    """One input, state or output slot: an entry, or a list of them for an ALL pattern."""
    pattern = _pattern(spec["id"])
    if pattern is not None and any(v in _WILDCARDS for v in pattern.values()):
        return (
            isinstance(value, list)
            and len(value) <= _MAX_MATCHES
            and all(_entry_ok(e, spec, pattern) for e in value)
        )
    return _entry_ok(value, spec, pattern)


def _specs(items: Any) -> list[dict[str, Any]]:
    """``[{"id", "property"}]`` from a callback map's inputs, state or Output objects."""
    out = []
    for item in items or ():
        if isinstance(item, dict):
            out.append(item)
        else:  # a dash.Output; a pattern's id is stringified as in the map's inputs
            out.append({"id": item.component_id_str(), "property": item.component_property})
    return out


def problem(body: Any, callback_map: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Why ``body`` is not a well-formed request for one of ``callback_map``'s callbacks.

    Returns None when it is well formed, else a short reason (no values echoed: they may be
    huge or hostile).
    """
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    output = body.get("output")
    if not isinstance(output, str) or output not in callback_map:
        return "no callback has that output"
    cb = callback_map[output]
    for key in ("inputs", "state"):
        got = body.get(key, [])
        want = _specs(cb.get(key))
        if not isinstance(got, list) or len(got) != len(want):
            return f"{key}: expected {len(want)} entries"
        for value, spec in zip(got, want, strict=True):
            if not _slot_ok(value, spec):
                return f"{key}: an entry does not match {spec['id']}.{spec['property']}"
    outs = _specs(cb.get("output"))
    got_outs = body.get("outputs")
    if output.startswith(".."):  # a multi-output callback: one slot per output
        if not isinstance(got_outs, list) or len(got_outs) != len(outs):
            return f"outputs: expected {len(outs)} entries"
    else:
        got_outs = [got_outs]
    for value, spec in zip(got_outs, outs, strict=True):
        if not _slot_ok(value, spec):
            return f"outputs: an entry does not match {spec['id']}.{spec['property']}"
    changed = body.get("changedPropIds", [])
    if not isinstance(changed, list) or len(changed) > _MAX_MATCHES:
        return "changedPropIds is not a short list"
    if not all(isinstance(c, str) and len(c) <= 1000 for c in changed):
        return "changedPropIds holds something other than short strings"
    return None
