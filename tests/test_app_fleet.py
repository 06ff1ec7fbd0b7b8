"""The fleet's state machine against real agent processes: online, offline, back, reconnect, forget."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import threading
from pathlib import Path

import pytest
from agents import start_agent
from test_app_support import started_core, wait_nodes, wait_until

from app._records import FleetEvent, FleetEventKind, NodeSample, NodeState
from runners.client import NodeClient


def _transitions(events: list[FleetEvent], key: str) -> list[str]:
    return [str(e.node.state) for e in events if e.kind == FleetEventKind.STATE_CHANGED and e.node.key == key]


def _telemetry_rows(db: Path) -> list[tuple[str, int]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT b.boot_id, t.seq FROM telemetry t JOIN boots b ON b.ref = t.boot "
                            "WHERE t.stage = '' ORDER BY t.rowid").fetchall()
    finally:
        conn.close()


def _assert_no_duplicates_and_no_gaps(rows: list[tuple[str, int]]) -> dict[str, list[int]]:
    by_boot: dict[str, list[int]] = {}
    for boot, seq in rows:
        by_boot.setdefault(boot, []).append(seq)
    for boot, seqs in by_boot.items():
        assert len(seqs) == len(set(seqs)), f"duplicate samples stored for boot {boot}"
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"samples lost or out of order in boot {boot}"
    return by_boot


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_node_goes_offline_and_comes_back_online_without_duplicate_samples(tmp_path: Path, how: str) -> None:
    agent = start_agent(tmp_path / "node", tier="edge", name="edge-1")
    port = agent.port
    db = tmp_path / "console.sqlite"
    events: list[FleetEvent] = []
    samples: list[NodeSample] = []
    try:
        with started_core(db, telemetry_interval_s=0.2, fleet_options={"backoff_s": (0.1, 0.5)}) as core:
            core.subscribe_fleet(events.append)
            core.subscribe_samples(samples.append)
            key = core.add_address(agent.address).result(10)
            assert key == f"addr:{agent.address}"
            nodes = wait_nodes(core, lambda ns: bool(ns) and ns[0].state == NodeState.ONLINE, message="online")
            node_id, first_boot = nodes[0].key, nodes[0].boot_id
            assert node_id == agent.node_id, "the entry is re-keyed to the node id"
            assert any(e.kind == FleetEventKind.REKEYED and e.previous_key == key for e in events)
            assert _transitions(events, node_id)[-1] == "online"
            wait_until(lambda: sum(s.boot_id == first_boot for s in samples) >= 3, message="first samples")

            agent.stop(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
            nodes = wait_nodes(core, lambda ns: ns[0].state == NodeState.OFFLINE, message="offline")
            assert nodes[0].reason, "offline says why"

            agent = start_agent(tmp_path / "node", tier="edge", name="edge-1", listen=f"127.0.0.1:{port}")
            nodes = wait_nodes(core, lambda ns: ns[0].state == NodeState.ONLINE, message="online again")
            second_boot = nodes[0].boot_id
            assert second_boot != first_boot and nodes[0].key == node_id
            wait_until(lambda: sum(s.boot_id == second_boot for s in samples) >= 3, message="telemetry resumed")
            core.db.flush().result(10)
            states = _transitions(events, node_id)
            assert states[-3:] == ["online", "offline", "online"], states
            assert core.fleet is not None and core.fleet.duplicates_dropped == 0
            events_text = [e.message for e in core.events if e.kind == "node_state"]
            assert any("offline" in m for m in events_text) and events_text[-1].endswith("is online")
    finally:
        agent.stop()
    by_boot = _assert_no_duplicates_and_no_gaps(_telemetry_rows(db))
    assert set(by_boot) == {first_boot, second_boot}
    assert sum(len(v) for v in by_boot.values()) == len(samples), "every accepted sample is stored, once"


def test_a_new_stream_of_the_same_boot_resumes_without_duplicates_or_gaps(tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "node", tier="device", name="dev-1")
    db = tmp_path / "console.sqlite"
    samples: list[NodeSample] = []
    try:
        with started_core(db, telemetry_interval_s=0.1) as core:
            core.subscribe_samples(samples.append)
            core.add_address(agent.address).result(10)
            wait_nodes(core, lambda ns: bool(ns) and ns[0].state == NodeState.ONLINE, message="online")
            wait_until(lambda: len(samples) >= 5, message="samples")
            before = len(samples)
            assert core.reconnect(agent.node_id).result(10)
            wait_until(lambda: len(samples) >= before + 5, message="samples on the new stream")
            core.db.flush().result(10)
            assert core.fleet is not None
            assert core.fleet.duplicates_dropped == 0, "fresh samples of the new stream were taken for duplicates"
    finally:
        agent.stop()
    rows = _telemetry_rows(db)
    assert len({b for b, _ in rows}) == 1
    seqs = [s for _, s in rows]
    # One sequence per boot across streams: strictly increasing; a sample the old stream had in flight
    # when it was cancelled may leave one gap at the reconnect.
    assert seqs == sorted(set(seqs))
    assert seqs[-1] - seqs[0] + 1 - len(seqs) <= 1
    assert len(rows) == len(samples)


def test_forget_drops_the_node_and_its_stream(tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "node", tier="cloud", name="cloud-1")
    db = tmp_path / "console.sqlite"
    removed = threading.Event()
    try:
        with started_core(db, telemetry_interval_s=0.2) as core:
            core.subscribe_fleet(lambda e: removed.set() if e.kind == FleetEventKind.REMOVED else None)
            core.add_address(agent.address).result(10)
            wait_nodes(core, lambda ns: bool(ns) and ns[0].state == NodeState.ONLINE, message="online")
            assert core.forget(agent.node_id).result(10)
            assert removed.wait(10)
            assert core.nodes().result(10) == []

            async def streams() -> int:
                async with NodeClient(agent.address) as client:
                    return (await client.info()).active_streams
            wait_until(lambda: asyncio.run(streams()) == 0, message="the agent's stream to the console to close")
            core.db.flush().result(10)
    finally:
        agent.stop()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT forgotten FROM nodes WHERE node_id = ?", (agent.node_id,)).fetchone() == (1,)
    finally:
        conn.close()


def test_an_address_that_does_not_answer_is_offline_with_the_reason(tmp_path: Path) -> None:
    with started_core(tmp_path / "console.sqlite", telemetry_interval_s=0.2) as core:
        core.add_address("127.0.0.1:9").result(10)  # the discard port: nothing listens there
        nodes = wait_nodes(core, lambda ns: bool(ns) and ns[0].state == NodeState.OFFLINE, message="offline")
        assert nodes[0].key == "addr:127.0.0.1:9" and "unavailable" in nodes[0].reason


def test_a_node_found_over_mdns_joins_the_fleet_by_its_id_and_goes_online(tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "node", "--mdns-interface", "127.0.0.1", tier="edge", name="mdns-edge")
    try:
        with started_core(tmp_path / "console.sqlite", telemetry_interval_s=0.2, interfaces=["127.0.0.1"]) as core:
            nodes = wait_nodes(core, lambda ns: any(n.key == agent.node_id and n.state == NodeState.ONLINE
                                                    for n in ns), message="the advertised node online")
            node = next(n for n in nodes if n.key == agent.node_id)
            assert node.source == "mdns" and node.address == agent.address and node.tier == "edge"
            assert node.info is not None and node.info.execution_providers
    finally:
        agent.stop()


def test_a_node_that_falls_silent_is_degraded_then_offline_and_back_when_it_speaks_again(tmp_path: Path) -> None:
    """The telemetry watchdog: a node whose samples stop (its process frozen) says 'no telemetry for …' once they
    are overdue, goes offline when its health check fails too, and is online again when it answers."""
    agent = start_agent(tmp_path / "node", tier="edge", name="edge-1")
    events: list[FleetEvent] = []
    try:
        with started_core(tmp_path / "console.sqlite", telemetry_interval_s=0.2,
                          fleet_options={"backoff_s": (0.1, 0.5), "connect_timeout_s": 1.0}) as core:
            core.subscribe_fleet(events.append)
            core.add_address(agent.address).result(10)
            wait_nodes(core, lambda ns: bool(ns) and ns[0].state == NodeState.ONLINE, message="online")
            assert core.fleet is not None and core.fleet.overdue_s == 2.0
            agent.process.send_signal(signal.SIGSTOP)
            try:
                wait_nodes(core, lambda ns: ns[0].state == NodeState.OFFLINE, message="offline after the silence")
            finally:
                agent.process.send_signal(signal.SIGCONT)
            silent = [e.node for e in events if any(r.startswith("no telemetry for") for r in e.node.reasons)]
            assert silent and silent[0].state == NodeState.DEGRADED, "overdue samples degrade the node first"
            assert any(e.node.state == NodeState.OFFLINE and "health check failed" in e.node.reason for e in events)
            wait_nodes(core, lambda ns: ns[0].state == NodeState.ONLINE, message="online again")
    finally:
        agent.stop()
