"""Spawning children while gRPC channels are busy never crashes them (grpc/grpc#43055), and they die with us."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT

from app._demo_fleet import DemoFleet
from runners._lifeline import PARENT_ENV, child_env
from runners.client import NodeClient


class BusyChannels:
    """A thread whose grpc.aio channel keeps `width` unary calls in flight to a real agent."""

    def __init__(self, address: str, width: int = 8) -> None:
        self.address, self.width = address, width
        self.calls = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with NodeClient(self.address) as client:
            async def one() -> None:
                while not self._stop.is_set():
                    try:
                        await client.info(timeout=10)
                        self.calls += 1
                    except Exception:  # counted: the test asserts the channel stayed busy, not that it never failed
                        self.failures += 1
            await asyncio.gather(*(one() for _ in range(self.width)))

    def __enter__(self) -> BusyChannels:
        self._thread.start()
        deadline = time.monotonic() + 30
        while self.calls < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.calls >= 50, "the channel never got busy"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.mark.slow
def test_two_hundred_children_spawned_beside_busy_channels_all_exit_cleanly(tmp_path: Path) -> None:
    fleet = DemoFleet(tmp_path / "fleet")
    try:
        agent = fleet.start_agents(device=0, edge=1, cloud=0)[0]
        # The real command lines of the demo's agents and sensors, ended early by --help after the entry
        # point armed its lifeline: what is under test is the spawn, not what the child then does.
        commands = [[*fleet.agent_argv(f"probe-{i}", ("device", "edge", "cloud")[i % 3]), "--help"]
                    if i % 2 else [*fleet.sensor_argv(agent.address, "detector", 20.0, seed=i), "--help"]
                    for i in range(200)]
        codes: list[int] = []
        with BusyChannels(agent.address) as busy:
            running = []
            for i, argv in enumerate(commands):
                running.append(fleet.spawn("probe", f"probe-{i}", argv))
                while len(running) >= 6:
                    done = [c for c in running if not c.alive]
                    for child in done:
                        codes.append(child.process.wait())
                        running.remove(child)
                    if not done:
                        time.sleep(0.01)
            for child in running:
                codes.append(child.process.wait(120))
            calls_during = busy.calls
        assert len(codes) == 200
        abnormal = {i: code for i, code in enumerate(codes) if code != 0}
        assert abnormal == {}, f"{len(abnormal)} of 200 children exited abnormally: {abnormal}"
        assert calls_during > 200, "the channels were not busy while spawning"
    finally:
        fleet.stop()


def test_a_child_whose_parent_is_already_gone_exits_at_once(tmp_path: Path) -> None:
    # The pid a supervisor would have written, but this process's parent is not it: as if the
    # supervisor died between the spawn and the child's prctl().
    env = child_env(parent_pid=1)
    for argv in ([sys.executable, "-m", "runners.agent", "--data-dir", str(tmp_path), "--insecure", "--no-mdns"],
                 [sys.executable, "-m", "cli", "sensor", "--target", "127.0.0.1:1", "--model", "x"]):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert "(pid 1) is gone" in proc.stderr


def test_a_childs_lifeline_is_not_inherited_by_its_own_children() -> None:
    code = (f"import os, subprocess, sys; from runners._lifeline import arm_from_env; arm_from_env(); "
            f"print(repr(os.environ.get('{PARENT_ENV}')))")
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None"


def test_the_demo_spawns_without_preexec_fn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, object]] = []
    real = subprocess.Popen

    def spy(*args: object, **kwargs: object) -> subprocess.Popen[str]:
        seen.append(kwargs)
        return real(*args, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(subprocess, "Popen", spy)
    fleet = DemoFleet(tmp_path)
    child = fleet.spawn("probe", "p", [sys.executable, "-c", "import os; print(os.getpgrp() == os.getpid())"])
    assert child.process.stdout is not None
    assert child.process.stdout.read().strip() == "True"  # its own process group
    child.process.wait(30)
    assert seen and seen[0].get("preexec_fn") is None and seen[0].get("process_group") == 0
