"""What a browser may send to the callbacks, made safe before any callback uses it.

Every value a callback receives came over HTTP from something that may not be our page: a
script, a fuzzer, a stale tab from an older version. Each function here takes whatever
arrived and returns a value of the type and range the callback expects, or the neutral
default (no runs, no cursor, the default smoothing), so a hostile value leads to "nothing to
show", never to an exception deep in a figure builder. Pure: no Dash, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import msgspec

__all__ = [
    "MAX_RUNS",
    "MAX_TEXT",
    "Cursor",
    "choice",
    "choices",
    "cursor",
    "run_id",
    "run_ids",
    "smoothing",
    "text",
    "x_range",
]

#: Most runs one selection may name (the run list shows at most 200; charts get slow far sooner).
MAX_RUNS = 50
#: Longest run id, filter text or typed value kept; run ids are 12 hex characters.
MAX_TEXT = 200
_MAX_TRACES = 400  # traces one panel's cursor may describe
_MAX_POINTS = 100_000  # points per trace a cursor may ask for (ours ask for at most 2000)


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """A string of at most ``limit`` characters; anything that is not a string gives ``""``."""
    return value[:limit] if isinstance(value, str) else ""


def run_id(value: Any) -> str | None:
    """One run id, or None when ``value`` is not a plausible one."""
    return value if isinstance(value, str) and 0 < len(value) <= MAX_TEXT else None


def run_ids(value: Any) -> list[str]:
    """A list of at most :data:`MAX_RUNS` run ids; non-string entries are dropped."""
    if not isinstance(value, list):
        return []
    return [v for v in value[:MAX_RUNS] if run_id(v) is not None]


def choice(value: Any, allowed: Iterable[str], default: str) -> str:
    """``value`` when it is one of ``allowed``, else ``default``."""
    return value if isinstance(value, str) and value in set(allowed) else default


def choices(value: Any, allowed: Iterable[str]) -> set[str]:
    """The entries of a checklist value that are among ``allowed``."""
    ok = set(allowed)
    if not isinstance(value, list):
        return set()
    return {v for v in value if isinstance(v, str) and v in ok}


def smoothing(value: Any, default: float = 0.9) -> float:
    """The loss smoothing factor in [0, 0.999]; ``default`` when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return default
    return min(max(float(value), 0.0), 0.999)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def x_range(relayout: Any) -> tuple[bool, list[float] | None]:
    """(changed, range) from a graph's relayoutData; range None means autorange.

    Plotly sends the new x range as ``xaxis.range[0]`` / ``xaxis.range[1]`` after a drag and as
    ``xaxis.range`` on some programmatic relayouts; a double click sends ``xaxis.autorange``.
    Anything else (a y-only zoom, a malformed or non-finite range) changes nothing.
    """
    if not isinstance(relayout, dict):
        return False, None
    if relayout.get("xaxis.autorange") is True:
        return True, None
    if "xaxis.range[0]" in relayout and "xaxis.range[1]" in relayout:
        pair: Any = [relayout["xaxis.range[0]"], relayout["xaxis.range[1]"]]
    else:
        pair = relayout.get("xaxis.range")
    if not isinstance(pair, list) or len(pair) != 2:
        return False, None
    lo, hi = _finite(pair[0]), _finite(pair[1])
    if lo is None or hi is None:
        return False, None
    return True, [min(lo, hi), max(lo, hi)]


class Cursor(msgspec.Struct, omit_defaults=True):
    """The shape of a panel's cursor (see :mod:`.panels`), as the browser hands it back."""

    panel: str
    runs: list[str]
    range: tuple[float, float] | None = None
    seq: int | None = None
    keys: list[str] | None = None
    last: list[int] | None = None
    count: list[int] | None = None
    n_out: int | None = None
    markers: str | None = None


def cursor(value: Any) -> dict[str, Any] | None:
    """A panel cursor as :mod:`.panels` built it, or None when ``value`` is not one.

    The cursor lives in the browser, so it is checked field by field: types, lengths that
    agree, a finite range and a points budget no larger than ours.
    """
    if not isinstance(value, dict):
        return None
    try:
        c = msgspec.convert(value, Cursor)
    except msgspec.ValidationError:
        return None
    if len(c.panel) > MAX_TEXT or len(c.runs) > MAX_RUNS or not c.runs:
        return None
    if c.range is not None and not all(math.isfinite(v) for v in c.range):
        return None
    lines = (c.keys, c.last, c.count)
    if any(x is not None for x in lines):
        if c.keys is None or c.last is None or c.count is None or c.n_out is None:
            return None
        if not len(c.keys) == len(c.last) == len(c.count) <= _MAX_TRACES:
            return None
        if not 1 <= c.n_out <= _MAX_POINTS:
            return None
    out = msgspec.to_builtins(c)
    out.setdefault("range", None)  # panels read it with .get and with []
    if c.range is not None:
        out["range"] = list(c.range)
    return out
