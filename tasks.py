#!/usr/bin/env python3
"""Newcomer entry point: `python3 tasks.py demo` or `python3 tasks.py test`.

Creates ./.venv with Python 3.11, 3.12 or 3.13 (the one running this file if it is one of them,
else python3.13, python3.12 or python3.11 from the PATH), installs tierdeck with the extras the
task needs, then runs it. Needs nothing but one of those Pythons with venv and pip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("TIERDECK_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
SUPPORTED = ((3, 13), (3, 12), (3, 11))  # newest first: the order in which the PATH is searched

INSTALL_PYTHON = (
    "tierdeck needs Python 3.11, 3.12 or 3.13 with venv (this is Python {this}, and none of python3.13, "
    "python3.12, python3.11 runs from the PATH). Install one, then run this command again:\n"
    "  Debian/Ubuntu: sudo apt-get install python3.12 python3.12-venv   (Debian 13: python3.13 python3.13-venv)\n"
    "  Fedora:        sudo dnf install python3.13\n"
    "  macOS:         brew install python@3.13\n"
    "  Windows:       winget install Python.Python.3.13"
)


def _version_of(python: str | Path) -> tuple[int, int] | None:
    """(major, minor) of an interpreter, or None when it does not run (e.g. a pyenv shim of a version not selected)."""
    try:
        proc = subprocess.run([str(python), "-c", "import sys; print(*sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = proc.stdout.split()
    if proc.returncode != 0 or len(parts) != 2:
        return None
    return int(parts[0]), int(parts[1])


def find_python(running: tuple[int, int] | None = None) -> str | None:
    """A supported interpreter: this one if supported, else the newest supported one on the PATH; None if none."""
    if (running or sys.version_info[:2]) in SUPPORTED:
        return sys.executable
    for major, minor in SUPPORTED:
        name = f"python{major}.{minor}"
        for candidate in (shutil.which(name), *_pyenv_candidates(name)):
            if candidate and _version_of(candidate) == (major, minor):
                return candidate
    return None


def _pyenv_candidates(name: str) -> list[str]:
    """Interpreters pyenv installed but did not select (its shim refuses them): `~/.pyenv/versions/3.X.*/bin/NAME`."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    version = name[len("python"):]
    return [str(p) for p in sorted(root.glob(f"{version}.*/bin/{name}"), reverse=True)]


def _create_venv() -> None:
    python = find_python()
    if python is None:
        sys.exit(INSTALL_PYTHON.format(this=sys.version.split()[0]))
    if (BIN / "python").exists() or VENV.exists():
        print(f"re-creating {VENV}: its Python is not 3.11, 3.12 or 3.13", flush=True)
        shutil.rmtree(VENV)
    version = ".".join(map(str, _version_of(python) or ()))
    print(f"creating virtual environment in {VENV} with Python {version} ({python})", flush=True)
    proc = subprocess.run([python, "-m", "venv", str(VENV)], capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(VENV, ignore_errors=True)
        sys.exit(f"could not create a virtual environment with {python}: {proc.stderr.strip()}\n"
                 f"On Debian/Ubuntu install the venv module: sudo apt-get install python{version}-venv")


def _ensure_venv(extras: str) -> None:
    if _version_of(BIN / "python") not in SUPPORTED:
        _create_venv()
    stamp = VENV / f".installed-{extras}"
    marker = (ROOT / "pyproject.toml").stat().st_mtime_ns
    if not stamp.exists() or stamp.read_text() != str(marker):
        subprocess.run([BIN / "python", "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run([BIN / "python", "-m", "pip", "install", "-q", "-e", f".[{extras}]"], check=True, cwd=ROOT)
        stamp.write_text(str(marker))


def test(args: list[str]) -> int:
    """Install console + dev extras and run the test suite (no tests collected is a failure)."""
    _ensure_venv("console,dev")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    rc = subprocess.run([BIN / "python", "-m", "pytest", "-q", "-rs", *args], cwd=ROOT, env=env).returncode
    if rc == 5:
        print("no tests were collected: that is a failure", file=sys.stderr)
        return 1
    return rc


def _window_problem() -> str | None:
    """Why the demo's window cannot open (no display, missing X libraries), checked before the long install."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tierdeck_display", ROOT / "cli" / "_display.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.window_problem("demo", before_install=True, demo="python3 tasks.py demo")  # type: ignore[no-any-return]


def demo(args: list[str]) -> int:
    """Install the console and start the demo fleet plus console (first: can its window open?)."""
    if "--headless" not in args:
        problem = _window_problem()
        if problem:
            print(problem, file=sys.stderr)
            return 2
    _ensure_venv("console")
    return subprocess.run([BIN / "tierdeck", "demo", *args], cwd=ROOT).returncode


def main() -> int:
    tasks = {"test": test, "demo": demo}
    if len(sys.argv) < 2 or sys.argv[1] not in tasks:
        print(__doc__)
        return 2
    return tasks[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
