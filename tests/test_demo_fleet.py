"""The demo fleet's children die with their parent, whatever way the parent ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import ROOT

PARENT = r"""
import json, sys, time
from pathlib import Path
from app._demo_fleet import DemoFleet
fleet = DemoFleet(Path(sys.argv[1]))
agents = fleet.start_agents(device=1, edge=1, cloud=1)
print(json.dumps([a.process.pid for a in agents]), flush=True)
if sys.argv[2] == "graceful":
    fleet.stop()
    print(json.dumps([a.process.returncode for a in agents]), flush=True)
else:
    time.sleep(600)
"""


def _gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    return alive


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_agents_die_with_a_killed_parent(tmp_path: Path, how: str) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path), "wait"], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        assert parent.stdout is not None
        pids = json.loads(parent.stdout.readline())
        assert len(pids) == 3 and all(psutil.pid_exists(p) for p in pids)
        parent.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
        parent.wait(10)
        assert _gone(pids) == [], "agents outlived the console"
    finally:
        parent.kill()


def test_graceful_stop_ends_every_agent_cleanly(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", PARENT, str(tmp_path), "graceful"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    pids, codes = (json.loads(line) for line in proc.stdout.strip().splitlines())
    assert codes == [0, 0, 0]
    assert _gone(pids) == []
