"""The project's foundation: layering, stub freshness, command lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT

AGENT_SIDE = ["runners", "runners.agent", "discovery"]


def test_agent_side_imports_no_qt() -> None:
    code = (
        "import sys, importlib\n"
        f"for m in {AGENT_SIDE!r}: importlib.import_module(m)\n"
        "banned = ('PySide6', 'pyqtgraph', 'qasync', 'app', 'widgets')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in banned)\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_console_core_imports_no_widgets() -> None:
    modules = sorted(f"app.{p.stem}" for p in (ROOT / "app").glob("*.py") if p.stem != "__init__")
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m in ('PySide6.QtWidgets', 'PySide6.QtGui', 'pyqtgraph')"
        " or m.startswith('widgets'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint_imports)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: " in proc.stdout and " broken" not in proc.stdout.replace("0 broken", "")


def test_committed_stubs_are_fresh() -> None:
    proc = subprocess.run([sys.executable, "-m", "runners.protogen", "--check"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, f"stubs are stale, run `python -m runners.protogen`:\n{proc.stderr}"


def test_cli_help() -> None:
    for exe in ("tierdeck-node", "tierdeck"):
        entry = "from runners.agent import main" if exe == "tierdeck-node" else "from app.cli import main"
        code = f"import sys; sys.argv=['{exe}','--help']; {entry}; sys.exit(main())"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        assert "usage:" in proc.stdout
