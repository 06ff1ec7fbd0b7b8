"""Several hosts on one machine for discovery tests and bench/discovery.py.

`NetLab` builds a private layer-2 segment out of network namespaces: a bridge in a namespace of its
own, and hosts that each hold one end of a veth pair (the other end enslaved to that bridge), with
addresses from a range used only inside them and a multicast route. Nothing is created in the
machine's own namespace, names are unique per run, and everything is deleted on close.

`Agent` runs `tierdeck-node` (optionally inside a namespace); `Watcher` runs
`tierdeck nodes --watch --json` (optionally inside a namespace) and collects its events.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# The agent's console script lives next to the interpreter of the venv the tests run in.
AGENT = [PYTHON, "-c", "import sys; from runners.agent import main; sys.exit(main())"]
WATCH = [PYTHON, "-m", "cli", "nodes", "--watch", "--json"]


class NetnsUnavailable(RuntimeError):
    """Creating network namespaces is not permitted here (not root, or no CAP_SYS_ADMIN)."""


def _ip(*args: str) -> None:
    """Run `ip ARGS`; raise with its stderr on failure."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@dataclass
class Host:
    """One host of a NetLab: a namespace with `eth0` on the lab's bridge."""

    ns: str
    address: str
    index: int

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """The command line that runs `argv` inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]


@dataclass
class NetLab:
    """A bridge namespace plus host namespaces on 10.203.0.0/24; a context manager that always cleans up."""

    hosts: list[Host] = field(default_factory=list)
    subnet: str = "10.203.0"

    def __post_init__(self) -> None:
        """Pick names unique to this run (pid and random bits) so parallel runs never collide."""
        self.prefix = f"tdk{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.bridge_ns = f"{self.prefix}-br"
        self._namespaces: list[str] = []

    def __enter__(self) -> NetLab:
        """Create the bridge namespace; raises NetnsUnavailable where namespaces are not permitted."""
        try:
            self._add_ns(self.bridge_ns)
        except RuntimeError as exc:
            if "Operation not permitted" in str(exc) or "Permission denied" in str(exc):
                raise NetnsUnavailable(f"cannot create network namespaces here: {exc}") from None
            raise
        try:
            _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
            _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Delete every namespace this lab made."""
        self.close()

    def _add_ns(self, name: str) -> None:
        """Create one namespace and remember it for close()."""
        _ip("netns", "add", name)
        self._namespaces.append(name)

    def add_host(self) -> Host:
        """A new host namespace on the bridge, with its address and a multicast route."""
        index = len(self.hosts) + 1
        host = Host(ns=f"{self.prefix}-h{index}", address=f"{self.subnet}.{10 + index}", index=index)
        self._add_ns(host.ns)
        # Created inside the bridge namespace with the peer moved straight into the host's: no veth end
        # ever appears in the machine's own namespace.
        _ip("-n", self.bridge_ns, "link", "add", f"v{index}", "type", "veth", "peer", "name", "eth0",
            "netns", host.ns)
        _ip("-n", self.bridge_ns, "link", "set", f"v{index}", "master", "br0", "up")
        _ip("-n", host.ns, "link", "set", "lo", "up")
        _ip("-n", host.ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.ns, "link", "set", "eth0", "up")
        _ip("-n", host.ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        self.hosts.append(host)
        return host

    def close(self) -> None:
        """Delete the namespaces (their veth ends go with them); never raises."""
        while self._namespaces:
            name = self._namespaces.pop()
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def netns_permitted() -> str | None:
    """None when this process may create network namespaces, else the reason it may not."""
    try:
        with NetLab():
            return None
    except NetnsUnavailable as exc:
        return str(exc)
    except (OSError, RuntimeError) as exc:
        return f"cannot create network namespaces here: {exc}"


def _pump(stream: TextIO, sink: Callable[[str, float], None]) -> None:
    """Feed each line of `stream` with its arrival time (monotonic) to `sink`, until EOF."""
    for line in stream:
        sink(line, time.monotonic())


class Agent:
    """A `tierdeck-node` process (in a namespace or on loopback) and the identity it printed."""

    def __init__(
        self,
        name: str,
        tier: str,
        data_dir: Path,
        listen: str = "127.0.0.1:0",
        mdns_interfaces: Sequence[str] = ("127.0.0.1",),
        host: Host | None = None,
        log_dir: Path | None = None,
        argv: Sequence[str] = AGENT,
    ) -> None:
        """Start the agent; `started` is the monotonic time just before the process was spawned."""
        cmd = [*argv, "--name", name, "--tier", tier, "--listen", listen, "--data-dir", str(data_dir), "--insecure"]
        if host is not None:
            cmd.append("--allow-insecure-network")
        for interface in mdns_interfaces:
            cmd += ["--mdns-interface", interface]
        if host is not None:
            cmd = host.wrap(cmd)
        log_dir = log_dir or Path(tempfile.gettempdir())
        self.log_path = log_dir / f"agent-{name}-{secrets.token_hex(3)}.log"
        self.name = name
        self.node_id = ""
        self.address = ""
        self.listening_at: float | None = None
        self._lines: queue.Queue[tuple[str, float]] = queue.Queue()
        self._log = self.log_path.open("w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None
        threading.Thread(target=_pump, args=(self.proc.stdout, lambda s, t: self._lines.put((s, t))),
                         daemon=True).start()

    def wait_listening(self, timeout: float = 60.0) -> Agent:
        """Read the agent's `listening` JSON line (node id, address); raises with its log on failure."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line, at = self._lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("event") == "listening":
                self.node_id, self.address, self.listening_at = record["node_id"], record["address"], at
                return self
        raise RuntimeError(f"agent {self.name} did not report listening; its log:\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful: goodbye packets) and wait; SIGKILL if it does not go."""
        return self._end(signal.SIGTERM, timeout)

    def kill(self) -> int:
        """SIGKILL: the node vanishes without a goodbye, like one that lost power."""
        return self._end(signal.SIGKILL, 30.0)

    def _end(self, signum: int, timeout: float) -> int:
        """Signal the process (the agent itself, also under `ip netns exec`, which execs) and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        """The agent's stderr so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]


@dataclass
class Seen:
    """One event printed by the watcher, with the monotonic time it was read."""

    kind: str
    node: dict[str, Any]
    at: float
    previous_key: str | None = None


class Watcher:
    """`tierdeck nodes --watch --json` in a subprocess (in a namespace or on loopback), collecting events."""

    def __init__(self, interfaces: Sequence[str], host: Host | None = None, extra: Sequence[str] = ()) -> None:
        """Start the watcher; call wait_browsing() before timing anything."""
        cmd = [*WATCH, *extra]
        for interface in interfaces:
            cmd += ["--interface", interface]
        if host is not None:
            cmd = host.wrap(cmd)
        self._cond = threading.Condition()
        self.events: list[Seen] = []
        self.browsing = False
        self._stderr = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None
        threading.Thread(target=_pump, args=(self.proc.stdout, self._on_line), daemon=True).start()

    def _on_line(self, line: str, at: float) -> None:
        """Record one JSON line."""
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return
        with self._cond:
            if record.get("event") == "browsing":
                self.browsing = True
            elif record.get("event") in ("added", "updated", "removed"):
                self.events.append(Seen(record["event"], record["node"], at, record.get("previous_key")))
            self._cond.notify_all()

    def wait_browsing(self, timeout: float = 60.0) -> None:
        """Block until the watcher says it is browsing."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.browsing or self.proc.poll() is not None, timeout):
                raise TimeoutError(f"watcher did not start browsing: {self.stderr()}")
            if not self.browsing:
                raise RuntimeError(f"watcher exited: {self.stderr()}")

    def wait_for(self, predicate: Callable[[Seen], bool], timeout: float = 30.0, since: int = 0) -> Seen:
        """The first event from index `since` on that satisfies `predicate`; TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for seen in self.events[since:]:
                    if predicate(seen):
                        return seen
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"no matching event; saw {self.summary()}; stderr: {self.stderr()}")
                self._cond.wait(min(remaining, 0.5))

    def nodes(self) -> dict[str, dict[str, Any]]:
        """The node set as the events describe it now, keyed like the browser keys it."""
        state: dict[str, dict[str, Any]] = {}
        with self._cond:
            for seen in self.events:
                if seen.kind == "removed":
                    state.pop(seen.node["key"], None)
                else:
                    state[seen.node["key"]] = seen.node
        return state

    def summary(self) -> list[tuple[str, str, str]]:
        """(kind, name, key) of every event so far, for failure messages."""
        return [(s.kind, s.node.get("name", ""), s.node.get("key", "")) for s in self.events]

    def stderr(self) -> str:
        """What the watcher logged."""
        self._stderr.seek(0)
        return self._stderr.read()[-4000:]

    def close(self) -> None:
        """Stop the watcher."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._stderr.close()
