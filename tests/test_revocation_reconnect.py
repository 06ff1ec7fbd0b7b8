"""Revocations reach nodes that were away: the console pushes the list whenever it (re)connects."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import grpc
from agents import AgentProcess, start_agent

from app._fleet import Fleet
from app._records import ConsoleEvent, NodeState
from app.fleet_ca import FleetCA
from runners.client import ClientTLS, NodeClient


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _info_status(agent_address: str, node_id: str, tls: ClientTLS) -> grpc.StatusCode:
    try:
        async with NodeClient(agent_address, tls=tls, node_id=node_id) as client:
            await client.info(timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_a_node_away_during_revoke_gets_the_list_when_the_console_reconnects(tmp_path: Path) -> None:
    fleet = FleetCA.init(tmp_path / "fleet")
    listen = f"127.0.0.1:{_free_port()}"
    data = tmp_path / "node"
    agent = start_agent(data, listen=listen, secure=True, name="gate")
    member = asyncio.run(fleet.enroll(agent.address, str(agent.extra["pairing_code"])))
    fleet.issue_client("cam-1", tmp_path / "cam")
    d = tmp_path / "cam"
    cam = ClientTLS((d / "ca.pem").read_bytes(), (d / "key.pem").read_bytes(), (d / "cert.pem").read_bytes())
    events: list[ConsoleEvent] = []
    holder: dict[str, AgentProcess] = {"agent": agent}

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        console = Fleet(tls=fleet.console_tls(), revocations=fleet.revoked, backoff_s=(0.25, 1.0),
                        on_event=events.append)
        await console.async_start()
        try:
            key = console.add_address(agent.address)

            def state() -> NodeState | None:
                node = console.node(member.node_id) or console.node(key)
                return node.state if node is not None else None
            assert await console.async_wait_for(lambda _: state() == NodeState.ONLINE, 60)
            assert await _info_status(agent.address, member.node_id, cam) == grpc.StatusCode.OK

            await loop.run_in_executor(None, holder["agent"].stop)  # the node goes away...
            assert await console.async_wait_for(lambda _: state() == NodeState.OFFLINE, 60)
            _, errors = await fleet.revoke("cam-1")                   # ...and misses the revocation
            assert member.node_id in errors
            assert json.loads((data / "tls" / "revoked.json").read_text()) == []

            holder["agent"] = await loop.run_in_executor(
                None, lambda: start_agent(data, listen=listen, secure=True, name="gate"))
            assert await console.async_wait_for(lambda _: state() == NodeState.ONLINE, 60)
            assert await console.async_wait_for(
                lambda _: any(e.kind == "revocations" and "1 revoked" in e.message for e in events), 30)
            assert await _info_status(agent.address, member.node_id, cam) == grpc.StatusCode.PERMISSION_DENIED
            # The console itself still gets in.
            assert await _info_status(agent.address, member.node_id, fleet.console_tls()) == grpc.StatusCode.OK
        finally:
            await console.async_stop()
    try:
        asyncio.run(asyncio.wait_for(scenario(), 240))
    finally:
        holder["agent"].stop()
