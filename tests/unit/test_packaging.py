"""Import hygiene and public names."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest


def test_client_import_pulls_in_neither_dash_plotly_nor_the_monitor() -> None:
    code = (
        "import sys; from lrpilot.client import Monitor; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('dash', 'plotly') "
        "or m.startswith(('lrpilot.monitor', 'lrpilot.dashboard'))]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_and_protocol_do_not_import_torch() -> None:
    code = (
        "import sys, lrpilot.monitor.cli, lrpilot.monitor.server, lrpilot.client.protocol; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("module", ["lrpilot.client", "lrpilot.monitor", "lrpilot.dashboard"])
def test_all_lists_exactly_the_public_names(module: str) -> None:
    mod = importlib.import_module(module)
    exported = set(getattr(mod, "__all__", ()))
    for name in exported:
        assert getattr(mod, name) is not None, f"{module}.__all__ names missing {name}"
    public = {n for n in vars(mod) if not n.startswith("_")} - {"annotations", "TYPE_CHECKING",
                                                               "Any"}  # fmt: skip
    submodules = {n for n in public if type(getattr(mod, n)).__name__ == "module"}
    assert public - submodules <= exported, f"public but not in __all__: {public - exported}"
