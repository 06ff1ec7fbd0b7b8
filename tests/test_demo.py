"""`tierdeck demo`: the headless smoke run, and no agent outlives a killed console."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import ROOT

DEMO = [sys.executable, "-m", "cli", "demo"]


def _descendants_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _cmdlines(pid: int) -> dict[int, str]:
    found = {}
    for kid in psutil.Process(pid).children(recursive=True):
        try:
            found[kid.pid] = " ".join(kid.cmdline())
        except psutil.Error:  # gone meanwhile
            pass
    return found


def _png_is_not_blank(path: Path) -> float:
    from PySide6.QtGui import QImage

    image = QImage(str(path))
    assert not image.isNull() and image.width() >= 1000
    pixels = np.array([image.pixel(x, y) & 0xFFFFFF for x in range(0, image.width(), 7)
                       for y in range(0, image.height(), 7)])
    return float(np.std(pixels))


@pytest.mark.slow
def test_headless_demo_finds_the_fleet_deploys_and_flows(tmp_path: Path) -> None:
    shot, out = tmp_path / "demo.png", tmp_path / "demo.json"
    proc = subprocess.Popen([*DEMO, "--headless", "--duration", "20", "--screenshot", str(shot), "--json", str(out),
                             "--data-dir", str(tmp_path / "fleet")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    children: set[int] = set()
    deadline = time.monotonic() + 400
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            children |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["ok"] and summary["deploy_ok"]
    assert summary["nodes_found"] == summary["nodes_expected"] == 7
    tiers = sorted(n["tier"] for n in summary["nodes"] if n["state"] == "online")
    assert tiers == ["cloud"] + ["device"] * 4 + ["edge"] * 2
    stages = summary["stages"]
    assert stages["detector"]["nodes_ready"] == 4 and stages["classifier"]["nodes_ready"] == 2
    assert stages["heavy"]["nodes_ready"] == 1
    for stage in ("detector", "classifier", "heavy"):
        assert stages[stage]["inferences"] > 0, f"no inputs reached {stage}"
    for link in summary["links"]:
        assert 0.0 < link["escalation_rate"] <= 1.0
        assert link["escalation_rate"] == pytest.approx(link["escalated"] / link["inferences"])
    # What one tier escalated is what the next tier ran, plus the deployer's one smoke row per node; the
    # nodes' latest samples are up to one telemetry interval apart while the sensors still run.
    reached = stages["detector"]["forwarded"] + stages["detector"]["delivered"]
    assert abs(stages["classifier"]["inferences"] - reached) <= 2 + 0.1 * reached
    assert set(summary["power"]) == {n["name"] for n in summary["nodes"]}
    assert all(p["source"] == "estimate" and not p["measured"] for p in summary["power"].values())
    assert _png_is_not_blank(shot) > 1000
    assert len(children) >= 11  # seven agents and four sensors
    assert _descendants_alive(sorted(children)) == [], "a child of the demo outlived it"


@pytest.mark.slow
def test_sigkill_of_the_console_takes_the_fleet_down(tmp_path: Path) -> None:
    proc = subprocess.Popen([*DEMO, "--headless", "--duration", "300", "--device", "2", "--edge", "1",
                             "--data-dir", str(tmp_path / "fleet")], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        agents: list[int] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until the agents and the sensors run
            kids = _cmdlines(proc.pid)
            agents = [pid for pid, cmd in kids.items() if "runners.agent" in cmd]
            sensors = [pid for pid, cmd in kids.items() if " sensor " in cmd]
            if len(agents) == 4 and len(sensors) == 2:
                break
            time.sleep(0.3)
        assert len(agents) == 4, "the demo fleet did not start"
        pids = list(_cmdlines(proc.pid))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while _descendants_alive(pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _descendants_alive(pids) == [], "agents or sensors outlived the killed console"
    finally:
        proc.kill()
