"""StreamInfer (runners/_stream.py): ModelInfer exchanges on one stream, answered one for one in order.

Against a real agent: every answer equals ModelInfer's, a refused request is answered with its status and the
stream goes on. The client end (StreamLink) against servers that have no StreamInfer (a bare OIP server, one
that does not list the extension) uses ModelInfer; a timeout ends the stream so that no answer can ever be
matched to the wrong request. Between tiers the forwarder sends escalations as messages of one stream.
"""

from __future__ import annotations

import asyncio
import itertools
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
from agents import running_agent
from models import classifier, softmax

from runners._proto import grpc_predict_v2_pb2 as pb
from runners._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from runners._proto import tierdeck_control_pb2 as ctl
from runners._stream import STREAM_EXTENSION, StreamServer
from runners._tensors import decode_inputs, encode_outputs
from runners.client import NodeClient, infer_request, infer_result, manifest_for

rng = np.random.default_rng(5)
W = rng.normal(size=(4, 3)).astype(np.float32)
X = rng.normal(size=(64, 4)).astype(np.float32)


def test_stream_answers_equal_model_infer_in_order_and_a_refusal_does_not_end_the_stream(tmp_path: Path) -> None:
    model = classifier(tmp_path / "m.onnx", W).read_bytes()
    with running_agent(tmp_path / "node") as node:
        async def go() -> None:
            async with NodeClient(node.address) as client:
                rule = ctl.EscalationRule(output="probs", labels=["a", "b", "c"])
                await client.deploy(manifest_for("m", model, "1", rule=rule), model)
                meta = await client.inference.ServerMetadata(pb.ServerMetadataRequest())
                assert STREAM_EXTENSION in meta.extensions
                sizes = [1, 5, 32, 3, 7, 16]
                starts = np.cumsum([0, *sizes])
                requests = [infer_request("m", {"x": X[a:b]}, request_id=f"r{k}")
                            for k, (a, b) in enumerate(itertools.pairwise(starts))]
                requests.insert(3, infer_request("m", {"wrong": X[:2]}, request_id="bad"))
                call = client.inference.StreamInfer()
                for request in requests:  # all written before any is read: answered concurrently, in order
                    await call.write(request)
                replies = [await call.read() for _ in requests]
                await call.done_writing()
                assert await call.read() is grpc.aio.EOF
                for request, reply in zip(requests, replies, strict=True):
                    if request.id == "bad":
                        assert reply.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
                        assert "wrong" in reply.error_message
                        continue
                    assert reply.error_code == 0 and reply.infer_response.id == request.id
                    unary = await client.inference.ModelInfer(request)
                    got, want = infer_result(reply.infer_response), infer_result(unary)
                    assert got.parameters == want.parameters
                    for name in want.outputs:
                        np.testing.assert_array_equal(got.outputs[name], want.outputs[name])
                    x = decode_inputs(request)["x"]
                    labels = np.array(["a", "b", "c"])[softmax(x, W).argmax(axis=1)]
                    assert [v.decode() for v in got.outputs["decision_label"]] == list(labels)
        asyncio.run(go())


class _Plain(pb_grpc.GRPCInferenceServiceServicer):
    """An OIP server that only does ModelInfer (and, optionally, ServerMetadata without the extension)."""

    def __init__(self, metadata: bool) -> None:
        self.metadata = metadata
        self.calls = 0

    def ServerMetadata(self, request, context):  # type: ignore[no-untyped-def]
        if not self.metadata:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "no")
        return pb.ServerMetadataResponse(name="plain", extensions=["something_else"])

    def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]
        self.calls += 1
        response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        encode_outputs(response, [("y", decode_inputs(request)["x"] * 2)])
        return response


def test_link_uses_model_infer_on_servers_without_stream_infer() -> None:
    for metadata in (False, True):
        servicer = _Plain(metadata)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            async def go(port: int) -> None:
                async with NodeClient(f"127.0.0.1:{port}") as client:
                    link = client.stream_link()
                    for k in range(3):
                        result = await client.infer("m", {"x": X[k:k + 2]}, link=link)
                        np.testing.assert_array_equal(result.outputs["y"], X[k:k + 2] * 2)
                    assert link.streaming is False
                    await link.close()
            asyncio.run(go(port))
            assert servicer.calls == 3
        finally:
            server.stop(None)


def test_a_timeout_ends_the_stream_so_no_answer_goes_to_another_request() -> None:
    async def go() -> None:
        release = asyncio.Event()

        async def infer(request: pb.ModelInferRequest, context: object) -> pb.ModelInferResponse:
            if request.id == "slow":
                await release.wait()  # answered only after the caller gave up
            return pb.ModelInferResponse(model_name="m", id=request.id)

        streams = StreamServer(infer)

        class Servicer(pb_grpc.GRPCInferenceServiceServicer):
            async def ServerMetadata(self, request, context):  # type: ignore[no-untyped-def]
                return pb.ServerMetadataResponse(name="t", extensions=[STREAM_EXTENSION])

            async def StreamInfer(self, request_iterator, context):  # type: ignore[no-untyped-def]
                async for reply in streams.serve(request_iterator, context):
                    yield reply

        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with NodeClient(f"127.0.0.1:{port}") as client:
                link = client.stream_link()
                first = await link.infer(pb.ModelInferRequest(model_name="m", id="first"), 5.0)
                assert first.id == "first" and link.streaming is True
                try:
                    await link.infer(pb.ModelInferRequest(model_name="m", id="slow"), 0.3)
                    raise AssertionError("the slow request must time out")
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                release.set()  # the slow answer now arrives on the old stream, which nobody reads any more
                for k in range(5):
                    reply = await link.infer(pb.ModelInferRequest(model_name="m", id=f"after{k}"), 5.0)
                    assert reply.id == f"after{k}"
                await link.close()
                await link.close()  # closing twice is harmless
        finally:
            streams.close()
            await server.stop(None)
    asyncio.run(go())


def test_escalations_travel_as_stream_messages_between_tiers(tmp_path: Path) -> None:
    """The next hop serves StreamInfer and refuses ModelInfer: every escalation must come as a stream message."""
    seen: list[int] = []

    async def go() -> None:
        async def infer(request: pb.ModelInferRequest, context: object) -> pb.ModelInferResponse:
            x = decode_inputs(request)["x"]
            seen.append(len(x))
            response = pb.ModelInferResponse(model_name="top", id=request.id)
            encode_outputs(response, [("scores", np.tile([[0.2, 0.8]], (len(x), 1)).astype(np.float32))])
            return response

        streams = StreamServer(infer)

        class Top(pb_grpc.GRPCInferenceServiceServicer):
            async def ServerMetadata(self, request, context):  # type: ignore[no-untyped-def]
                return pb.ServerMetadataResponse(name="top", extensions=[STREAM_EXTENSION])

            async def ModelMetadata(self, request, context):  # type: ignore[no-untyped-def]
                meta = pb.ModelMetadataResponse(name=request.name, platform="onnx_onnxv1")
                meta.inputs.add(name="x", datatype="FP32", shape=[-1, 4])
                return meta

            async def ModelReady(self, request, context):  # type: ignore[no-untyped-def]
                return pb.ModelReadyResponse(ready=True)

            async def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "use the stream")

            async def StreamInfer(self, request_iterator, context):  # type: ignore[no-untyped-def]
                async for reply in streams.serve(request_iterator, context):
                    yield reply

        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Top(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        model = classifier(tmp_path / "edge.onnx", np.zeros((4, 2), np.float32)).read_bytes()  # 0.5/0.5
        try:
            with running_agent(tmp_path / "edge") as edge:
                async with NodeClient(edge.address) as client:
                    rule = ctl.EscalationRule(output="probs", labels=["a", "b"], confidence_below=0.9)
                    hop = ctl.NextHop(address=f"127.0.0.1:{port}", model="top", labels=["no", "yes"])
                    await client.deploy(manifest_for("edge", model, "1", rule=rule, next_hop=hop), model)
                    results = await asyncio.gather(*(client.infer("edge", {"x": X[k:k + 4]})
                                                     for k in range(0, 40, 4)))
                    for result in results:
                        assert result.outputs["decision_final"].all()
                        assert [v.decode() for v in result.outputs["decision_label"]] == ["yes"] * 4
                        assert [v.decode() for v in result.outputs["decision_stage"]] == ["top"] * 4
        finally:
            streams.close()
            await server.stop(None)
    asyncio.run(go())
    assert sum(seen) == 40

