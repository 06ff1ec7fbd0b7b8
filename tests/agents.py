"""Start real `tierdeck-node` processes for the tests and stop them afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from conftest import ROOT


@dataclass
class AgentProcess:
    """A running agent: its process, address and node id; stderr is collected in `log`."""

    process: subprocess.Popen[str]
    address: str
    node_id: str
    data_dir: Path
    log: list[str] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the agent and wait for it to exit; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.address.rsplit(":", 1)[1])


def start_agent(data_dir: Path, *args: str, name: str = "node", tier: str = "edge",
                listen: str = "127.0.0.1:0", timeout: float = 60.0, secure: bool = False,
                python: str | None = None) -> AgentProcess:
    """Start an agent process (with `python`, default this interpreter) and wait for its `listening` line."""
    cmd = [python or sys.executable, "-m", "runners.agent", "--name", name, "--tier", tier, "--listen", listen,
           "--data-dir", str(data_dir), *([] if secure else ["--insecure"]), *args]
    if "--mdns-interface" not in args:
        cmd.append("--no-mdns")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    log: list[str] = []
    assert proc.stderr is not None and proc.stdout is not None
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
    result: dict[str, object] = {}

    def read() -> None:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line:
            result.update(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if result.get("event") != "listening":
        proc.kill()
        proc.wait()
        raise RuntimeError(f"agent did not start: {''.join(log)}")
    return AgentProcess(proc, str(result["address"]), str(result["node_id"]), data_dir, log, extra=result)


@contextmanager
def running_agent(data_dir: Path, *args: str, **kwargs: str | bool) -> Iterator[AgentProcess]:
    """An agent for the duration of the with-block."""
    agent = start_agent(data_dir, *args, **kwargs)  # type: ignore[arg-type]
    try:
        yield agent
    finally:
        agent.stop()
