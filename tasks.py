#!/usr/bin/env python3
"""Newcomer entry point: `python3 tasks.py demo` or `python3 tasks.py test`.

Creates ./.venv with Python 3.11, installs tierdeck with the extras the task needs,
then runs it. Needs nothing but Python 3.11 and pip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("TIERDECK_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def _ensure_venv(extras: str) -> None:
    if sys.version_info[:2] != (3, 11):
        sys.exit(f"tierdeck needs Python 3.11 (this is {sys.version.split()[0]})")
    if not (BIN / "python").exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / f".installed-{extras}"
    marker = (ROOT / "pyproject.toml").stat().st_mtime_ns
    if not stamp.exists() or stamp.read_text() != str(marker):
        subprocess.run([BIN / "python", "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run([BIN / "python", "-m", "pip", "install", "-q", "-e", f".[{extras}]"], check=True, cwd=ROOT)
        stamp.write_text(str(marker))


def test(args: list[str]) -> int:
    """Install console + dev extras and run the whole test suite (no tests collected is a failure)."""
    _ensure_venv("console,dev")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    rc = subprocess.run([BIN / "python", "-m", "pytest", "-q", "-rs", *args], cwd=ROOT, env=env).returncode
    if rc == 5:
        print("no tests were collected: that is a failure", file=sys.stderr)
        return 1
    return rc


def demo(args: list[str]) -> int:
    """Install the console and start the demo fleet plus console."""
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
