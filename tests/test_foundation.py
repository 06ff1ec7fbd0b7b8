"""The project's foundation: layering, stub freshness, command lines."""

from __future__ import annotations

import os
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
        entry = "from runners.agent import main" if exe == "tierdeck-node" else "from cli import main"
        code = f"import sys; sys.argv=['{exe}','--help']; {entry}; sys.exit(main())"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        assert "usage:" in proc.stdout


def test_the_command_line_configures_every_command_without_qt() -> None:
    code = (
        "import sys, importlib, cli\n"
        "cli.build_parser()\n"
        "for c in cli.COMMANDS: importlib.import_module(c.module)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph', 'widgets'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_layer_below_the_command_line_imports_by_string() -> None:
    """import-linter sees only import statements: app/, runners/ and discovery/ never use import_module."""
    offenders = [str(p.relative_to(ROOT)) for package in ("app", "runners", "discovery")
                 for p in (ROOT / package).rglob("*.py")
                 if "_proto" not in p.parts and ("import_module(" in p.read_text() or "__import__(" in p.read_text())]
    assert offenders == []
    import widgets

    assert all(module.startswith("widgets.") for module in widgets._EXPORTS.values())


def test_every_command_module_lives_in_the_command_line_package() -> None:
    import cli

    assert all(c.module.startswith("cli._cmd_") for c in cli.COMMANDS)
    assert sorted(p.stem for p in (ROOT / "cli").glob("_cmd_*.py")) == sorted(c.module[4:] for c in cli.COMMANDS)
    assert not list((ROOT / "app").glob("_cmd_*.py")) and not list((ROOT / "widgets").glob("_cmd_*.py"))


def _tierdeck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, cwd=ROOT, env=env)


def test_versions_come_from_the_package_metadata() -> None:
    import tomllib
    from importlib.metadata import version

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert version("tierdeck") == declared
    tierdeck = _tierdeck("--version")
    node = subprocess.run([sys.executable, "-m", "runners.agent", "--version"], capture_output=True, text=True,
                          cwd=ROOT)
    assert (tierdeck.returncode, tierdeck.stdout.strip()) == (0, f"tierdeck {declared}")
    assert node.returncode == 0 and node.stdout.strip().endswith(declared), node.stdout + node.stderr


def test_bare_tierdeck_prints_help_and_is_a_usage_error() -> None:
    proc = _tierdeck()
    assert proc.returncode == 2
    assert "usage: tierdeck" in proc.stderr and "console" in proc.stderr and "deploy" in proc.stderr


def test_console_and_demo_without_the_console_extra_say_how_to_install_it(tmp_path: Path) -> None:
    # The console extra made unfindable, as in a node-only install (sys.modules[name] = None hides a package).
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['PySide6'] = None\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    for command in ("console", "demo"):
        proc = _tierdeck(command, env=env)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "pip install 'tierdeck[console]'" in lines[0] and "PySide6" in lines[0], lines


# widgets/_canvas.py is being split (issue 11); its logger moves under tierdeck.* with the split.
LOGGER_PENDING = {"widgets/_canvas.py"}


def test_every_logger_is_under_tierdeck() -> None:
    """Operators filter and configure one tree: `tierdeck.*` (logging.getLogger("tierdeck")...)."""
    import re

    call = re.compile(r"getLogger\(([^)]*)\)")
    wrong = [f"{p.relative_to(ROOT)}: getLogger({arg})"
             for package in ("cli", "app", "widgets", "runners", "discovery") for p in (ROOT / package).rglob("*.py")
             if "_proto" not in p.parts and str(p.relative_to(ROOT)) not in LOGGER_PENDING
             for arg in call.findall(p.read_text())
             if not re.fullmatch(r'f?"tierdeck\.[^"]*"', arg.strip())]
    assert wrong == []
