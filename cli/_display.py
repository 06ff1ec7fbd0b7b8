"""Can a window open here? The display and the system libraries of Qt's xcb plugin, checked before Qt starts.

Standard library only: tasks.py loads this file by path before anything is installed, so that a machine
without a display or without the X libraries hears it before the long install, not after it from Qt's
own message (which blames libxcb-cursor0 whatever is missing).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

# soname -> (Debian/Ubuntu package, Fedora package): what libqxcb.so (PySide6 6.8-6.11) links directly.
XCB_LIBRARIES: dict[str, tuple[str, str]] = {
    "libxcb.so.1": ("libxcb1", "libxcb"),
    "libX11.so.6": ("libx11-6", "libX11"),
    "libX11-xcb.so.1": ("libx11-xcb1", "libX11-xcb"),
    "libxcb-cursor.so.0": ("libxcb-cursor0", "xcb-util-cursor"),
    "libxcb-icccm.so.4": ("libxcb-icccm4", "xcb-util-wm"),
    "libxcb-image.so.0": ("libxcb-image0", "xcb-util-image"),
    "libxcb-keysyms.so.1": ("libxcb-keysyms1", "xcb-util-keysyms"),
    "libxcb-render-util.so.0": ("libxcb-render-util0", "xcb-util-renderutil"),
    "libxcb-util.so.1": ("libxcb-util1", "xcb-util"),
    "libxcb-randr.so.0": ("libxcb-randr0", "libxcb"),
    "libxcb-render.so.0": ("libxcb-render0", "libxcb"),
    "libxcb-shape.so.0": ("libxcb-shape0", "libxcb"),
    "libxcb-shm.so.0": ("libxcb-shm0", "libxcb"),
    "libxcb-sync.so.1": ("libxcb-sync1", "libxcb"),
    "libxcb-xfixes.so.0": ("libxcb-xfixes0", "libxcb"),
    "libxcb-xkb.so.1": ("libxcb-xkb1", "libxcb"),
    "libxkbcommon.so.0": ("libxkbcommon0", "libxkbcommon"),
    "libxkbcommon-x11.so.0": ("libxkbcommon-x11-0", "libxkbcommon-x11"),
    "libGL.so.1": ("libgl1", "libglvnd-glx"),
    "libEGL.so.1": ("libegl1", "libglvnd-egl"),
    "libfontconfig.so.1": ("libfontconfig1", "fontconfig"),
    "libfreetype.so.6": ("libfreetype6", "freetype"),
    "libdbus-1.so.3": ("libdbus-1-3", "dbus-libs"),
    "libglib-2.0.so.0": ("libglib2.0-0", "glib2"),
}
HEADLESS = "--headless --duration 30 --screenshot demo.png --json demo.json"
_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found", re.MULTILINE)


def xcb_plugin() -> Path | None:
    """PySide6's xcb platform plugin (libqxcb.so), found without importing Qt; None when PySide6 is absent."""
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations:
        return None
    plugin = Path(next(iter(spec.submodule_search_locations))) / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    return plugin if plugin.exists() else None


def missing_from_ldd(library: Path) -> list[str]:
    """The shared libraries `ldd` cannot resolve for `library` (direct and indirect), in order, each once."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    proc = subprocess.run([ldd, str(library)], capture_output=True, text=True, timeout=30)
    return list(dict.fromkeys(_NOT_FOUND.findall(proc.stdout + proc.stderr)))


def installed_libraries() -> set[str] | None:
    """Sonames the dynamic linker knows (`ldconfig -p`), or None when that cannot be asked."""
    ldconfig = shutil.which("ldconfig") or ("/sbin/ldconfig" if Path("/sbin/ldconfig").exists() else None)
    if ldconfig is None:
        return None
    try:
        proc = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    if proc.returncode != 0:
        return None
    return {line.split()[0] for line in proc.stdout.splitlines()[1:] if line.strip()}


def missing_known(available: Iterable[str] | None) -> list[str]:
    """Of the libraries libqxcb.so needs, those not in `available` (none when that is unknown)."""
    if available is None:
        return []
    have = set(available)
    return [name for name in XCB_LIBRARIES if name not in have]


def install_command(missing: Iterable[str]) -> str:
    """The package-manager commands that provide `missing` sonames (Debian/Ubuntu and Fedora)."""
    names = list(missing)
    debian = sorted({XCB_LIBRARIES.get(n, (n, n))[0] for n in names})
    fedora = sorted({XCB_LIBRARIES.get(n, (n, n))[1] for n in names})
    return (f"  Debian/Ubuntu: sudo apt-get install {' '.join(debian)}\n"
            f"  Fedora:        sudo dnf install {' '.join(fedora)}")


def window_problem(command: str, env: Mapping[str, str] | None = None, *, plugin: Path | None = None,
                   available: Iterable[str] | None = None, before_install: bool = False,
                   demo: str = "tierdeck demo") -> str | None:
    """Why a window of `tierdeck COMMAND` cannot open here (one message with the fix), or None when it can.

    After the install the real plugin is asked (`ldd` on libqxcb.so); before it (`before_install`), the
    dynamic linker's list is compared with the libraries the plugin is known to need.
    """
    env = os.environ if env is None else env
    if not sys.platform.startswith("linux"):
        return None
    chosen = env.get("QT_QPA_PLATFORM", "")
    if chosen and not chosen.startswith("xcb"):
        return None  # offscreen, wayland, vnc...: the operator chose; Qt's own message applies
    headless = f"Without a window: {demo} {HEADLESS}"
    if command == "console":
        headless += " (the headless commands: tierdeck nodes|status|deploy|export)"
    if not env.get("DISPLAY"):
        if env.get("WAYLAND_DISPLAY") and not chosen:
            return None  # Qt uses its Wayland plugin, which needs none of the X libraries
        return (f"tierdeck {command}: no display to open the window on (DISPLAY is not set; over SSH use "
                f"`ssh -X` or run it on the desktop).\n{headless}")
    if before_install:
        missing = missing_known(installed_libraries() if available is None else available)
    else:
        plugin = plugin or xcb_plugin()
        missing = missing_from_ldd(plugin) if plugin is not None else []
    if not missing:
        return None
    return (f"tierdeck {command}: the window cannot open: Qt's xcb platform plugin needs system libraries "
            f"that are missing here: {', '.join(missing)}. Install them:\n{install_command(missing)}\n{headless}")
