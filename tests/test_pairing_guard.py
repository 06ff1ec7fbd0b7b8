"""Pairing a stranger cannot block: wrong proofs cost the sender back-off, not the operator their code."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from pathlib import Path

import grpc
import pytest
from agents import AgentProcess, running_agent

from app._fleet import Fleet
from app._records import ConsoleEvent
from app.fleet_ca import FleetCA, FleetError
from runners._identity import AccessDenied, NodeIdentity
from runners._proto import tierdeck_control_pb2 as ctl
from runners._security import PairingGuard, peer_address, proof, public_pem, transcript
from runners.client import NodeClient, fetch_server_certificate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_guard_gives_a_few_free_tries_then_doubles_the_wait_per_peer() -> None:
    clock = Clock()
    guard = PairingGuard(free=3, base_s=1.0, max_s=8.0, rotate_after=50, max_peers=3, clock=clock)
    assert [guard.wrong("ipv4:10.0.0.9")[0] for _ in range(7)] == [0, 0, 0, 1, 2, 4, 8]
    assert guard.wait_s("ipv4:10.0.0.9") == 8.0
    assert guard.wait_s("ipv4:10.0.0.7") == 0.0  # another address is not slowed by it
    clock.now += 5
    assert guard.wait_s("ipv4:10.0.0.9") == 3.0
    guard.succeeded("ipv4:10.0.0.9")
    assert guard.wait_s("ipv4:10.0.0.9") == 0.0
    for n in range(5):  # bounded memory
        guard.wrong(f"ipv4:10.0.1.{n}")
    assert len(guard._peers) == 3
    assert guard.total_wrong == 12 and not guard.wrong("x")[1]
    assert peer_address("ipv4:10.1.0.7:50512") == "ipv4:10.1.0.7"
    assert peer_address("ipv6:[fe80::1]:5") == "ipv6:[fe80::1]"


def _wrong_complete(identity: NodeIdentity, peer: str) -> None:
    console_nonce = secrets.token_bytes(32)
    _, node_nonce, _ = identity.begin(console_nonce, peer)
    with pytest.raises(AccessDenied) as info:
        identity.complete(console_nonce, node_nonce, b"ca", b"cert", b"\0" * 32, [], peer)
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_a_stranger_hammering_wrong_codes_neither_rotates_the_code_nor_blocks_another_peer(tmp_path: Path) -> None:
    identity = NodeIdentity(tmp_path, "4d6f5a1e-0000-4000-8000-00000000000a", insecure=False)
    changed: list[tuple[str, str]] = []
    identity.on_code_changed = lambda code, why: changed.append((code, why))
    code = identity.pairing_code
    for _ in range(4):
        _wrong_complete(identity, "ipv4:10.0.0.66")
    with pytest.raises(AccessDenied) as info:  # now backing off: refused before any proof is checked
        identity.begin(secrets.token_bytes(32), "ipv4:10.0.0.66")
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "try again in" in info.value.message
    assert identity.pairing_code == code and changed == [] and identity.code_generation == 0
    # The operator at another address still gets the node's proof under the code they read.
    console_nonce = secrets.token_bytes(32)
    public, node_nonce, node_proof = identity.begin(console_nonce, "ipv4:10.0.0.5")
    assert node_proof == proof(code, "node", transcript(identity.node_id, public, node_nonce, console_nonce))


def test_many_addresses_guessing_get_a_new_code_reported_once(tmp_path: Path) -> None:
    identity = NodeIdentity(tmp_path, "4d6f5a1e-0000-4000-8000-00000000000b", insecure=False)
    identity.guard.rotate_after = 6
    changed: list[tuple[str, str]] = []
    identity.on_code_changed = lambda code, why: changed.append((code, why))
    first = identity.pairing_code
    for n in range(6):
        _wrong_complete(identity, f"ipv4:10.0.0.{n}")
    assert len(changed) == 1 and changed[0][0] == identity.pairing_code != first
    assert identity.code_generation == 1 and "6 wrong pairing codes" in changed[0][1]
    assert public_pem(identity.key)  # still the same node key


async def _stranger_tries(agent: AgentProcess) -> grpc.StatusCode:
    """One wrong CompleteEnrollment, sent the way an attacker on the LAN would; returns the status."""
    bootstrap = await asyncio.get_running_loop().run_in_executor(None, fetch_server_certificate, agent.address)
    async with NodeClient(agent.address, root_pem=bootstrap, target_name="unenrolled.tierdeck") as client:
        console_nonce = secrets.token_bytes(32)
        try:
            begun = await client.control.BeginEnrollment(ctl.BeginEnrollmentRequest(console_nonce=console_nonce),
                                                         timeout=10)
            await client.control.CompleteEnrollment(ctl.CompleteEnrollmentRequest(
                console_nonce=console_nonce, node_nonce=begun.node_nonce, ca_pem=b"x", certificate_pem=b"y",
                console_proof=secrets.token_bytes(32)), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    raise AssertionError("a wrong proof was accepted")


def test_wrong_proofs_over_the_network_leave_the_operators_code_good(tmp_path: Path) -> None:
    fleet = FleetCA.init(tmp_path / "fleet")
    with running_agent(tmp_path / "node", secure=True, name="gate") as agent:
        code = str(agent.extra["pairing_code"])

        async def attack() -> list[grpc.StatusCode]:
            codes = [await _stranger_tries(agent) for _ in range(4)]  # three free, the fourth starts a back-off
            codes.append(await _stranger_tries(agent))               # refused while backing off
            while (status := await _stranger_tries(agent)) == grpc.StatusCode.RESOURCE_EXHAUSTED:
                await asyncio.sleep(0.2)
            codes.append(status)                                      # the fifth wrong proof counted
            return codes
        statuses = asyncio.run(attack())
        assert statuses == [grpc.StatusCode.PERMISSION_DENIED] * 4 + [grpc.StatusCode.RESOURCE_EXHAUSTED,
                                                                      grpc.StatusCode.PERMISSION_DENIED]

        async def enrol() -> None:  # the operator (here: the same address, so after its back-off)
            while True:
                try:
                    member = await fleet.enroll(agent.address, code)
                    break
                except FleetError as exc:
                    assert "try again in" in str(exc), exc
                    await asyncio.sleep(0.2)
            assert member.node_id == agent.node_id
        asyncio.run(enrol())


def _next_stdout_line(agent: AgentProcess, timeout: float = 30.0) -> dict[str, object]:
    assert agent.process.stdout is not None
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(agent.process.stdout.readline()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    reader.join(timeout)
    assert line and line[0], "no line on stdout"
    return dict(json.loads(line[0]))


def test_a_new_code_is_printed_on_stdout_and_shown_in_the_console(tmp_path: Path) -> None:
    fleet = FleetCA.init(tmp_path / "fleet")
    with running_agent(tmp_path / "node", "--mdns-interface", "127.0.0.1", "--pairing-rotate-after", "2",
                       secure=True, name=f"gate-{secrets.token_hex(3)}") as agent:
        old = str(agent.extra["pairing_code"])
        events: list[ConsoleEvent] = []

        async def scenario() -> dict[str, object]:
            console = Fleet(interfaces=["127.0.0.1"], on_event=events.append)
            await console.async_start()
            try:
                assert await console.async_wait_for(lambda nodes: any(n.node_id == agent.node_id for n in nodes),
                                                    30)
                for _ in range(2):
                    assert await _stranger_tries(agent) == grpc.StatusCode.PERMISSION_DENIED
                line = await asyncio.get_running_loop().run_in_executor(None, _next_stdout_line, agent)
                assert await console.async_wait_for(
                    lambda _: any(e.kind == "pairing_code_changed" for e in events), 30)
                node = console.node(agent.node_id)
                assert node is not None and any("pairing code" in r and "changed" in r for r in node.reasons)
                return line
            finally:
                await console.async_stop()
        line = asyncio.run(scenario())
        assert line["event"] == "pairing_code" and line["generation"] == 1
        new = str(line["pairing_code"])
        assert new != old and len(new) == 19
        event = next(e for e in events if e.kind == "pairing_code_changed")
        assert event.severity == "warning" and event.node_id == agent.node_id
        with pytest.raises(FleetError, match="does not know this pairing code"):
            asyncio.run(fleet.enroll(agent.address, old))
        assert asyncio.run(fleet.enroll(agent.address, new)).node_id == agent.node_id
