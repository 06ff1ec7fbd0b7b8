"""Fleet identity end to end: pairing, mutual TLS, roles, pinning, revocation, bad certificates."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from agents import AgentProcess, running_agent
from conftest import ROOT
from models import classifier, softmax

from app.fleet_ca import FleetCA, FleetError
from runners._proto import tierdeck_control_pb2 as ctl
from runners._security import ROLE_CLIENT, cert_pem, create_ca, issue, key_pem, new_key
from runners.client import ClientTLS, NodeClient, manifest_for

W = np.random.default_rng(9).normal(size=(4, 2)).astype(np.float32)
X = np.random.default_rng(10).normal(size=(6, 4)).astype(np.float32)


@pytest.fixture
def fleet(tmp_path: Path) -> FleetCA:
    return FleetCA.init(tmp_path / "fleet")


def _code(agent: AgentProcess) -> str:
    code = agent.extra.get("pairing_code")
    assert isinstance(code, str) and len(code) == 19
    return code


def _rpc_error(coro) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    async def go() -> grpc.aio.AioRpcError:
        try:
            await coro()
        except grpc.aio.AioRpcError as exc:
            return exc
        raise AssertionError("the call was expected to be refused")
    return asyncio.run(go())


def test_pairing_then_mutual_tls(tmp_path: Path, fleet: FleetCA) -> None:
    model = classifier(tmp_path / "m.onnx", W).read_bytes()
    data = tmp_path / "node"
    with running_agent(data, secure=True, name="gate") as agent:
        code = _code(agent)
        assert agent.extra["tls"] is True and agent.extra["enrolled"] is False

        # Unenrolled: only enrolment and node info are served.
        async def deploy_unenrolled() -> None:
            bootstrap = (data / "tls" / "bootstrap.pem").read_bytes()
            async with NodeClient(agent.address, root_pem=bootstrap, target_name="unenrolled.tierdeck") as client:
                info = await client.info()
                assert not info.enrolled and not info.insecure
                await client.deploy(manifest_for("det", model), model)
        error = _rpc_error(deploy_unenrolled)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "not enrolled" in (error.details() or "")

        # A wrong code gets nothing issued, and the node is still unenrolled.
        with pytest.raises(FleetError, match="does not know this pairing code"):
            asyncio.run(fleet.enroll(agent.address, "AAAA-BBBB-CCCC-DDDD"))
        assert fleet.members() == {}
        member = asyncio.run(fleet.enroll(agent.address, code.lower()))  # case and dashes do not matter
        assert member.node_id == agent.node_id and member.name == "gate"

        async def as_console() -> None:
            tls = fleet.console_tls()
            for _ in range(50):  # the node switches to mutual TLS right after answering
                try:
                    async with NodeClient(agent.address, tls=tls, node_id=agent.node_id) as client:
                        info = await client.info(timeout=2)
                        break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)
            assert info.enrolled and info.fingerprint == member.fingerprint
            async with NodeClient(agent.address, tls=tls, node_id=agent.node_id) as client:
                await client.deploy(manifest_for("det", model), model)
                result = await client.infer("det", {"x": X})
                np.testing.assert_allclose(result.outputs["probs"], softmax(X, W), rtol=1e-5, atol=1e-6)
        asyncio.run(as_console())
    # Enrolment survives a restart: still mutual TLS, no pairing code.
    with running_agent(data, secure=True, name="gate") as again:
        assert again.extra["enrolled"] is True and "pairing_code" not in again.extra

        async def check() -> None:
            async with NodeClient(again.address, tls=fleet.console_tls(), node_id=again.node_id) as client:
                assert [s.manifest.stage_id for s in await client.stages()] == ["det"]
        asyncio.run(check())


@pytest.fixture
def enrolled(tmp_path: Path, fleet: FleetCA):  # type: ignore[no-untyped-def]
    model = classifier(tmp_path / "m.onnx", W).read_bytes()
    with running_agent(tmp_path / "node", secure=True) as agent:
        asyncio.run(fleet.enroll(agent.address, _code(agent)))

        async def deploy() -> None:
            for _ in range(50):
                try:
                    async with NodeClient(agent.address, tls=fleet.console_tls(), node_id=agent.node_id) as client:
                        await client.deploy(manifest_for("det", model), model, timeout=5)
                        return
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)
            raise AssertionError("node never came up with mutual TLS")
        asyncio.run(deploy())
        yield agent


def _infer_with(agent: AgentProcess, tls: ClientTLS | None, node_id: str = "", root: bytes = b""):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        async with NodeClient(agent.address, tls=tls, node_id=node_id or agent.node_id, root_pem=root) as client:
            return await client.infer("det", {"x": X}, timeout=5)
    return go


def test_client_certificate_may_infer_but_not_deploy(enrolled: AgentProcess, fleet: FleetCA, tmp_path: Path) -> None:
    member = fleet.issue_client("sensor-1", tmp_path / "sensor")
    d = tmp_path / "sensor"
    tls = ClientTLS((d / "ca.pem").read_bytes(), (d / "key.pem").read_bytes(), (d / "cert.pem").read_bytes())
    result = asyncio.run(_infer_with(enrolled, tls)())
    assert result.outputs["probs"].shape == (6, 2)

    async def deploy() -> None:
        async with NodeClient(enrolled.address, tls=tls, node_id=enrolled.node_id) as client:
            await client.undeploy("det")
    error = _rpc_error(deploy)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "only the fleet console" in (error.details() or "")

    # Revoking the client: the console pushes the list, the node refuses the certificate.
    hits, errors = asyncio.run(fleet.revoke("sensor-1"))
    assert [h.serial for h in hits] == [member.serial] and errors == {}
    error = _rpc_error(_infer_with(enrolled, tls))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "revoked" in (error.details() or "")
    # The console itself is unaffected.
    assert asyncio.run(_infer_with(enrolled, fleet.console_tls())()).outputs["probs"].shape == (6, 2)


def test_no_certificate_is_refused(enrolled: AgentProcess, fleet: FleetCA) -> None:
    error = _rpc_error(_infer_with(enrolled, None, root=fleet.ca_pem))  # server-auth TLS only
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_is_refused(enrolled: AgentProcess) -> None:
    error = _rpc_error(_infer_with(enrolled, None, root=b""))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_is_refused(enrolled: AgentProcess, fleet: FleetCA) -> None:
    other_key, other_ca = create_ca("someone else's CA")
    key = new_key()
    cert = issue(other_key, other_ca, key.public_key(), ROLE_CLIENT, "intruder")
    # Trusting our CA for the server, presenting a certificate from another CA.
    tls = ClientTLS(fleet.ca_pem, key_pem(key), cert_pem(cert))
    assert _rpc_error(_infer_with(enrolled, tls)).code() == grpc.StatusCode.UNAVAILABLE


def test_expired_certificate_is_refused(enrolled: AgentProcess, fleet: FleetCA) -> None:
    key = new_key()
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    cert = issue(fleet.ca_key, fleet.ca_cert, key.public_key(), ROLE_CLIENT, "old", days=1, not_before=long_ago)
    tls = ClientTLS(fleet.ca_pem, key_pem(key), cert_pem(cert))
    assert _rpc_error(_infer_with(enrolled, tls)).code() == grpc.StatusCode.UNAVAILABLE


def test_node_claiming_another_id_gets_no_connection(enrolled: AgentProcess, fleet: FleetCA) -> None:
    # The console dials expecting node "b0gus": the real node's certificate names another id.
    error = _rpc_error(_infer_with(enrolled, fleet.console_tls(), node_id="b0gus"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_enrolled_nodes_forward_over_mutual_tls(tmp_path: Path, fleet: FleetCA) -> None:
    model = classifier(tmp_path / "m.onnx", W).read_bytes()
    tls = fleet.console_tls()
    with running_agent(tmp_path / "cloud", secure=True, tier="cloud") as cloud, \
            running_agent(tmp_path / "edge", secure=True) as edge:
        for agent in (cloud, edge):
            asyncio.run(fleet.enroll(agent.address, _code(agent)))

        async def go() -> None:
            await asyncio.sleep(0.5)
            async with NodeClient(cloud.address, tls=tls, node_id=cloud.node_id) as client:
                await client.deploy(manifest_for("heavy", model), model)
            async with NodeClient(edge.address, tls=tls, node_id=edge.node_id) as client:
                rule = ctl.EscalationRule(output="probs", labels=["a", "b"], confidence_below=1.01)
                hop = ctl.NextHop(address=cloud.address, model="heavy", node_id=cloud.node_id, labels=["A", "B"])
                await client.deploy(manifest_for("edge", model, rule=rule, next_hop=hop), model)
                result = await client.infer("edge", {"x": X})
                assert result.outputs["decision_final"].all()
                assert {v.decode() for v in result.outputs["decision_stage"]} == {"heavy"}
        asyncio.run(go())
        # Removing the edge node from the fleet: the cloud node refuses its certificate from now on.
        hits, errors = asyncio.run(fleet.revoke(edge.node_id))
        assert [h.node_id for h in hits] == [edge.node_id]
        assert list(errors) == [edge.node_id] or errors == {}  # the revoked node itself may refuse the push

        async def after() -> None:
            async with NodeClient(edge.address, tls=tls, node_id=edge.node_id) as client:
                result = await client.infer("edge", {"x": X})
                assert not result.outputs["decision_final"].any()  # escalations refused upstream: provisional
        asyncio.run(after())


def test_fleet_command_line(tmp_path: Path) -> None:
    fleet_dir = tmp_path / "fleet"

    def tierdeck(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli", "fleet", "--fleet-dir", str(fleet_dir), *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)

    assert tierdeck("init").returncode == 0
    again = tierdeck("init")
    assert again.returncode == 1 and "already exists" in again.stdout
    with running_agent(tmp_path / "node", secure=True) as agent:
        wrong = tierdeck("enroll", agent.address, "--code", "0000-0000-0000-0000")
        assert wrong.returncode == 1 and "pairing code" in wrong.stdout
        ok = tierdeck("enroll", agent.address, "--code", _code(agent))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert agent.node_id in ok.stdout
    out = tierdeck("client-cert", "cam-7", "--out", str(tmp_path / "cam"))
    assert out.returncode == 0 and (tmp_path / "cam" / "cert.pem").exists()
    listing = tierdeck("list")
    assert '"role": "node"' in listing.stdout and '"name": "cam-7"' in listing.stdout


def test_private_keys_are_0600_from_their_creation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even with umask 0 no key file is ever readable by others, not between its creation and a chmod."""
    import os
    import stat

    from runners._identity import NodeIdentity

    modes: dict[str, int] = {}
    real_replace = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        modes[Path(dst).name] = stat.S_IMODE(os.stat(src).st_mode)  # the file as it was written, before the rename
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    old_umask = os.umask(0)
    try:
        FleetCA.init(tmp_path / "fleet").issue_client("cam-7", tmp_path / "cam")
        NodeIdentity(tmp_path / "node", "node-1", insecure=False)
    finally:
        os.umask(old_umask)
    keys = {name: mode for name, mode in modes.items() if name.endswith((".key", "key.pem"))}
    assert keys == {"ca.key": 0o600, "console.key": 0o600, "key.pem": 0o600, "node.key": 0o600}
    assert modes["ca.pem"] == 0o666, "certificates stay readable"
