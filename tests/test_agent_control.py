"""Control plane: deploy (and every way a deploy can fail), rollback, restart, policy, health, telemetry."""

from __future__ import annotations

import asyncio
import hashlib
import os
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
from agents import AgentProcess, running_agent, start_agent
from models import classifier, softmax

from runners._proto import tierdeck_control_pb2 as ctl
from runners._telemetry import StageStats, TelemetryWindow
from runners.client import DeployError, NodeClient, deploy_requests, manifest_for

W1 = np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32)
W2 = np.random.default_rng(2).normal(size=(4, 2)).astype(np.float32)
X = np.random.default_rng(3).normal(size=(8, 4)).astype(np.float32)


@pytest.fixture
def models(tmp_path: Path) -> dict[str, bytes]:
    return {"v1": classifier(tmp_path / "v1.onnx", W1).read_bytes(),
            "v2": classifier(tmp_path / "v2.onnx", W2).read_bytes()}


async def _probs(client: NodeClient, model: str = "det") -> np.ndarray:
    return (await client.infer(model, {"x": X})).outputs["probs"]


def _files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


def test_deploy_rollback_restart(tmp_path: Path, models: dict[str, bytes]) -> None:
    data = tmp_path / "node"
    with running_agent(data) as agent:
        async def first() -> None:
            async with NodeClient(agent.address) as client:
                info = await client.deploy(manifest_for("det", models["v1"], "1"), models["v1"])
                assert info.state == "ready" and info.previous_version == ""
                np.testing.assert_allclose(await _probs(client), softmax(X, W1), rtol=1e-5, atol=1e-6)
                info = await client.deploy(manifest_for("det", models["v2"], "2"), models["v2"])
                assert info.previous_version == "1"
                np.testing.assert_allclose(await _probs(client), softmax(X, W2), rtol=1e-5, atol=1e-6)
                assert await client.healthy("stage/det")
                rolled = await client.rollback("det")
                assert rolled.manifest.version == "1" and rolled.previous_version == "2"
                np.testing.assert_allclose(await _probs(client), softmax(X, W1), rtol=1e-5, atol=1e-6)
                assert (await client.info()).config_counter == 3
        asyncio.run(first())
        node_id = agent.node_id
    with running_agent(data) as again:
        assert again.node_id == node_id

        async def second() -> None:
            async with NodeClient(again.address) as client:
                stages = await client.stages()
                assert [(s.manifest.stage_id, s.manifest.version) for s in stages] == [("det", "1")]
                np.testing.assert_allclose(await _probs(client), softmax(X, W1), rtol=1e-5, atol=1e-6)
                assert await client.undeploy("det")
                assert await client.stages() == []
                assert not await client.healthy("stage/det")
        asyncio.run(second())


def _not_a_model() -> bytes:
    # A valid protobuf message, just not an ONNX model: a TensorProto.
    return onnx.numpy_helper.from_array(np.arange(10, dtype=np.float32), "t").SerializeToString()


BAD_UPLOADS = {
    "truncated": ("verify", "truncated"),
    "wrong_sha256": ("verify", "sha256 mismatch"),
    "random_bytes": ("validate", "not an ONNX model"),
    "protobuf_not_a_model": ("validate", "not an ONNX model"),
    "empty_graph_model": ("validate", "no graph"),
    "bad_operator": ("load", "onnxruntime could not load"),
    "too_big_for_memory_cap": ("receive", "memory cap"),
    "rule_on_unknown_class": ("validate", "unknown classes"),
    "bad_stage_id": ("receive", "not allowed"),
}


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("bad")
    v1 = classifier(tmp / "v1.onnx", W1).read_bytes()
    # 48 MiB: room for a real session's measured warm-up (runners/_limits.py), not for a 30 MiB file (x2).
    with running_agent(tmp / "node", "--memory-cap-mb", "48") as agent:
        async def deploy() -> None:
            async with NodeClient(agent.address) as client:
                await client.deploy(manifest_for("det", v1, "1"), v1)
        asyncio.run(deploy())
        yield agent


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_refused_and_previous_keeps_serving(serving: AgentProcess, case: str,
                                                          tmp_path: Path) -> None:
    good = classifier(tmp_path / "v2.onnx", W2).read_bytes()
    model, manifest = good, manifest_for("det", good, "2")
    if case == "truncated":
        manifest = manifest_for("det", good, "2")
        model = good[: len(good) // 2]
    elif case == "wrong_sha256":
        manifest.sha256 = hashlib.sha256(b"something else").hexdigest()
    elif case == "random_bytes":
        model = os.urandom(4096)
        manifest = manifest_for("det", model, "2")
    elif case == "protobuf_not_a_model":
        model = _not_a_model()
        manifest = manifest_for("det", model, "2")
    elif case == "empty_graph_model":
        model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])).SerializeToString()
        manifest = manifest_for("det", model, "2")
    elif case == "bad_operator":
        proto = onnx.load_from_string(good)
        proto.graph.node[2].op_type = "NoSuchOperator"
        model = proto.SerializeToString()
        manifest = manifest_for("det", model, "2")
    elif case == "too_big_for_memory_cap":
        model = good + b"\0" * (30 << 20)
        manifest = manifest_for("det", model, "2")
    elif case == "rule_on_unknown_class":
        manifest = manifest_for("det", good, "2",
                                rule=ctl.EscalationRule(output="probs", labels=["water", "vessel"], class_in=["tug"]))
    elif case == "bad_stage_id":
        manifest = manifest_for("../escape", good, "2")
    step, words = BAD_UPLOADS[case]

    async def go() -> None:
        async with NodeClient(serving.address) as client:
            with pytest.raises(DeployError) as info:
                await client.deploy(manifest, model)
            assert info.value.step == step, info.value
            assert words in info.value.message, info.value.message
            stages = await client.stages()
            assert [(s.manifest.stage_id, s.manifest.version) for s in stages] == [("det", "1")]
            np.testing.assert_allclose(await _probs(client), softmax(X, W1), rtol=1e-5, atol=1e-6)

    asyncio.run(go())
    assert not any((serving.data_dir / "incoming").iterdir()), "upload left behind"
    assert not (serving.data_dir / "stages" / "escape").exists()
    assert sorted(p.name for p in (serving.data_dir / "stages" / "det" / "versions").iterdir()) == ["1"]


def test_kill_during_deploy_keeps_previous_version(tmp_path: Path, models: dict[str, bytes]) -> None:
    data = tmp_path / "node"
    agent = start_agent(data)
    try:
        async def go() -> None:
            async with NodeClient(agent.address) as client:
                await client.deploy(manifest_for("det", models["v1"], "1"), models["v1"])
                big = models["v2"] + b"\0" * (8 << 20)
                manifest = manifest_for("det", big, "2")

                async def slow_stream():  # type: ignore[no-untyped-def]
                    for n, request in enumerate(deploy_requests(manifest, big)):
                        yield request
                        if n == 3:  # manifest + 3 MiB sent: kill the agent once the upload is on its disk
                            for _ in range(200):
                                parts = list((data / "incoming").glob("*.part"))
                                if parts and parts[0].stat().st_size > 0:
                                    break
                                await asyncio.sleep(0.05)
                            agent.process.kill()
                            await asyncio.sleep(60)

                with pytest.raises(Exception):  # noqa: B017 - the channel breaks in one of several ways
                    await client.control.Deploy(slow_stream(), timeout=30)
        asyncio.run(go())
    finally:
        agent.stop()
    assert agent.process.returncode == -9
    leftovers = _files_under(data / "incoming")
    assert leftovers, "the upload should have been in progress when the agent died"
    with running_agent(data) as again:
        async def check() -> None:
            async with NodeClient(again.address) as client:
                stages = await client.stages()
                assert [(s.manifest.stage_id, s.manifest.version) for s in stages] == [("det", "1")]
                np.testing.assert_allclose(await _probs(client), softmax(X, W1), rtol=1e-5, atol=1e-6)
        asyncio.run(check())
        assert _files_under(data / "incoming") == set()


def test_update_policy_changes_routing_without_redeploy(tmp_path: Path, models: dict[str, bytes]) -> None:
    with running_agent(tmp_path / "node") as agent:
        async def go() -> None:
            async with NodeClient(agent.address) as client:
                rule = ctl.EscalationRule(output="probs", labels=["water", "vessel"], confidence_below=0.0)
                await client.deploy(manifest_for("det", models["v1"], "1", rule=rule), models["v1"])
                result = await client.infer("det", {"x": X})
                assert result.outputs["decision_final"].all()
                rule.confidence_below = 1.01  # every row is now uncertain: escalate (no next hop: provisional)
                info = await client.update_policy(ctl.UpdatePolicyRequest(stage_id="det", rule=rule))
                assert info.manifest.rule.confidence_below == pytest.approx(1.01)
                assert info.manifest.version == "1"
                result = await client.infer("det", {"x": X})
                assert not result.outputs["decision_final"].any()
                assert result.parameters["tierdeck.provisional_rows"] == len(X)
                bad = ctl.EscalationRule(output="nope", labels=["water", "vessel"], confidence_below=0.5)
                with pytest.raises(Exception, match="not an output"):
                    await client.update_policy(ctl.UpdatePolicyRequest(stage_id="det", rule=bad))
        asyncio.run(go())
    with running_agent(tmp_path / "node") as again:  # the policy change survives a restart
        async def check() -> None:
            async with NodeClient(again.address) as client:
                (stage,) = await client.stages()
                assert stage.manifest.rule.confidence_below == pytest.approx(1.01)
        asyncio.run(check())


def test_telemetry_counts_match_requests_and_metrics_endpoint(tmp_path: Path, models: dict[str, bytes]) -> None:
    with running_agent(tmp_path / "node", "--metrics-port", "0") as agent:
        async def go() -> ctl.TelemetrySample:
            async with NodeClient(agent.address) as client:
                rule = ctl.EscalationRule(output="probs", labels=["water", "vessel"], drop_class=["water"],
                                          class_in=["vessel"])
                await client.deploy(manifest_for("det", models["v1"], "1", rule=rule), models["v1"])
                stream = client.telemetry(0.2)
                first = await anext(stream)
                assert first.node_id == agent.node_id and first.interval_s == pytest.approx(0.2)
                for _ in range(5):
                    await client.infer("det", {"x": X})
                while True:
                    sample = await anext(stream)
                    det = next(s for s in sample.stages if s.stage_id == "det")
                    if det.requests_total == 5 and sample.power_source:
                        await stream.aclose()
                        return sample
        sample = asyncio.run(go())
        det = next(s for s in sample.stages if s.stage_id == "det")
        vessel = int((softmax(X, W1).argmax(axis=1) == 1).sum())
        assert det.inferences_total == 5 * len(X)
        assert det.escalated_total == 5 * vessel
        assert det.dropped_total == 5 * (len(X) - vessel)
        assert det.provisional_total == 5 * vessel  # no next hop: the escalations are answered provisional
        assert det.score_kind == "confidence" and len(det.score_histogram) == 20
        assert sample.power_source == "estimate" and not sample.power_measured
        assert sample.rss_bytes > 0
        assert det.compute_seconds_total > 0 and det.compute_cpu_seconds_total > 0  # onnxruntime's time and CPU
        # Prometheus text format on the metrics port printed with the listening line.
        metrics_port = agent.extra["metrics_port"]
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert f'tierdeck_stage_inferences_total{{node_id="{agent.node_id}",stage="det"}} {5 * len(X)}.0' in text
        assert 'tierdeck_node_power_watts{' in text and 'source="estimate"' in text
        assert "tierdeck_stage_request_latency_seconds_bucket" in text
        assert f'tierdeck_stage_compute_cpu_seconds_total{{node_id="{agent.node_id}",stage="det"}}' in text


def test_each_sample_histograms_the_scores_since_the_one_before() -> None:
    stats = StageStats("det")
    window = TelemetryWindow()
    stats.record_scores(np.array([0.0, 0.04, 0.5, 0.97, 1.0, 1.7, -0.3, np.nan], np.float32))
    first = window.sample(ctl.TelemetrySample(interval_s=1.0), [stats], now=1.0).stages[0]
    expected = [0] * 20
    for b in (0, 0, 10, 19, 19, 19, 0):  # out of [0, 1] clipped to the end bins, NaN not counted
        expected[b] += 1
    assert list(first.score_histogram) == expected
    stats.record_scores(np.array([0.51, 0.52]))
    second = window.sample(ctl.TelemetrySample(interval_s=1.0), [stats], now=2.0).stages[0]
    assert list(second.score_histogram) == [0] * 10 + [2] + [0] * 9
    third = window.sample(ctl.TelemetrySample(interval_s=1.0), [stats], now=3.0).stages[0]
    assert list(third.score_histogram) == [0] * 20


def test_telemetry_interval_out_of_range_is_refused(tmp_path: Path) -> None:
    with running_agent(tmp_path / "node") as agent:
        async def go() -> None:
            async with NodeClient(agent.address) as client:
                with pytest.raises(Exception, match=r"between 0\.1 and 10"):
                    await anext(client.telemetry(30))
        asyncio.run(go())


def test_node_info_and_health(tmp_path: Path) -> None:
    with running_agent(tmp_path / "node", "--memory-cap-mb", "64", "--power-budget-watts", "12", tier="device",
                       name="gate-cam") as agent:
        async def go() -> ctl.NodeInfo:
            async with NodeClient(agent.address) as client:
                assert await client.healthy("")
                return await client.info()
        info = asyncio.run(go())
    assert info.node_id == agent.node_id and info.name == "gate-cam" and info.tier == "device"
    assert info.cpu_cores >= 1 and info.ram_total_bytes >= info.ram_free_bytes > 0
    assert "CPUExecutionProvider" in info.execution_providers
    assert info.power_source == "estimate" and not info.power_measured
    assert info.memory_cap_bytes == 64 << 20 and info.power_budget_watts == 12
    assert info.insecure and info.agent_version and info.onnxruntime_version


def test_energy_per_inference_is_attributed_under_load(tmp_path: Path, models: dict[str, bytes]) -> None:
    with running_agent(tmp_path / "node", "--idle-watts", "2", "--max-watts", "40") as agent:
        async def go() -> ctl.StageTelemetry:
            async with NodeClient(agent.address) as client:
                await client.deploy(manifest_for("det", models["v1"], "1"), models["v1"])
                x = np.random.default_rng(0).normal(size=(4096, 4)).astype(np.float32)
                stream = client.telemetry(0.5)
                await anext(stream)
                while True:
                    for _ in range(20):
                        await client.infer("det", {"x": x})
                    det = next(s for s in (await anext(stream)).stages if s.stage_id == "det")
                    if det.energy_joules_total > 0 and det.energy_per_inference_j > 0:
                        await stream.aclose()
                        return det
        det = asyncio.run(go())
    assert det.energy_per_inference_j < 1.0  # a 4x2 matmul per row: far below a joule


def test_telemetry_seq_is_per_boot_across_streams(tmp_path: Path) -> None:
    with running_agent(tmp_path / "node") as agent:
        async def go() -> list[tuple[str, int]]:
            seen = []
            async with NodeClient(agent.address) as client:
                for _ in range(3):  # three streams one after the other: numbers keep rising
                    stream = client.telemetry(0.1)
                    for _ in range(2):
                        sample = await anext(stream)
                        seen.append((sample.boot_id, sample.seq))
                    await stream.aclose()
            return seen
        seen = asyncio.run(go())
    assert len({boot for boot, _ in seen}) == 1
    seqs = [s for _, s in seen]
    assert seqs == sorted(set(seqs)) and seqs[0] >= 1
