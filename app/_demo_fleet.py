"""A local demo fleet: `tierdeck-node` and `tierdeck sensor` processes on loopback that die with their parent.

Every child is started in its own process group with PR_SET_PDEATHSIG=SIGKILL (Linux), so when the
console exits — closed window, Ctrl+C, or a crash or SIGKILL of the console itself — the kernel kills
the agents and sensors too: no orphans, no ports left bound. `stop()` is the graceful path (SIGTERM,
then SIGKILL after a grace period).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(f"tierdeck.{__name__}")

# Power profiles of the estimate model per tier (watts at idle, at full CPU): a camera-side SoC,
# an edge box, a cloud GPU server. They make the dashboard's power plots meaningful without sensors.
POWER_PROFILES = {"device": (1.5, 6.0), "edge": (8.0, 30.0), "cloud": (90.0, 350.0)}
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: own process group, and SIGKILL when the parent dies (Linux only; a no-op elsewhere)."""
    os.setpgrp()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


@dataclass
class Child:
    """One child process of the demo, with its stderr kept in a log file."""

    role: str
    name: str
    process: subprocess.Popen[str]
    log_path: Path
    address: str = ""
    node_id: str = ""
    tier: str = ""
    summary: dict[str, object] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None


class DemoFleet:
    """Starts and stops the demo's agents and sensors. Call from the main thread (see _spawn)."""

    def __init__(self, base_dir: Path | None = None, mdns_interface: str = "127.0.0.1") -> None:
        self.base_dir = base_dir or Path(tempfile.mkdtemp(prefix="tierdeck-demo-"))
        self.mdns_interface = mdns_interface
        self.children: list[Child] = []
        self._lock = threading.Lock()

    def _spawn(self, role: str, name: str, argv: list[str]) -> Child:
        log_path = self.base_dir / "logs" / f"{role}-{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if threading.current_thread() is not threading.main_thread():
            # PR_SET_PDEATHSIG fires when the *thread* that forked exits: only the main thread lives as long
            # as the console.
            raise RuntimeError("start demo processes from the main thread")
        handle = open(log_path, "w")
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=handle, stdin=subprocess.DEVNULL, text=True,
                                   preexec_fn=_die_with_parent, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        handle.close()
        child = Child(role, name, process, log_path)
        with self._lock:
            self.children.append(child)
        return child

    def start_agents(self, device: int = 4, edge: int = 2, cloud: int = 1, timeout: float = 60.0) -> list[Child]:
        """Start the agents (mDNS on the loopback interface only) and wait until each is listening."""
        started = []
        for tier, count in (("cloud", cloud), ("edge", edge), ("device", device)):
            for index in range(1, count + 1):
                name = f"{tier}-{index}"
                idle, peak = POWER_PROFILES[tier]
                argv = [sys.executable, "-m", "runners.agent", "--name", name, "--tier", tier,
                        "--listen", "127.0.0.1:0", "--data-dir", str(self.base_dir / "nodes" / name), "--insecure",
                        "--mdns-interface", self.mdns_interface, "--idle-watts", str(idle), "--max-watts", str(peak),
                        "--log-level", "WARNING"]
                child = self._spawn("agent", name, argv)
                child.tier = tier
                started.append(child)
        deadline = time.monotonic() + timeout
        for child in started:
            assert child.process.stdout is not None
            line = _readline(child, deadline)
            info = json.loads(line)
            child.address, child.node_id = str(info["address"]), str(info["node_id"])
        return started

    def start_sensor(self, target: Child, model: str, rate: float, burst_every: float = 30.0,
                     seed: int = 0, duration: float = 0.0) -> Child:
        """A `tierdeck sensor` replaying the bundled held-out patches into `model` on `target`."""
        argv = [sys.executable, "-m", "cli", "sensor", "--target", target.address, "--model", model,
                "--rate", str(rate), "--burst-every", str(burst_every), "--seed", str(seed)]
        if duration:
            argv += ["--duration", str(duration)]
        return self._spawn("sensor", f"{target.name}", argv)

    def agents(self) -> list[Child]:
        """The agent children."""
        return [c for c in self.children if c.role == "agent"]

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every child (sensors first), SIGKILL what is left after `grace` seconds; collect summaries."""
        with self._lock:
            children = list(self.children)
        for role in ("sensor", "agent"):
            group = [c for c in children if c.role == role]
            for child in group:
                if child.alive:
                    child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            for child in group:
                try:
                    child.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()
                if role == "sensor" and child.process.stdout is not None:
                    out = child.process.stdout.read().strip().splitlines()
                    if out:
                        try:
                            child.summary = json.loads(out[-1])
                        except json.JSONDecodeError:
                            pass


def _readline(child: Child, deadline: float) -> str:
    assert child.process.stdout is not None
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(child.process.stdout.readline()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    reader.join(max(0.1, deadline - time.monotonic()))
    if not result or not result[0]:
        raise RuntimeError(f"{child.role} {child.name} did not start; see {child.log_path}:\n"
                           + child.log_path.read_text()[-2000:])
    return result[0]
