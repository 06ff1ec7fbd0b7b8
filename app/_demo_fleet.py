"""A local demo fleet: `tierdeck-node` and `tierdeck sensor` processes on loopback that die with their parent.

Every child is started in its own process group and arms PR_SET_PDEATHSIG=SIGTERM itself when it
starts (runners/_lifeline.py), so when the console exits — closed window, Ctrl+C, or a crash or SIGKILL
of the console itself — the kernel signals the agents and sensors too: no orphans, no ports left bound.
Children are spawned without `preexec_fn`, so CPython uses vfork/posix_spawn and gRPC's fork handlers
never run in them (grpc/grpc#43055 crashed children forked from a process with busy channels).
`stop()` is the graceful path (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runners._lifeline import child_env

log = logging.getLogger(f"tierdeck.{__name__}")

# Power profiles of the estimate model per tier (watts at idle, at full CPU): a camera-side SoC,
# an edge box, a cloud GPU server. They make the dashboard's power plots meaningful without sensors.
POWER_PROFILES = {"device": (1.5, 6.0), "edge": (8.0, 30.0), "cloud": (90.0, 350.0)}


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
    may_exit: bool = False          # a clean exit (code 0) on its own is expected (a sensor with a duration)
    serves: str = ""                # for a sensor: the node id it feeds

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def log_tail(self, lines: int = 8) -> list[str]:
        """The last lines of its log (stderr)."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 16384))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()][-lines:]


@dataclass(frozen=True)
class ChildExit:
    """A child that ended while nobody asked it to: who, how, and what its log said last."""

    role: str
    name: str
    pid: int
    returncode: int
    node_id: str              # the agent's node id, or the node a sensor fed
    log_tail: tuple[str, ...]
    log_path: str

    @property
    def how(self) -> str:
        """"SIGSEGV (signal 11)" or "exit code 1"."""
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            return f"{name} (signal {-self.returncode})"
        return f"exit code {self.returncode}"

    @property
    def who(self) -> str:
        """"sensor for device-3" or "agent device-3"."""
        return f"sensor for {self.name}" if self.role == "sensor" else f"{self.role} {self.name}"

    def describe(self) -> str:
        """One sentence for the event log and the node card."""
        last = self.log_tail[-1] if self.log_tail else "(log empty)"
        return f"{self.who} died: {self.how}; last log line: {last}"

    def as_json(self) -> dict[str, object]:
        """A plain dict for the headless summary."""
        signame = self.how.split(" ")[0] if self.returncode < 0 else ""
        return {"role": self.role, "name": self.name, "pid": self.pid, "returncode": self.returncode,
                "signal": signame, "node_id": self.node_id, "log_tail": list(self.log_tail),
                "log": self.log_path, "message": self.describe()}


class DemoFleet:
    """Starts and stops the demo's agents and sensors. Call from the main thread (see _spawn)."""

    def __init__(self, base_dir: Path | None = None, mdns_interface: str = "127.0.0.1", fleet_id: str = "") -> None:
        self.base_dir = base_dir or Path(tempfile.mkdtemp(prefix="tierdeck-demo-"))
        self.mdns_interface = mdns_interface
        self.fleet_id = fleet_id  # advertised by every agent: the console shows only this demo's nodes
        self.children: list[Child] = []
        self.unexpected_exits: list[ChildExit] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._reported: set[int] = set()
        self._watchers: list[Callable[[ChildExit], None]] = []
        self._watch_thread: threading.Thread | None = None

    def _spawn(self, role: str, name: str, argv: list[str]) -> Child:
        log_path = self.base_dir / "logs" / f"{role}-{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if threading.current_thread() is not threading.main_thread():
            # PR_SET_PDEATHSIG fires when the *thread* that forked exits: only the main thread lives as long
            # as the console.
            raise RuntimeError("start demo processes from the main thread")
        handle = open(log_path, "w")
        # No preexec_fn (see the module docstring): process_group=0 keeps the vfork/posix_spawn path.
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=handle, stdin=subprocess.DEVNULL, text=True,
                                   process_group=0, env=child_env(dict(os.environ, PYTHONUNBUFFERED="1")))
        handle.close()
        child = Child(role, name, process, log_path)
        with self._lock:
            self.children.append(child)
        return child

    def agent_argv(self, name: str, tier: str) -> list[str]:
        """The command line of one demo agent (mDNS on the loopback interface only)."""
        idle, peak = POWER_PROFILES[tier]
        return [sys.executable, "-m", "runners.agent", "--name", name, "--tier", tier,
                "--listen", "127.0.0.1:0", "--data-dir", str(self.base_dir / "nodes" / name), "--insecure",
                "--mdns-interface", self.mdns_interface, "--idle-watts", str(idle), "--max-watts", str(peak),
                "--log-level", "WARNING", *(["--fleet-id", self.fleet_id] if self.fleet_id else [])]

    def sensor_argv(self, target: str, model: str, rate: float, burst_every: float = 30.0, seed: int = 0,
                    duration: float = 0.0) -> list[str]:
        """The command line of one demo sensor replaying the bundled held-out patches into `model` at `target`."""
        argv = [sys.executable, "-m", "cli", "sensor", "--target", target, "--model", model,
                "--rate", str(rate), "--burst-every", str(burst_every), "--seed", str(seed)]
        if duration:
            argv += ["--duration", str(duration)]
        return argv

    def spawn(self, role: str, name: str, argv: list[str], may_exit: bool = False) -> Child:
        """Start one supervised child (main thread only): own process group, dies with this process."""
        child = self._spawn(role, name, argv)
        child.may_exit = may_exit
        return child

    # ----- supervision ----------------------------------------------------------------------------
    def watch(self, callback: Callable[[ChildExit], None], interval: float = 0.25) -> None:
        """Call `callback` (on a watcher thread) for every child that exits unexpectedly from now on.

        Unexpected: before `stop()`, with a non-zero code or a signal — or with any code for a child that
        should run until stopped (agents, sensors without a duration).
        """
        self._watchers.append(callback)
        if self._watch_thread is None:
            self._watch_thread = threading.Thread(target=self._watch_loop, args=(interval,), name="demo-watch",
                                                  daemon=True)
            self._watch_thread.start()

    def check_children(self) -> list[ChildExit]:
        """Look at every child once; record, report and return the unexpected exits not seen before."""
        if self._stopping.is_set():
            return []
        with self._lock:
            children = list(self.children)
        found = []
        for child in children:
            code = child.process.poll()
            if code is None or child.process.pid in self._reported:
                continue
            if self._stopping.is_set():  # stop() began meanwhile: what ends now was asked to
                break
            self._reported.add(child.process.pid)
            if code == 0 and child.may_exit:
                continue
            node_id = child.node_id or child.serves
            ended = ChildExit(child.role, child.name, child.process.pid, code, node_id, tuple(child.log_tail()),
                              str(child.log_path))
            log.error("%s", ended.describe())
            with self._lock:
                self.unexpected_exits.append(ended)
            found.append(ended)
            for callback in list(self._watchers):
                try:
                    callback(ended)
                except Exception:
                    log.exception("child-exit watcher failed")
        return found

    def _watch_loop(self, interval: float) -> None:
        while not self._stopping.wait(interval):
            self.check_children()

    def start_agents(self, device: int = 4, edge: int = 2, cloud: int = 1, timeout: float = 60.0) -> list[Child]:
        """Start the agents (mDNS on the loopback interface only) and wait until each is listening."""
        started = []
        for tier, count in (("cloud", cloud), ("edge", edge), ("device", device)):
            for index in range(1, count + 1):
                name = f"{tier}-{index}"
                child = self._spawn("agent", name, self.agent_argv(name, tier))
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
        argv = self.sensor_argv(target.address, model, rate, burst_every, seed, duration)
        child = self._spawn("sensor", f"{target.name}", argv)
        child.may_exit, child.serves = bool(duration), target.node_id
        return child

    def agents(self) -> list[Child]:
        """The agent children."""
        return [c for c in self.children if c.role == "agent"]

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every child (sensors first), SIGKILL what is left after `grace` seconds; collect summaries."""
        self.check_children()  # what died before we were asked to stop is still reported
        self._stopping.set()
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
