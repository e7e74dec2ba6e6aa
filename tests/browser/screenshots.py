"""Screenshots of the browser tests, saved to tests/browser/artifacts/ (gitignored).

A module of its own, not conftest.py: tests/browser and tests/reliability each have a
conftest, and ``from conftest import ...`` would find whichever pytest imported first.
"""

from __future__ import annotations

from pathlib import Path

ARTIFACTS = Path(__file__).with_name("artifacts")


def screenshot(page: object, name: str) -> Path:
    """Save a full-page screenshot as a test artifact and print where."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    print(f"screenshot: {path}")
    return path
