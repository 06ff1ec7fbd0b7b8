"""The agent's Open Inference Protocol data plane against real agent processes and real ONNX files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
from agents import running_agent
from models import ALL_TYPES, classifier, identity_all_types, softmax

from runners._proto import grpc_predict_v2_pb2 as pb
from runners._tensors import DATATYPES
from runners.client import NodeClient, infer_request

W = np.random.default_rng(7).normal(size=(4, 3)).astype(np.float32)


def _sample(datatype: str, rows: int = 2) -> np.ndarray:
    rng = np.random.default_rng(3)
    if datatype == "BYTES":
        return np.array([[b"", b"vessel", "Kapit\u00e4n \u26f4".encode()]] * rows, dtype=object)
    if datatype == "BOOL":
        return rng.integers(0, 2, size=(rows, 3)).astype(bool)
    dtype = DATATYPES[datatype]
    if dtype.kind == "f":
        return rng.normal(size=(rows, 3)).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=(rows, 3), dtype=dtype, endpoint=True)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("dataplane")
    ident = identity_all_types(tmp / "ident.onnx")
    clf = classifier(tmp / "clf.onnx", W)
    with running_agent(tmp / "data", "--stage", f"ident={ident}", "--stage", f"clf={clf}",
                       "--max-message-mb", "8") as proc:
        yield proc


def test_every_datatype_round_trips_raw(agent) -> None:  # type: ignore[no-untyped-def]
    inputs = {f"in_{dt}": _sample(dt) for dt in ALL_TYPES}

    async def go() -> dict[str, np.ndarray]:
        async with NodeClient(agent.address) as client:
            return (await client.infer("ident", inputs)).outputs

    outputs = asyncio.run(go())
    for dt in ALL_TYPES:
        got, sent = outputs[f"out_{dt}"], inputs[f"in_{dt}"]
        assert got.shape == sent.shape, dt
        assert (got == sent).all(), dt


def test_bytes_that_are_not_utf8_are_refused_for_string_models(agent) -> None:  # type: ignore[no-untyped-def]
    inputs = {f"in_{dt}": _sample(dt) for dt in ALL_TYPES}
    inputs["in_BYTES"] = np.array([[b"\xff\xfe", b"a", b"b"]] * 2, dtype=object)
    _expect_error(agent.address, infer_request("ident", inputs), grpc.StatusCode.INVALID_ARGUMENT, "UTF-8")


def test_typed_contents_are_accepted_and_answered_raw(agent) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="clf")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[3, 4])
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())

    async def go() -> pb.ModelInferResponse:
        async with NodeClient(agent.address) as client:
            return await client.inference.ModelInfer(request)

    response = asyncio.run(go())
    assert len(response.raw_output_contents) == 1 and not response.outputs[0].HasField("contents")
    probs = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(3, 3)
    np.testing.assert_allclose(probs, softmax(x, W), rtol=1e-5, atol=1e-6)


def test_readiness_and_metadata(agent) -> None:  # type: ignore[no-untyped-def]
    async def go() -> tuple:
        async with NodeClient(agent.address) as client:
            stub = client.inference
            live = await stub.ServerLive(pb.ServerLiveRequest())
            ready = await stub.ServerReady(pb.ServerReadyRequest())
            model_ready = await stub.ModelReady(pb.ModelReadyRequest(name="clf"))
            absent = await stub.ModelReady(pb.ModelReadyRequest(name="nope"))
            meta = await client.metadata("clf")
            server = await stub.ServerMetadata(pb.ServerMetadataRequest())
            return live, ready, model_ready, absent, meta, server

    live, ready, model_ready, absent, meta, server = asyncio.run(go())
    assert live.live and ready.ready and model_ready.ready and not absent.ready
    assert meta.platform == "onnx_onnxv1" and meta.name == "clf" and list(meta.versions) == ["local"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("probs", "FP32", [-1, 3])]
    assert server.name == "tierdeck"


def _expect_error(address: str, request: pb.ModelInferRequest, code: grpc.StatusCode, *words: str) -> str:
    async def go() -> str:
        async with NodeClient(address) as client:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.inference.ModelInfer(request)
            assert info.value.code() == code, info.value.details()
            # The server is still up and answering after the bad request.
            ok = await client.infer("clf", {"x": np.zeros((1, 4), np.float32)})
            assert ok.outputs["probs"].shape == (1, 3)
            return info.value.details() or ""

    details = asyncio.run(go())
    for word in words:
        assert word in details, details
    return details


def test_wrong_shape_names_tensor_and_expected_shape(agent) -> None:  # type: ignore[no-untyped-def]
    request = infer_request("clf", {"x": np.zeros((2, 5), np.float32)})
    _expect_error(agent.address, request, grpc.StatusCode.INVALID_ARGUMENT, "'x'", "[-1,4]", "[2,5]")


def test_wrong_dtype_is_refused(agent) -> None:  # type: ignore[no-untyped-def]
    request = infer_request("clf", {"x": np.zeros((2, 4), np.float64)})
    _expect_error(agent.address, request, grpc.StatusCode.INVALID_ARGUMENT, "'x'", "FP32", "FP64")


def test_wrong_byte_count_is_refused(agent) -> None:  # type: ignore[no-untyped-def]
    request = infer_request("clf", {"x": np.zeros((2, 4), np.float32)})
    request.raw_input_contents[0] = request.raw_input_contents[0][:-3]
    _expect_error(agent.address, request, grpc.StatusCode.INVALID_ARGUMENT, "'x'", "32", "29")


def test_typed_and_raw_together_are_refused(agent) -> None:  # type: ignore[no-untyped-def]
    request = infer_request("clf", {"x": np.zeros((1, 4), np.float32)})
    request.inputs[0].contents.fp32_contents.extend([0.0] * 4)
    _expect_error(agent.address, request, grpc.StatusCode.INVALID_ARGUMENT, "'x'")


def test_unknown_datatype_is_refused(agent) -> None:  # type: ignore[no-untyped-def]
    request = infer_request("clf", {"x": np.zeros((1, 4), np.float32)})
    request.inputs[0].datatype = "FP8"
    _expect_error(agent.address, request, grpc.StatusCode.INVALID_ARGUMENT, "FP8")


def test_missing_input_and_unknown_output(agent) -> None:  # type: ignore[no-untyped-def]
    request = infer_request("clf", {"y": np.zeros((1, 4), np.float32)})
    _expect_error(agent.address, request, grpc.StatusCode.INVALID_ARGUMENT, "'y'")
    request = infer_request("clf", {"x": np.zeros((1, 4), np.float32)}, outputs=["logits"])
    _expect_error(agent.address, request, grpc.StatusCode.INVALID_ARGUMENT, "'logits'")


def test_unknown_model_is_not_found(agent) -> None:  # type: ignore[no-untyped-def]
    request = infer_request("ghost", {"x": np.zeros((1, 4), np.float32)})
    _expect_error(agent.address, request, grpc.StatusCode.NOT_FOUND, "ghost", "clf")
    request = infer_request("clf", {"x": np.zeros((1, 4), np.float32)})
    request.model_version = "9"
    _expect_error(agent.address, request, grpc.StatusCode.NOT_FOUND, "version '9'")


def test_oversized_message_gets_a_clear_status(agent) -> None:  # type: ignore[no-untyped-def]
    big = np.zeros((600_000, 4), np.float32)  # 9.6 MB > the agent's 8 MiB limit
    request = infer_request("clf", {"x": big})
    details = _expect_error(agent.address, request, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "larger than max" in details or "exceeds" in details or "size" in details.lower()


def test_bytes_that_are_no_request_are_refused_and_the_stream_goes_on(agent) -> None:  # type: ignore[no-untyped-def]
    """A message that does not parse as a ModelInferRequest (here a truncated one) is refused with INVALID_ARGUMENT
    and a reason, over ModelInfer and as one message of a StreamInfer stream, whose next message is answered."""
    from runners._stream import INFER_METHOD, STREAM_METHOD
    from runners._tensors import request_bytes

    x = np.ones((3, 4), np.float32)
    good = request_bytes(pb.ModelInferRequest(model_name="clf"), [("x", x)])

    async def go() -> tuple[grpc.aio.AioRpcError, pb.StreamInferResponse, pb.StreamInferResponse]:
        async with grpc.aio.insecure_channel(agent.address) as channel:
            unary = channel.unary_unary(INFER_METHOD, request_serializer=lambda b: b,
                                        response_deserializer=pb.ModelInferResponse.FromString)
            with pytest.raises(grpc.aio.AioRpcError) as unary_error:
                await unary(good[:-7], timeout=10)
            stream = channel.stream_stream(STREAM_METHOD, request_serializer=lambda b: b,
                                           response_deserializer=pb.StreamInferResponse.FromString)
            call = stream()
            await call.write(good[:-7])
            refused = await call.read()
            await call.write(good)
            answered = await call.read()
            await call.done_writing()
        return unary_error.value, refused, answered

    unary_error, refused, answered = asyncio.run(go())
    assert unary_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a ModelInferRequest" in (unary_error.details() or "")
    assert refused.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "not a ModelInferRequest" in refused.error_message
    probs = np.frombuffer(answered.infer_response.raw_output_contents[0], np.float32).reshape(3, 3)
    np.testing.assert_allclose(probs, softmax(x, W), rtol=1e-5)


def test_large_batch_over_4_mib_is_served(agent) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(2).normal(size=(300_000, 4)).astype(np.float32)  # 4.8 MB

    async def go() -> np.ndarray:
        async with NodeClient(agent.address) as client:
            return (await client.infer("clf", {"x": x})).outputs["probs"]

    np.testing.assert_allclose(asyncio.run(go()), softmax(x, W), rtol=1e-4, atol=1e-5)


def test_nonfinite_inputs_are_answered_and_flagged(agent) -> None:  # type: ignore[no-untyped-def]
    x = np.array([[np.nan, 0, 0, 0], [np.inf, 1, 1, 1], [0, 0, 0, 0]], np.float32)

    async def go():  # type: ignore[no-untyped-def]
        async with NodeClient(agent.address) as client:
            return await client.infer("clf", {"x": x})

    result = asyncio.run(go())
    assert result.parameters["tierdeck.nonfinite_inputs"] == 1
    assert result.outputs["probs"].shape == (3, 3)


def test_refuses_non_loopback_without_tls(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "runners.agent", "--listen", "0.0.0.0:0", "--data-dir",
                           str(tmp_path), "--insecure", "--no-mdns"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "--allow-insecure-network" in proc.stderr


def test_concurrent_requests_sharing_a_run_each_get_their_own_rows_and_errors(tmp_path: Path) -> None:
    """The stage's dynamic batcher merges requests that arrive while a run is busy: every caller must still get
    exactly its own rows back, and a request that breaks the shared run must fail alone."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(5)
    weights = rng.normal(size=(6, 3)).astype(np.float32)
    path = classifier(tmp_path / "m.onnx", weights)
    # A second stage whose declared input lets any width in, but whose weights take width 1 only.
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "strict",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "F"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [1, 2], [1.0, 2.0])])
    strict = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    strict.ir_version = 8
    (tmp_path / "strict.onnx").write_bytes(strict.SerializeToString())
    batches = [rng.normal(size=(int(n), 6)).astype(np.float32) for n in rng.integers(1, 40, size=60)]
    with running_agent(tmp_path / "node", "--stage", f"m={path}", "--stage", f"strict={tmp_path / 'strict.onnx'}") \
            as agent:
        async def go() -> tuple[list[object], list[object]]:
            async with NodeClient(agent.address) as client:
                answers = await asyncio.gather(*(client.infer("m", {"x": b}) for b in batches))
                mixed = await asyncio.gather(*(client.infer("strict", {"x": np.ones((3, 1 if i % 3 else 4),
                                                                                   np.float32)})
                                               for i in range(30)), return_exceptions=True)
                return list(answers), list(mixed)

        answers, mixed = asyncio.run(go())
    for rows, answer in zip(batches, answers, strict=True):
        np.testing.assert_allclose(answer.outputs["probs"], softmax(rows, weights), rtol=1e-5, atol=1e-6)  # type: ignore[attr-defined]
    for i, result in enumerate(mixed):
        if i % 3:
            np.testing.assert_allclose(result.outputs["y"], np.tile([[1.0, 2.0]], (3, 1)))  # type: ignore[union-attr]
        else:
            assert isinstance(result, grpc.aio.AioRpcError) and result.code() in (
                grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL)
