"""A real X display for the operator's flows: Xvfb + openbox, the console as a child process on it, and xdotool.

`XDisplay` starts a private Xvfb on a display number no other run uses, and a window manager on it
(Qt's real drag and drop needs both). `Console` starts `tierdeck demo --probe FILE` there and reads
the probe (widgets/_probe.py): where the palette items, lanes, node cards and stage chips are on
the screen, and what the window shows. `Operator` moves the real mouse and presses real keys with
xdotool — a real QDrag, real focus — and counts every action it performs. Used by
tests/test_display.py and bench/compose.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("Xvfb", "xdotool", "openbox")


def missing_tools() -> list[str]:
    """The X tools this machine lacks (install: apt-get install xvfb xdotool openbox)."""
    return [t for t in TOOLS if shutil.which(t) is None]


def _free_display() -> int:
    for n in range(100 + os.getpid() % 300, 1000):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    raise RuntimeError("no free X display number")


class XDisplay:
    """A private Xvfb screen with openbox on it; `env` is the environment for programs shown there."""

    def __init__(self, width: int = 1366, height: int = 768) -> None:
        self.number = _free_display()
        self.name = f":{self.number}"
        self.size = (width, height)
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def env(self) -> dict[str, str]:
        """os.environ with DISPLAY set and the Qt platform forced to xcb."""
        env = dict(os.environ)
        env["DISPLAY"] = self.name
        env["QT_QPA_PLATFORM"] = "xcb"
        return env

    def __enter__(self) -> XDisplay:
        xvfb = subprocess.Popen(["Xvfb", self.name, "-screen", "0", f"{self.size[0]}x{self.size[1]}x24",
                                 "-nolisten", "tcp", "-noreset"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(xvfb)
        deadline = time.monotonic() + 20
        while not Path(f"/tmp/.X11-unix/X{self.number}").exists():
            if xvfb.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Xvfb {self.name} did not start")
            time.sleep(0.05)
        self.procs.append(subprocess.Popen(["openbox"], env=self.env, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()

    def screenshot(self, path: Path) -> Path:
        """The whole screen as PNG (ImageMagick's import, else xwd is not tried: None when missing)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if shutil.which("import"):
            subprocess.run(["import", "-display", self.name, "-window", "root", str(path)], check=False,
                           timeout=20, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return path


class Console:
    """`tierdeck demo --empty --probe FILE` on an X display, and its probe."""

    def __init__(self, display: XDisplay, folder: Path, *, device: int = 2, edge: int = 1, cloud: int = 1,
                 rate: float = 10.0, empty: bool = True, extra: tuple[str, ...] = ()) -> None:
        self.display = display
        self.folder = folder
        self.probe_path = folder / "probe.json"
        folder.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "cli", "demo", "--probe", str(self.probe_path), "--device", str(device),
                "--edge", str(edge), "--cloud", str(cloud), "--rate", str(rate), "--data-dir", str(folder / "fleet"),
                "--no-mdns"]
        if empty:
            args.append("--empty")
        args += extra
        env = display.env
        env["XDG_CONFIG_HOME"] = str(folder / "config")   # QSettings of this run only
        env["XDG_DATA_HOME"] = str(folder / "data")
        self.log = (folder / "console.log").open("wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def probe(self) -> dict[str, Any]:
        """The latest probe ({} before the first)."""
        try:
            return json.loads(self.probe_path.read_text())
        except (OSError, ValueError):
            return {}

    def wait(self, what: Callable[[dict[str, Any]], object], timeout: float = 60.0, why: str = "") -> dict[str, Any]:
        """Poll the probe until `what(probe)` is true; raise with the last probe's state otherwise."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the console exited ({self.proc.returncode}); log: {self.log_tail()}")
            last = self.probe()
            try:
                if last and what(last):
                    return last
            except (KeyError, IndexError, TypeError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"waited {timeout:.0f} s for {why or what}; last probe: "
                           f"{json.dumps({k: last.get(k) for k in ('stages', 'dialogs', 'status', 'deploy')})[:1500]}")

    def log_tail(self) -> str:
        """The last lines of the console's output."""
        if not self.log.closed:
            self.log.flush()
        return (self.folder / "console.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """Kill the console (its agents and sensors die with it)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


class Operator:
    """The real mouse and keyboard (xdotool) on a display; counts clicks, drags and key presses."""

    def __init__(self, display: XDisplay) -> None:
        self.display = display
        self.actions: list[str] = []

    def _xdo(self, *args: str) -> None:
        subprocess.run(["xdotool", *args], env=self.display.env, check=True, timeout=20)

    def drag(self, start: list[int], end: list[int], what: str = "") -> None:
        """Press at `start`, move in steps (Qt starts a QDrag after a few pixels), release at `end`: one action."""
        (x0, y0), (x1, y1) = start, end
        self._xdo("mousemove", str(x0), str(y0))
        time.sleep(0.15)
        self._xdo("mousedown", "1")
        time.sleep(0.15)
        for i in range(1, 13):
            self._xdo("mousemove", str(int(x0 + (x1 - x0) * i / 12)), str(int(y0 + (y1 - y0) * i / 12)))
            time.sleep(0.04)
        time.sleep(0.3)
        self._xdo("mouseup", "1")
        time.sleep(0.3)
        self.actions.append(f"drag {what}".strip())

    def click(self, at: list[int], what: str = "") -> None:
        """One left click at a screen point."""
        self._xdo("mousemove", str(at[0]), str(at[1]))
        time.sleep(0.1)
        self._xdo("click", "1")
        time.sleep(0.2)
        self.actions.append(f"click {what}".strip())

    def key(self, *keys: str) -> None:
        """Press keys (xdotool names: ctrl+d, F2, Return, Escape); one action each."""
        for k in keys:
            self._xdo("key", "--clearmodifiers", k)
            self.actions.append(f"key {k}")
            time.sleep(0.15)

    def type(self, text: str) -> None:
        """Type text; one action per character (every key press counts)."""
        self._xdo("type", "--delay", "60", text)
        self.actions += [f"key {c}" for c in text]
        time.sleep(0.2)
