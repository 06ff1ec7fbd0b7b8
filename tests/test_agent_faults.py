"""Faults and hostile input at the agent: next hop slow or failing, cancelled streams, hostile names and models."""

from __future__ import annotations

import asyncio
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import onnx
import psutil
import pytest
from agents import AgentProcess, running_agent
from models import classifier
from onnx import TensorProto, helper, numpy_helper

from runners._proto import grpc_predict_v2_pb2 as pb
from runners._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from runners._proto import tierdeck_control_pb2 as ctl
from runners._tensors import decode_inputs, encode_outputs
from runners.client import DeployError, NodeClient, infer_request, manifest_for


class _Flaky(pb_grpc.GRPCInferenceServiceServicer):
    """A next hop whose behaviour the test switches: "ok", "slow" (past the deadline) or "error"."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls = 0

    def ModelMetadata(self, request, context):  # type: ignore[no-untyped-def]
        meta = pb.ModelMetadataResponse(name=request.name)
        meta.inputs.add(name="x", datatype="FP32", shape=[-1, 4])
        return meta

    def ModelReady(self, request, context):  # type: ignore[no-untyped-def]
        return pb.ModelReadyResponse(ready=self.mode == "ok")

    def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.mode == "error":
            context.abort(grpc.StatusCode.INTERNAL, "model crashed")
        if self.mode == "slow":
            time.sleep(1.5)
        rows = decode_inputs(request)["x"].shape[0]
        response = pb.ModelInferResponse(model_name=request.model_name)
        encode_outputs(response, [("p", np.tile([[0.2, 0.8]], (rows, 1)).astype(np.float32))])
        return response


async def _totals(client: NodeClient, stage: str) -> ctl.StageTelemetry:
    stream = client.telemetry(0.1)
    await anext(stream)
    sample = await anext(stream)
    await stream.aclose()
    return next(s for s in sample.stages if s.stage_id == stage)


@pytest.mark.parametrize("failure", ["slow", "error"])
def test_circuit_breaker_opens_and_recovers(tmp_path: Path, failure: str) -> None:
    hop = _Flaky()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(hop, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    model = classifier(tmp_path / "m.onnx", np.zeros((4, 2), np.float32)).read_bytes()
    x = np.zeros((5, 4), np.float32)
    try:
        with running_agent(tmp_path / "edge") as edge:
            async def go() -> None:
                async with NodeClient(edge.address) as client:
                    rule = ctl.EscalationRule(output="probs", labels=["a", "b"], confidence_below=0.9)
                    next_hop = ctl.NextHop(address=f"127.0.0.1:{port}", model="top", labels=["no", "yes"],
                                           timeout_s=0.5)
                    await client.deploy(manifest_for("edge", model, rule=rule, next_hop=next_hop), model)
                    assert (await client.infer("edge", {"x": x})).outputs["decision_final"].all()
                    hop.mode = failure
                    first = await client.infer("edge", {"x": x})  # this call trips the breaker
                    assert not first.outputs["decision_final"].any()
                    calls = hop.calls
                    for _ in range(5):  # breaker open: answered at once, provisional, hop not called
                        result = await client.infer("edge", {"x": x})
                        assert not result.outputs["decision_final"].any()
                    assert hop.calls - calls <= 1  # at most one delivery attempt slipped in
                    opened = await _totals(client, "edge")
                    assert opened.link_state == "down" and opened.provisional_total == 30
                    assert opened.queued_total == 30
                    hop.mode = "ok"  # the hop recovers: the breaker closes, the queue drains
                    deadline = time.monotonic() + 60
                    while (t := await _totals(client, "edge")).delivered_total < 30 and time.monotonic() < deadline:
                        pass
                    assert t.delivered_total == 30 and t.link_state == "up" and t.queue_depth == 0
                    assert (await client.infer("edge", {"x": x})).outputs["decision_final"].all()
            asyncio.run(go())
    finally:
        server.stop(grace=None)


def test_cancelled_telemetry_streams_free_their_state(tmp_path: Path) -> None:
    with running_agent(tmp_path / "node") as agent:
        process = psutil.Process(agent.process.pid)

        async def one(client: NodeClient, i: int) -> None:
            if i % 2:  # the client's deadline expires mid-stream
                call = client.control.WatchTelemetry(ctl.WatchTelemetryRequest(interval_s=0.1), timeout=0.05)
                with pytest.raises(grpc.aio.AioRpcError):
                    async for _ in call:
                        pass
            else:  # the client cancels after the first sample
                stream = client.telemetry(0.1)
                await anext(stream)
                await stream.aclose()

        async def churn(n: int) -> None:
            async with NodeClient(agent.address) as client:
                for start in range(0, n, 50):
                    await asyncio.gather(*(one(client, i) for i in range(start, start + 50)))

        asyncio.run(churn(100))  # warm up allocator and caches
        before = process.memory_info().rss
        asyncio.run(churn(1000))

        async def streams() -> int:
            async with NodeClient(agent.address) as client:
                for _ in range(100):
                    info = await client.info()
                    if info.active_streams == 0:
                        break
                    await asyncio.sleep(0.05)
                return info.active_streams
        assert asyncio.run(streams()) == 0
        growth = process.memory_info().rss - before
        assert growth < 16 << 20, f"RSS grew by {growth / 2**20:.1f} MiB over 1000 cancelled streams"


HOSTILE_IDS = ["..", "a/../b", "/x", "", " ", "stage one", "x" * 256, "a\x00b", "é"]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with running_agent(tmp_path_factory.mktemp("faults") / "node", "--memory-cap-mb", "64") as agent:
        yield agent


@pytest.mark.parametrize("stage_id", HOSTILE_IDS)
def test_hostile_stage_ids_are_refused(node: AgentProcess, tmp_path: Path, stage_id: str) -> None:
    model = classifier(tmp_path / "m.onnx", np.zeros((4, 2), np.float32)).read_bytes()

    async def go() -> None:
        async with NodeClient(node.address) as client:
            with pytest.raises(DeployError, match="not allowed"):
                await client.deploy(manifest_for(stage_id, model), model)
            with pytest.raises(DeployError, match="not allowed"):
                await client.deploy(manifest_for("ok", model, version=stage_id or "v/../1"), model)
    asyncio.run(go())
    assert sorted(p.name for p in (node.data_dir / "stages").iterdir()) == []


def _external_model(tmp: Path, location: str) -> bytes:
    weights = numpy_helper.from_array(np.ones((4, 2), np.float32), "W")
    weights.ClearField("raw_data")
    weights.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "32")):
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["probs"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 2])],
                              initializer=[weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "a/../../secret.bin", "link.bin",
                                      "weights.bin"])
def test_external_data_is_refused_before_loading(node: AgentProcess, tmp_path: Path, location: str) -> None:
    target = tmp_path / "secret.bin"
    target.write_bytes(b"\0" * 32)
    (node.data_dir / "incoming" / "link.bin").symlink_to(target) if location == "link.bin" else None
    model = _external_model(tmp_path, location)

    async def go() -> None:
        async with NodeClient(node.address) as client:
            with pytest.raises(DeployError) as info:
                await client.deploy(manifest_for("ext", model), model)
            assert info.value.step == "validate" and "external data" in info.value.message
    asyncio.run(go())
    assert not (node.data_dir / "stages" / "ext").exists()


def test_unsupported_opset_is_refused(node: AgentProcess, tmp_path: Path) -> None:
    proto = onnx.load(str(classifier(tmp_path / "m.onnx", np.zeros((4, 2), np.float32))))
    proto.opset_import[0].version = 99
    model = proto.SerializeToString()

    async def go() -> None:
        async with NodeClient(node.address) as client:
            with pytest.raises(DeployError) as info:
                await client.deploy(manifest_for("opset", model), model)
            assert info.value.step == "load" and "opset" in info.value.message.lower()
    asyncio.run(go())


def test_empty_model_is_refused(node: AgentProcess) -> None:
    async def go() -> None:
        async with NodeClient(node.address) as client:
            with pytest.raises(DeployError, match="out of range"):
                await client.deploy(manifest_for("empty", b""), b"")
    asyncio.run(go())


@pytest.mark.parametrize("case", ["negative_dim", "huge_dims", "bytes_prefix_past_buffer"])
def test_hostile_tensors_get_invalid_argument(tmp_path: Path, case: str) -> None:
    from models import identity_all_types

    ident = identity_all_types(tmp_path / "ident.onnx")
    with running_agent(tmp_path / "node", "--stage", f"ident={ident}") as agent:
        request = infer_request("ident", {"in_FP32": np.zeros((1, 3), np.float32)})
        if case == "negative_dim":
            request.inputs[0].shape[:] = [-1, 3]
        elif case == "huge_dims":
            request.inputs[0].shape[:] = [2**40, 2**40]
        else:
            request = pb.ModelInferRequest(model_name="ident")
            request.inputs.add(name="in_BYTES", datatype="BYTES", shape=[1, 3])
            request.raw_input_contents.append((100).to_bytes(4, "little") + b"short")

        async def go() -> None:
            async with NodeClient(agent.address) as client:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await client.inference.ModelInfer(request)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert (await client.inference.ServerLive(pb.ServerLiveRequest())).live
        asyncio.run(go())
