"""tasks.py picks a supported Python (3.11-3.13) or says exactly what to install."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import ROOT


def _tasks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tasks_under_test", ROOT / "tasks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_python(folder: Path, name: str, version: str, rc: int = 0) -> Path:
    path = folder / name
    path.write_text(f"#!/bin/sh\necho {version}\nexit {rc}\n")
    path.chmod(0o755)
    return path


def test_the_running_python_is_used_when_supported() -> None:
    assert _tasks().find_python(running=(3, 12)) == sys.executable


def test_an_unsupported_python_finds_the_newest_supported_one_that_runs(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # python3.13 is a shim that refuses (pyenv does that for versions it has not selected): skipped.
    _fake_python(tmp_path, "python3.13", "", rc=127)
    python312 = _fake_python(tmp_path, "python3.12", "3 12")
    _fake_python(tmp_path, "python3.11", "3 11")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
    assert _tasks().find_python(running=(3, 10)) == str(python312)


def test_a_pyenv_version_that_is_not_selected_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "pyenv" / "versions" / "3.13.0" / "bin"
    bin_dir.mkdir(parents=True)
    python313 = _fake_python(bin_dir, "python3.13", "3 13")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    assert _tasks().find_python(running=(3, 14)) == str(python313)


def test_no_supported_python_says_what_to_install(tmp_path: Path) -> None:
    # A Python that is not 3.11-3.13 runs tasks.py: simulated by a sitecustomize that reports 3.10.
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.version_info = (3, 10, 0, 'final', 0)\n")
    env = {"PATH": str(tmp_path / "empty"), "PYENV_ROOT": str(tmp_path / "no-pyenv"), "PYTHONPATH": str(tmp_path),
           "TIERDECK_VENV": str(tmp_path / "venv"), "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "tasks.py"), "test"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=60)
    assert proc.returncode == 1
    assert "needs Python 3.11, 3.12 or 3.13" in proc.stderr
    assert "sudo apt-get install python3.12 python3.12-venv" in proc.stderr
    assert "sudo dnf install python3.13" in proc.stderr
    assert not (tmp_path / "venv").exists(), "nothing is created without a supported Python"
    assert "Traceback" not in proc.stderr
