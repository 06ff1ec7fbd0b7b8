"""Deploy limits that hold: warm-up that cannot allocate, declared tensors at max_batch, RSS measured at warm-up."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from agents import AgentProcess, start_agent
from models import OPSET, classifier
from onnx import TensorProto, helper

from runners._limits import gib, tensor_bytes
from runners._proto import tierdeck_control_pb2 as ctl
from runners.client import DeployError, NodeClient, deploy_requests, manifest_for

W = np.eye(4, 2, dtype=np.float32)


def _save(graph: onnx.GraphProto, path: Path) -> bytes:
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def declares(path: Path, shape: list[int | str]) -> bytes:
    """A model whose one FP32 input has `shape` (it sums it to a scalar)."""
    graph = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)], "declares",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    return _save(graph, path)


def expands(path: Path, rows: int, cols: int) -> bytes:
    """A model with a tiny declared input [1, 1] that expands it to an FP32 [rows, cols] intermediate."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [rows, cols])
    graph = helper.make_graph([helper.make_node("Expand", ["x", "shape"], ["big"]),
                               helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0)], "expands",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], initializer=[shape])
    return _save(graph, path)


def _start(tmp_path: Path, *args: str) -> AgentProcess:
    agent = start_agent(tmp_path / "node", *args)
    good = classifier(tmp_path / "good.onnx", W).read_bytes()

    async def deploy_good() -> None:
        async with NodeClient(agent.address) as client:
            await client.deploy(manifest_for("det", good, "1"), good)
    asyncio.run(deploy_good())
    return agent


@pytest.fixture(scope="module")
def uncapped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    agent = _start(tmp_path_factory.mktemp("uncapped"))
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    agent = _start(tmp_path_factory.mktemp("capped"), "--memory-cap-mb", "512")
    yield agent
    agent.stop()


async def _still_serving_v1(client: NodeClient) -> None:
    stages = {s.manifest.stage_id: s.manifest.version for s in await client.stages()}
    assert stages.get("det") == "1"
    result = await client.infer("det", {"x": np.ones((1, 4), np.float32)})
    assert result.outputs["probs"].shape == (1, 2)


def test_tensor_sizes_in_words() -> None:
    spec = ctl.TensorSpec(name="x", datatype="FP32", shape=[-1, 3, -1])
    assert tensor_bytes(spec, 10) == 10 * 3 * 1 * 4
    assert gib(40 * 2**40) == "40.0 TiB" and gib(512 * 2**20) == "512.0 MiB"


def test_a_model_whose_warm_up_cannot_allocate_is_refused_at_warmup(uncapped: AgentProcess, tmp_path: Path) -> None:
    model = declares(tmp_path / "huge.onnx", [1 << 20, 1 << 20, 10])  # 40 TiB of FP32

    async def go() -> None:
        async with NodeClient(uncapped.address) as client:
            with pytest.raises(grpc.aio.AioRpcError) as raw:  # what any gRPC client sees
                await client.control.Deploy(deploy_requests(manifest_for("det", model, "2"), model), timeout=60)
            assert raw.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = raw.value.details() or ""
            assert details.startswith("refused at warmup: warm-up needs 40.0 TiB"), details
            assert "available" in details and "Unexpected" not in details
            with pytest.raises(DeployError) as info:  # what the console sees
                await client.deploy(manifest_for("det", model, "3"), model)
            assert info.value.step == "warmup" and "input 'x' alone 40.0 TiB" in info.value.message
            await _still_serving_v1(client)
    asyncio.run(go())


def test_declared_tensors_at_max_batch_count_against_the_memory_cap(capped: AgentProcess, tmp_path: Path) -> None:
    fixed = declares(tmp_path / "fixed.onnx", [1, 1 << 28])            # 1 GiB input, file of a few bytes
    per_row = declares(tmp_path / "rows.onnx", ["batch", 1 << 22])     # 16 MiB per row

    async def go() -> None:
        async with NodeClient(capped.address) as client:
            with pytest.raises(DeployError) as info:
                await client.deploy(manifest_for("det", fixed, "2"), fixed)
            assert info.value.step == "warmup"
            assert "tensor 'x' 1.0 GiB" in info.value.message and "cap of 512.0 MiB" in info.value.message
            with pytest.raises(DeployError) as info:  # default max_batch 64: 1 GiB
                await client.deploy(manifest_for("det", per_row, "3"), per_row)
            assert "at max_batch 64" in info.value.message
            with pytest.raises(DeployError):
                await client.deploy(manifest_for("det", per_row, "4", max_batch=32), per_row)  # 512 MiB + file
            await _still_serving_v1(client)
            stage = await client.deploy(manifest_for("det", per_row, "5", max_batch=8), per_row)  # 128 MiB: fits
            assert stage.manifest.version == "5"
            await client.rollback("det")
    asyncio.run(go())


def test_memory_measured_across_warm_up_counts_against_the_cap(capped: AgentProcess, tmp_path: Path) -> None:
    hidden = expands(tmp_path / "hidden.onnx", 1 << 13, 1 << 15)  # declares [1, 1]; warms up through 1 GiB

    async def go() -> None:
        async with NodeClient(capped.address) as client:
            with pytest.raises(DeployError) as info:
                await client.deploy(manifest_for("det", hidden, "6"), hidden)
            assert info.value.step == "warmup"
            assert "(measured)" in info.value.message and "cap of 512.0 MiB" in info.value.message
            await _still_serving_v1(client)
    asyncio.run(go())
