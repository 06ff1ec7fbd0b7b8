"""kill -9 of an agent in a cascade, restarted with the same data dir and port: nothing lost, nothing run twice."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
from agents import AgentProcess, running_agent, start_agent
from models import classifier, softmax

from runners._forward import ROW_IDS, unpack_row_ids
from runners._proto import grpc_predict_v2_pb2 as pb
from runners._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from runners._proto import tierdeck_control_pb2 as ctl
from runners._seen import SeenRows, row_digests
from runners._tensors import decode_inputs, encode_outputs
from runners.client import InferResult, NodeClient, infer_request, infer_result, manifest_for

ESCALATE_ALL = ctl.EscalationRule(output="probs", labels=["a", "b"], confidence_below=1.01)
X = np.arange(12, dtype=np.float32).reshape(3, 4) / 10


class _HeldTop(pb_grpc.GRPCInferenceServiceServicer):
    """A top tier that records the row ids (and rows) of each call and holds the first call until released."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], np.ndarray]] = []
        self.arrived = threading.Event()
        self.release = threading.Event()

    def ModelMetadata(self, request, context):  # type: ignore[no-untyped-def]
        meta = pb.ModelMetadataResponse(name=request.name)
        meta.inputs.add(name="x", datatype="FP32", shape=[-1, 4])
        return meta

    def ModelReady(self, request, context):  # type: ignore[no-untyped-def]
        return pb.ModelReadyResponse(ready=True)

    def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]
        x = decode_inputs(request)["x"]
        self.calls.append((unpack_row_ids(request.parameters[ROW_IDS].string_param), x))
        self.arrived.set()
        if len(self.calls) == 1:
            self.release.wait(60)
        response = pb.ModelInferResponse(model_name=request.model_name)
        encode_outputs(response, [("p", np.tile([[0.2, 0.8]], (len(x), 1)).astype(np.float32))])
        return response


async def _totals(address: str, stage_id: str) -> ctl.StageTelemetry:
    async with NodeClient(address) as client:
        stream = client.telemetry(0.1)
        await anext(stream)
        sample = await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]
    return next(s for s in sample.stages if s.stage_id == stage_id)


def _wait_totals(address: str, stage_id: str, done, timeout: float = 60.0) -> ctl.StageTelemetry:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        totals = asyncio.run(_totals(address, stage_id))
        if done(totals) or time.monotonic() > deadline:
            return totals
        time.sleep(0.1)


def _deploy(address: str, stage_id: str, model: bytes, hop: ctl.NextHop) -> None:
    async def go() -> None:
        async with NodeClient(address) as client:
            await client.deploy(manifest_for(stage_id, model, "1", rule=ESCALATE_ALL, next_hop=hop), model)
    asyncio.run(go())


def test_receiver_killed_between_run_and_reply_escalates_its_rerun_under_the_same_row_ids(tmp_path: Path) -> None:
    """The middle tier runs a row and escalates it, then dies (kill -9) before it answers. The sender queues
    the row and re-sends it to the restarted middle tier, which runs it again (its memory of answered rows
    died with it): its escalation of that row must carry the same row ids as before, so that the tier above,
    which has seen them, answers from memory instead of running and counting the row twice."""
    top = _HeldTop()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(top, server)
    top_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    model = classifier(tmp_path / "m.onnx", np.zeros((4, 2), np.float32)).read_bytes()
    mid = start_agent(tmp_path / "mid", name="mid")
    mid_port = mid.port
    try:
        _deploy(mid.address, "mid", model, ctl.NextHop(address=f"127.0.0.1:{top_port}", model="top", timeout_s=60))
        with running_agent(tmp_path / "dev", name="dev", tier="device") as dev:
            _deploy(dev.address, "dev", model, ctl.NextHop(address=mid.address, model="mid", timeout_s=60))
            answer: list[InferResult] = []

            def send() -> None:
                async def go() -> None:
                    async with NodeClient(dev.address) as client:
                        answer.append(await client.infer("dev", {"x": X}, timeout=60))
                asyncio.run(go())

            sender = threading.Thread(target=send)
            sender.start()
            assert top.arrived.wait(60), "the middle tier never escalated"
            # The middle tier has run the rows and waits on the top: kill it there.
            assert mid.stop(signal.SIGKILL) == -signal.SIGKILL
            sender.join(60)
            assert answer and not answer[0].outputs["decision_final"].any(), "queued: answered provisional"
            top.release.set()
            mid = start_agent(tmp_path / "mid", name="mid", listen=f"127.0.0.1:{mid_port}")
            done = _wait_totals(dev.address, "dev", lambda t: t.delivered_total == len(X))
            assert (done.delivered_total, done.queue_depth) == (len(X), 0)
        _wait_totals(mid.address, "mid", lambda t: t.forwarded_total == len(X))
    finally:
        top.release.set()
        mid.stop()
        server.stop(grace=None)
    assert len(top.calls) == 2, "the restarted middle tier escalates the re-sent rows once"
    (first_ids, first_rows), (again_ids, again_rows) = top.calls
    np.testing.assert_array_equal(again_rows, first_rows)
    assert again_ids == first_ids, "a re-run of the same rows must escalate them under the same row ids"


def test_sender_killed_with_queued_escalations_delivers_them_after_restart(tmp_path: Path) -> None:
    """Escalations queued while the next hop is away are on disk: kill -9 of the sender loses none of them."""
    model = classifier(tmp_path / "m.onnx", np.zeros((4, 2), np.float32)).read_bytes()
    with running_agent(tmp_path / "top", name="top", tier="cloud") as top:
        top_port = top.port

        async def deploy_top() -> None:
            async with NodeClient(top.address) as client:
                await client.deploy(manifest_for("top", model, "1"), model)
        asyncio.run(deploy_top())
    dev: AgentProcess = start_agent(tmp_path / "dev", name="dev", tier="device")
    try:
        _deploy(dev.address, "dev", model, ctl.NextHop(address=f"127.0.0.1:{top_port}", model="top", timeout_s=1))

        async def fill() -> None:
            async with NodeClient(dev.address) as client:
                for _ in range(5):
                    result = await client.infer("dev", {"x": X})
                    assert not result.outputs["decision_final"].any()
        asyncio.run(fill())
        queued = asyncio.run(_totals(dev.address, "dev"))
        assert (queued.queued_total, queued.queue_depth) == (15, 15)
        assert dev.stop(signal.SIGKILL) == -signal.SIGKILL
        with running_agent(tmp_path / "top", name="top", tier="cloud", listen=f"127.0.0.1:{top_port}") as top:
            dev = start_agent(tmp_path / "dev", name="dev", tier="device")
            done = _wait_totals(dev.address, "dev", lambda t: t.delivered_total == 15)
            assert (done.delivered_total, done.queue_depth) == (15, 0)
            ran = _wait_totals(top.address, "top", lambda t: t.inferences_total >= 15)
            assert ran.inferences_total == 15
    finally:
        dev.stop()


def test_rows_resent_while_their_first_run_waits_on_the_next_hop_run_once_at_the_top(tmp_path: Path) -> None:
    """The sender gives up on the middle tier (its deadline passes while the middle waits on a top that does
    not answer) and re-sends the rows; the middle runs them again and queues both escalations of each row.
    When the top comes, it gets each row twice in one batch under one id: it must run it once."""
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(64)  # connections complete, nothing ever answers: calls hang until their deadline
    top_port = blackhole.getsockname()[1]
    model = classifier(tmp_path / "m.onnx", np.zeros((4, 2), np.float32)).read_bytes()
    try:
        with running_agent(tmp_path / "mid", name="mid") as mid, \
                running_agent(tmp_path / "dev", name="dev", tier="device") as dev:
            _deploy(mid.address, "mid", model, ctl.NextHop(address=f"127.0.0.1:{top_port}", model="top",
                                                           timeout_s=2))
            _deploy(dev.address, "dev", model, ctl.NextHop(address=mid.address, model="mid", timeout_s=1))

            async def send() -> InferResult:
                async with NodeClient(dev.address) as client:
                    return await client.infer("dev", {"x": X}, timeout=30)
            assert not asyncio.run(send()).outputs["decision_final"].any()
            queued = _wait_totals(mid.address, "mid", lambda t: t.queued_total >= 2 * len(X))
            assert queued.queued_total >= 2 * len(X), "the middle tier should have queued each row twice"
            blackhole.close()
            with running_agent(tmp_path / "top", name="top", tier="cloud", listen=f"127.0.0.1:{top_port}") as top:
                async def deploy_top() -> None:
                    async with NodeClient(top.address) as client:
                        await client.deploy(manifest_for("top", model, "1"), model)
                asyncio.run(deploy_top())
                _wait_totals(dev.address, "dev", lambda t: t.queue_depth == 0 and t.delivered_total >= len(X))
                drained = _wait_totals(mid.address, "mid", lambda t: t.queue_depth == 0)
                assert drained.queue_depth == 0
                ran = asyncio.run(_totals(top.address, "top"))
    finally:
        blackhole.close()
    assert ran.inferences_total == len(X), "each row once at the top, however often the middle escalated it"
    assert ran.duplicates_total >= len(X)


def test_an_id_repeated_in_one_batch_runs_once_and_each_row_gets_its_answer(tmp_path: Path) -> None:
    """Same id, same inputs: run once, both rows answered alike; same id, other inputs: each row runs."""
    x = np.stack([X[0], X[1], X[0], X[2]])
    digests = row_digests({"x": x})
    seen = SeenRows()
    assert seen.fresh(["a", "b", "a", "c"], digests) == [0, 1, 3]
    assert seen.fresh(["a", "b", "a", "a"], digests) == [0, 1, 2, 3], "a conflicting repeat runs every row"
    weights = np.arange(8, dtype=np.float32).reshape(4, 2) / 7
    model = classifier(tmp_path / "m.onnx", weights).read_bytes()
    with running_agent(tmp_path / "top", name="top", tier="cloud") as top:
        async def go() -> tuple[InferResult, ctl.StageTelemetry]:
            async with NodeClient(top.address) as client:
                await client.deploy(manifest_for("top", model, "1", rule=ESCALATE_ALL), model)
                request = infer_request("top", {"x": x})
                request.parameters[ROW_IDS].string_param = "a,b,a,c"
                result = infer_result(await client.inference.ModelInfer(request))
            return result, await _totals(top.address, "top")
        result, totals = asyncio.run(go())
    np.testing.assert_allclose(result.outputs["probs"], softmax(x, weights), rtol=1e-5, atol=1e-6)
    assert (totals.inferences_total, totals.duplicates_total) == (3, 1)
