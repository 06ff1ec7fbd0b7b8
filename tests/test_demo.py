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
    # What one tier escalated is what the next tier ran (smoke inferences are not counted); the
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


@pytest.mark.slow
def test_headless_demo_with_a_child_killed_mid_run_says_not_ok_and_names_it(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    proc = subprocess.Popen([*DEMO, "--headless", "--duration", "15", "--device", "1", "--edge", "1", "--cloud", "1",
                             "--rate", "5", "--json", str(out), "--data-dir", str(tmp_path / "fleet")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        sensor = None
        deadline = time.monotonic() + 240
        while sensor is None and time.monotonic() < deadline and proc.poll() is None:
            sensor = next((pid for pid, cmd in _cmdlines(proc.pid).items() if " sensor " in cmd), None)
            time.sleep(0.3)
        assert sensor is not None, "the sensor never started"
        time.sleep(2.0)
        os.kill(sensor, signal.SIGSEGV)
        _, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["ok"] is False and summary["deploy_ok"] is True
    assert [(e["role"], e["name"], e["signal"], e["pid"]) for e in summary["unexpected_exits"]] == [
        ("sensor", "device-1", "SIGSEGV", sensor)]
    assert "sensor for device-1 died: SIGSEGV" in stderr


@pytest.mark.slow
def test_a_demo_whose_inputs_are_never_answered_is_not_ok(tmp_path: Path) -> None:
    """An operator's pipeline (digits classifiers) under the demo's maritime sensors: nothing is answered at any
    tier, so the headless summary must say ok = false and why, not report success."""
    from byo_models import DIGITS, big_classifier, small_classifier, stage_entry, write_pipeline

    stages = [stage_entry("digits_small", small_classifier(tmp_path / "small.onnx"),
                          {"output": "probabilities", "labels": DIGITS, "confidence_below": 0.9}, {"tier": "device"}),
              stage_entry("digits_big", big_classifier(tmp_path / "big.onnx"),
                          {"output": "probabilities", "labels": DIGITS}, {"tier": "cloud"})]
    pipeline = write_pipeline(tmp_path, stages)
    out = tmp_path / "summary.json"
    done = subprocess.run([*DEMO, "--headless", "--deploy", "--duration", "8", "--device", "1", "--edge", "0",
                           "--cloud", "1", "--pipeline", str(pipeline), "--json", str(out),
                           "--data-dir", str(tmp_path / "fleet")], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    summary = json.loads(out.read_text())
    assert summary["deploy_ok"], summary["deploy_reason"]
    assert done.returncode != 0 and not summary["ok"]
    assert not summary["answered_at_every_tier"] and summary["not_answered"] == ["digits_small", "digits_big"]
    assert summary["stages"]["digits_small"]["inferences"] == 0  # the deployer's smoke inference is not counted
