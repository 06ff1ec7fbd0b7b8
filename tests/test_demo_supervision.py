"""Every unexpected death of a demo child is seen: an error event, a reason on the node, `ok: false`."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from app._demo import Demo, DemoConfig
from app._demo_fleet import ChildExit, DemoFleet
from app._records import NodeState


def _wait(predicate: Callable[[], object], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_crashing_child_is_reported_with_its_signal_and_last_log_lines(tmp_path: Path) -> None:
    fleet = DemoFleet(tmp_path)
    seen: list[ChildExit] = []
    fleet.watch(seen.append, interval=0.05)
    try:
        crash = ("import os, signal, sys; print('loading model', file=sys.stderr); "
                 "print('epoll_wait error: Bad file descriptor', file=sys.stderr, flush=True); "
                 "os.kill(os.getpid(), signal.SIGABRT)")
        fleet.spawn("sensor", "device-3", [sys.executable, "-c", crash])
        fleet.spawn("probe", "fine", [sys.executable, "-c", "pass"], may_exit=True)  # a clean, expected end
        fleet.spawn("probe", "quitter", [sys.executable, "-c", "pass"])  # should have kept running
        _wait(lambda: len(seen) >= 2)
        time.sleep(0.3)
        by_name = {e.name: e for e in seen}
        assert set(by_name) == {"device-3", "quitter"}
        ended = by_name["device-3"]
        assert ended.returncode == -signal.SIGABRT and ended.how == "SIGABRT (signal 6)"
        assert ended.log_tail[-2:] == ("loading model", "epoll_wait error: Bad file descriptor")
        assert ended.describe().startswith("sensor for device-3 died: SIGABRT")
        assert by_name["quitter"].how == "exit code 0"
        assert [e.name for e in fleet.unexpected_exits] == [e.name for e in seen]
    finally:
        fleet.stop()
    assert len(seen) == 2


def test_killed_demo_children_become_events_node_reasons_and_a_failed_summary(tmp_path: Path) -> None:
    demo = Demo(DemoConfig(device=1, edge=1, cloud=1, base_dir=tmp_path / "fleet", rate=5.0))
    try:
        demo.start()
        nodes = demo.wait_online()
        assert sum(1 for n in nodes if n.state == NodeState.ONLINE) == 3
        demo.start_sensors()
        sensor = next(c for c in demo.fleet.children if c.role == "sensor")
        edge = next(c for c in demo.fleet.agents() if c.tier == "edge")
        device = next(c for c in demo.fleet.agents() if c.tier == "device")
        time.sleep(1.0)  # mid-run
        assert sensor.alive and edge.alive
        os.kill(sensor.process.pid, signal.SIGSEGV)
        os.kill(edge.process.pid, signal.SIGKILL)

        def exits() -> list[str]:
            return [e.message for e in list(demo.core.events) if e.kind == "process_exit"]
        _wait(lambda: len(exits()) == 2)
        messages = exits()
        assert any(m.startswith("sensor for device-1 died: SIGSEGV (signal 11)") for m in messages), messages
        assert any(m.startswith("agent edge-1 died: SIGKILL (signal 9)") for m in messages), messages
        event = next(e for e in demo.core.events if e.kind == "process_exit" and "sensor" in e.message)
        assert event.severity == "error" and event.node_id == device.node_id
        assert event.detail["returncode"] == -11 and event.detail["signal"] == "SIGSEGV"

        def node(node_id: str) -> object:
            return next(n for n in demo.core.nodes().result(10) if n.node_id == node_id)
        _wait(lambda: "sensor for device-1 died: SIGSEGV (signal 11)" in node(device.node_id).reasons)  # type: ignore[attr-defined]
        assert node(device.node_id).state == NodeState.DEGRADED  # type: ignore[attr-defined]
        # The dead agent's card keeps saying why, also once the console has marked it offline.
        _wait(lambda: node(edge.node_id).state == NodeState.OFFLINE)  # type: ignore[attr-defined]
        assert "agent edge-1 died: SIGKILL (signal 9)" in node(edge.node_id).reasons  # type: ignore[attr-defined]

        summary = demo.summary()
        assert summary["ok"] is False
        listed = summary["unexpected_exits"]
        assert isinstance(listed, list)
        assert sorted((e["role"], e["name"], e["signal"]) for e in listed) == [
            ("agent", "edge-1", "SIGKILL"), ("sensor", "device-1", "SIGSEGV")]
    finally:
        demo.stop()
    # The graceful stop that follows is not an unexpected death.
    assert len(demo.fleet.unexpected_exits) == 2
