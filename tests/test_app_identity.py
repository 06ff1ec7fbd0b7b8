"""Identity alerts in the console: a spoofed advertisement reusing a known node id, a node that moved."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from agents import start_agent
from test_app_support import started_core, wait_nodes, wait_until

from app.core import ConsoleEvent, NodeState
from discovery import Advertiser


def _advertise(node_id: str, port: int, stop: threading.Event, registered: threading.Event) -> None:
    """A hostile advertiser on loopback claiming `node_id` at another port (its own thread and loop)."""
    async def run() -> None:
        adv = Advertiser(node_id=node_id, name="impostor", tier="edge", port=port, addresses=["127.0.0.1"],
                         version="0.1.0", interfaces=["127.0.0.1"])
        await adv.async_start()
        registered.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await adv.async_stop()
    asyncio.run(run())


def test_spoofed_advertisement_of_a_connected_node_is_refused_and_alerted(tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "node", "--mdns-interface", "127.0.0.1", tier="edge", name="real-edge")
    events: list[ConsoleEvent] = []
    stop, registered = threading.Event(), threading.Event()
    spoofer = threading.Thread(target=_advertise, args=(agent.node_id, 1, stop, registered), daemon=True)
    try:
        with started_core(tmp_path / "console.sqlite", telemetry_interval_s=0.2, interfaces=["127.0.0.1"]) as core:
            core.subscribe_events(events.append)
            wait_nodes(core, lambda ns: len(ns) == 1 and ns[0].state == NodeState.ONLINE, message="online")
            spoofer.start()
            assert registered.wait(30)
            wait_until(lambda: any(e.kind == "identity_alert" for e in events), message="an identity alert")
            (node,) = core.nodes().result(5)
            alert = next(e for e in events if e.kind == "identity_alert")
            assert alert.node_id == agent.node_id and "127.0.0.1:1" in alert.message
            assert node.address == agent.address, "the console must stay with the node it is connected to"
            assert node.state == NodeState.DEGRADED and any("spoofed" in r for r in node.reasons)
            assert core.reconnect(agent.node_id).result(10)  # the operator acknowledges: alert cleared
            def cleared(ns: list) -> bool:  # type: ignore[type-arg]
                return ns[0].state == NodeState.ONLINE and not any("spoofed" in r for r in ns[0].reasons)
            wait_nodes(core, cleared, message="alert cleared")
    finally:
        stop.set()
        spoofer.join(30) if spoofer.is_alive() else None
        agent.stop()


def test_node_answering_with_another_id_is_not_connected(tmp_path: Path) -> None:
    real = start_agent(tmp_path / "real", "--mdns-interface", "127.0.0.1", tier="edge", name="edge-a")
    other = start_agent(tmp_path / "other", tier="edge", name="edge-b")  # not advertised
    events: list[ConsoleEvent] = []
    stop, registered = threading.Event(), threading.Event()
    try:
        with started_core(tmp_path / "console.sqlite", telemetry_interval_s=0.2, interfaces=["127.0.0.1"]) as core:
            core.subscribe_events(events.append)
            wait_nodes(core, lambda ns: len(ns) == 1 and ns[0].state == NodeState.ONLINE, message="online")
            real.stop()
            wait_nodes(core, lambda ns: ns[0].state == NodeState.OFFLINE, message="offline")
            # Now an advert for the real node's id points at a different agent: the console follows the
            # address (nodes do move) but the node there proves another id.
            spoofer = threading.Thread(target=_advertise, args=(real.node_id, other.port, stop, registered),
                                       daemon=True)
            spoofer.start()
            assert registered.wait(30)
            wait_until(lambda: any(e.kind == "identity_alert" for e in events), message="an identity alert")
            (node,) = core.nodes().result(5)
            assert node.state == NodeState.OFFLINE and node.node_id == real.node_id
            assert any(other.node_id[:12] in r for r in node.reasons)
            stop.set()
            spoofer.join(30)
    finally:
        stop.set()
        other.stop()
