"""The window opens or says exactly why not: display and Qt xcb plugin libraries, checked before Qt starts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from cli._display import XCB_LIBRARIES, install_command, missing_from_ldd, window_problem

X = {"DISPLAY": ":99"}


@pytest.fixture()
def fake_plugin(tmp_path: Path) -> Path:
    """A real shared object named libqxcb.so that links libz and a library that is no longer there."""
    if shutil.which("gcc") is None or shutil.which("ldd") is None:
        pytest.skip("needs gcc and ldd to build the fake plugin")
    (tmp_path / "gone.c").write_text("int gone(void) { return 1; }\n")
    (tmp_path / "plugin.c").write_text("int gone(void);\nint plugin(void) { return gone(); }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libtierdeck-gone.so.3", "-o",
                    str(tmp_path / "libtierdeck-gone.so.3"), str(tmp_path / "gone.c")], check=True)
    plugin = tmp_path / "libqxcb.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(plugin), str(tmp_path / "plugin.c"),
                    str(tmp_path / "libtierdeck-gone.so.3"), "-lz"], check=True)
    (tmp_path / "libtierdeck-gone.so.3").unlink()
    return plugin


def test_a_missing_library_of_the_plugin_is_named_with_the_command_that_installs_it(fake_plugin: Path) -> None:
    assert missing_from_ldd(fake_plugin) == ["libtierdeck-gone.so.3"]
    message = window_problem("demo", X, plugin=fake_plugin)
    assert message is not None
    assert "libtierdeck-gone.so.3" in message and "sudo apt-get install" in message and "sudo dnf install" in message
    assert "tierdeck demo --headless" in message


def test_a_plugin_whose_libraries_resolve_is_no_problem(fake_plugin: Path, tmp_path: Path) -> None:
    ok = tmp_path / "ok"
    ok.mkdir()
    (ok / "plugin.c").write_text("int plugin(void) { return 1; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(ok / "libqxcb.so"), str(ok / "plugin.c"), "-lz"], check=True)
    assert window_problem("demo", X, plugin=ok / "libqxcb.so") is None


def test_package_names_for_the_libraries_seen_missing_in_the_field() -> None:
    command = install_command(["libxcb-icccm.so.4", "libxcb-keysyms.so.1"])
    assert "sudo apt-get install libxcb-icccm4 libxcb-keysyms1" in command
    assert "sudo dnf install xcb-util-keysyms xcb-util-wm" in command


def test_before_the_install_the_linkers_list_is_checked() -> None:
    everything_but_two = set(XCB_LIBRARIES) - {"libxcb-icccm.so.4", "libxcb-keysyms.so.1"}
    message = window_problem("demo", X, available=everything_but_two, before_install=True)
    assert message is not None and "libxcb-icccm.so.4, libxcb-keysyms.so.1" in message
    assert window_problem("demo", X, available=set(XCB_LIBRARIES), before_install=True) is None


def test_no_display_suggests_headless_and_a_chosen_platform_is_respected() -> None:
    message = window_problem("demo", {})
    assert message is not None and "DISPLAY is not set" in message and "--headless" in message
    assert window_problem("demo", {"QT_QPA_PLATFORM": "offscreen"}) is None
    assert window_problem("demo", {"WAYLAND_DISPLAY": "wayland-0"}) is None
    assert window_problem("demo", {"QT_QPA_PLATFORM": "xcb"}) is not None


def _without_display() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}


@pytest.mark.parametrize("command", ["console", "demo"])
def test_the_commands_say_why_before_qt_starts(command: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "cli", command], capture_output=True, text=True, cwd=ROOT,
                          env=_without_display(), timeout=60)
    assert proc.returncode == 2
    assert "no display" in proc.stderr and "--headless" in proc.stderr and "Traceback" not in proc.stderr
    assert "qt.qpa" not in proc.stderr, "Qt never got to say anything"


def test_tasks_demo_says_why_before_the_install(tmp_path: Path) -> None:
    env = dict(_without_display(), TIERDECK_VENV=str(tmp_path / "venv"))
    proc = subprocess.run([sys.executable, str(ROOT / "tasks.py"), "demo"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 2
    assert "python3 tasks.py demo --headless" in proc.stderr
    assert not (tmp_path / "venv").exists(), "nothing was installed first"
