"""The cascade across real agent processes: routing by rule, store-and-forward, budgets."""

from __future__ import annotations

import asyncio
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from agents import AgentProcess, running_agent, start_agent
from hypothesis import given
from hypothesis import strategies as st
from models import classifier, softmax

from runners._proto import grpc_predict_v2_pb2 as pb
from runners._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from runners._proto import tierdeck_control_pb2 as ctl
from runners._tensors import decode_inputs, encode_outputs
from runners.client import NodeClient, infer_request, infer_result, manifest_for

rng = np.random.default_rng(11)
W_DEVICE = rng.normal(size=(4, 2)).astype(np.float32)
W_EDGE = rng.normal(size=(4, 3)).astype(np.float32)
W_CLOUD = rng.normal(size=(4, 3)).astype(np.float32)
X = rng.normal(size=(300, 4)).astype(np.float32)
EDGE_LABELS = ["cargo", "tanker", "fishing"]
EDGE_THRESHOLD = 0.6


async def _stage_totals(address: str, stage_id: str) -> ctl.StageTelemetry:
    async with NodeClient(address) as client:
        stream = client.telemetry(0.1)
        await anext(stream)
        sample = await anext(stream)
        await stream.aclose()
    return next(s for s in sample.stages if s.stage_id == stage_id)


async def _wait_totals(address: str, stage_id: str, done, timeout: float = 60.0) -> ctl.StageTelemetry:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        totals = await _stage_totals(address, stage_id)
        if done(totals) or time.monotonic() > deadline:
            return totals


def _deploy_chain(tmp: Path, device: AgentProcess, edge: AgentProcess, cloud: AgentProcess,
                  device_budget: float = 0.0, shadow_rate: float | None = None) -> None:
    """The three-tier chain; `shadow_rate` None leaves the nodes' default shadow sampling (1 %) on."""
    shadow = ctl.Budget() if shadow_rate is None else ctl.Budget(shadow_rate=shadow_rate)
    files = {name: classifier(tmp / f"{name}.onnx", w).read_bytes()
             for name, w in (("device", W_DEVICE), ("edge", W_EDGE), ("cloud", W_CLOUD))}

    async def go() -> None:
        async with NodeClient(cloud.address) as client:
            await client.deploy(manifest_for("heavy", files["cloud"], "1"), files["cloud"])
        async with NodeClient(edge.address) as client:
            rule = ctl.EscalationRule(output="probs", labels=EDGE_LABELS, confidence_below=EDGE_THRESHOLD)
            hop = ctl.NextHop(address=cloud.address, model="heavy", labels=EDGE_LABELS)
            await client.deploy(manifest_for("classifier", files["edge"], "1", rule=rule, next_hop=hop,
                                             budget=shadow), files["edge"])
        async with NodeClient(device.address) as client:
            rule = ctl.EscalationRule(output="probs", labels=["water", "vessel"], drop_class=["water"],
                                      class_in=["vessel"])
            hop = ctl.NextHop(address=edge.address, model="classifier")
            budget = ctl.Budget(max_escalations_per_s=device_budget, priority="high")
            budget.MergeFrom(shadow)
            await client.deploy(manifest_for("detector", files["device"], "1", rule=rule, next_hop=hop,
                                             budget=budget), files["device"])

    asyncio.run(go())


def _expected() -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """In-process computation of the same rules: which rows reach edge / cloud, final labels and deciders."""
    device = softmax(X, W_DEVICE)
    to_edge = device.argmax(axis=1) == 1
    edge = softmax(X, W_EDGE)
    to_cloud = to_edge & (edge.max(axis=1) < EDGE_THRESHOLD)
    cloud = softmax(X, W_CLOUD)
    labels, stages = [], []
    for row in range(len(X)):
        if not to_edge[row]:
            labels.append("water"), stages.append("detector")
        elif not to_cloud[row]:
            labels.append(EDGE_LABELS[edge[row].argmax()]), stages.append("classifier")
        else:
            labels.append(EDGE_LABELS[cloud[row].argmax()]), stages.append("heavy")
    return to_edge, to_cloud, labels, stages


def test_three_tier_chain_routes_exactly_by_rule(tmp_path: Path) -> None:
    with running_agent(tmp_path / "cloud", tier="cloud", name="cloud") as cloud, \
            running_agent(tmp_path / "edge", tier="edge", name="edge") as edge, \
            running_agent(tmp_path / "device", tier="device", name="device") as device:
        _deploy_chain(tmp_path, device, edge, cloud)
        to_edge, to_cloud, labels, stages = _expected()
        assert 0 < to_cloud.sum() < to_edge.sum() < len(X), "test data must exercise every route"

        async def go() -> tuple[list[str], list[str], list[bool]]:
            got_labels, got_stages, finals = [], [], []
            async with NodeClient(device.address) as client:
                for start in range(0, len(X), 25):
                    result = await client.infer("detector", {"x": X[start:start + 25]})
                    got_labels += [v.decode() for v in result.outputs["decision_label"]]
                    got_stages += [v.decode() for v in result.outputs["decision_stage"]]
                    finals += list(result.outputs["decision_final"])
            return got_labels, got_stages, finals

        got_labels, got_stages, finals = asyncio.run(go())
        assert got_labels == labels
        assert got_stages == stages
        assert all(finals)
        dev = asyncio.run(_stage_totals(device.address, "detector"))
        edg = asyncio.run(_stage_totals(edge.address, "classifier"))
        cld = asyncio.run(_stage_totals(cloud.address, "heavy"))
        assert (dev.inferences_total, dev.escalated_total, dev.dropped_total) == (
            len(X), to_edge.sum(), len(X) - to_edge.sum())
        assert dev.forwarded_total == to_edge.sum()
        assert (edg.inferences_total, edg.escalated_total) == (to_edge.sum(), to_cloud.sum())
        assert cld.inferences_total == to_cloud.sum()


def test_budget_sheds_excess_escalations_to_provisional(tmp_path: Path) -> None:
    with running_agent(tmp_path / "cloud", tier="cloud") as cloud, \
            running_agent(tmp_path / "edge") as edge, running_agent(tmp_path / "device", tier="device") as device:
        _deploy_chain(tmp_path, device, edge, cloud, device_budget=0.001)  # burst of 1, then nearly nothing
        to_edge, _, _, _ = _expected()

        async def go():  # type: ignore[no-untyped-def]
            async with NodeClient(device.address) as client:
                return await client.infer("detector", {"x": X})

        result = asyncio.run(go())
        provisional = int((~result.outputs["decision_final"]).sum())
        assert provisional == to_edge.sum() - 1
        dev = asyncio.run(_stage_totals(device.address, "detector"))
        assert dev.shed_total == to_edge.sum() - 1 and dev.forwarded_total == 1
        assert dev.provisional_total == provisional


class _Recorder(pb_grpc.GRPCInferenceServiceServicer):
    """A third-party OIP server at the top tier that records what reaches it, in order."""

    def __init__(self) -> None:
        self.rows: list[float] = []

    def ModelMetadata(self, request, context):  # type: ignore[no-untyped-def]
        meta = pb.ModelMetadataResponse(name=request.name, platform="onnx_onnxv1")
        meta.inputs.add(name="image", datatype="FP32", shape=[-1, 4])
        return meta

    def ModelReady(self, request, context):  # type: ignore[no-untyped-def]
        return pb.ModelReadyResponse(ready=True)

    def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]
        x = decode_inputs(request)["image"]
        self.rows += [float(v) for v in x[:, 0]]
        response = pb.ModelInferResponse(model_name=request.model_name)
        encode_outputs(response, [("scores", np.tile([[0.1, 0.9]], (len(x), 1)).astype(np.float32))])
        return response


def _serve_recorder(recorder: _Recorder, port: int = 0) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(recorder, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound


def test_store_and_forward_delivers_everything_once_in_order(tmp_path: Path) -> None:
    recorder = _Recorder()
    server, port = _serve_recorder(recorder)
    model = classifier(tmp_path / "edge.onnx", np.zeros((4, 2), np.float32)).read_bytes()  # always 0.5/0.5
    n = 120
    x = np.zeros((n, 4), np.float32)
    x[:, 0] = np.arange(n)  # row marker
    with running_agent(tmp_path / "edge") as edge:
        async def deploy() -> None:
            async with NodeClient(edge.address) as client:
                rule = ctl.EscalationRule(output="probs", labels=["a", "b"], confidence_below=0.9)
                hop = ctl.NextHop(address=f"127.0.0.1:{port}", model="top", labels=["no", "yes"], timeout_s=2)
                await client.deploy(manifest_for("edge", model, "1", rule=rule, next_hop=hop), model)
                first = await client.infer("edge", {"x": x[:10]})
                assert first.outputs["decision_final"].all()
                assert [v.decode() for v in first.outputs["decision_label"]] == ["yes"] * 10
        asyncio.run(deploy())
        server.stop(grace=None).wait()  # the top tier goes away

        async def while_down() -> None:
            async with NodeClient(edge.address) as client:
                for start in range(10, n, 10):
                    result = await client.infer("edge", {"x": x[start:start + 10]})
                    assert not result.outputs["decision_final"].any()
                    assert result.parameters["tierdeck.final"] is False
                    assert [v.decode() for v in result.outputs["decision_stage"]] == ["edge"] * 10
        asyncio.run(while_down())
        down = asyncio.run(_stage_totals(edge.address, "edge"))
        assert down.queued_total == n - 10 and down.queue_depth == n - 10 and down.link_state == "down"
        assert down.overflow_total == 0

        server, _ = _serve_recorder(recorder, port)  # it comes back on the same address
        try:
            done = asyncio.run(_wait_totals(edge.address, "edge", lambda t: t.delivered_total == n - 10))
        finally:
            server.stop(grace=None)
    assert done.delivered_total == n - 10 and done.queue_depth == 0 and done.link_state == "up"
    assert recorder.rows == [float(i) for i in range(n)], "each escalation once, in order"


def test_store_and_forward_survives_restart_and_counts_overflow(tmp_path: Path) -> None:
    with running_agent(tmp_path / "cloud", tier="cloud") as cloud:
        cloud_port = cloud.port
        model = classifier(tmp_path / "m.onnx", np.zeros((4, 2), np.float32)).read_bytes()

        async def deploy_cloud() -> None:
            async with NodeClient(cloud.address) as client:
                await client.deploy(manifest_for("heavy", model, "1"), model)
        asyncio.run(deploy_cloud())
    # The cloud node is down from here on; the edge queue is bounded at 50 rows.
    edge = start_agent(tmp_path / "edge", "--queue-limit", "50")
    try:
        async def fill() -> None:
            async with NodeClient(edge.address) as client:
                rule = ctl.EscalationRule(output="probs", labels=["a", "b"], confidence_below=0.9)
                hop = ctl.NextHop(address=f"127.0.0.1:{cloud_port}", model="heavy", timeout_s=1)
                await client.deploy(manifest_for("edge", model, "1", rule=rule, next_hop=hop), model)
                for _ in range(7):
                    await client.infer("edge", {"x": np.zeros((10, 4), np.float32)})
        asyncio.run(fill())
        totals = asyncio.run(_stage_totals(edge.address, "edge"))
        assert (totals.escalated_total, totals.queued_total, totals.overflow_total) == (70, 50, 20)
        assert totals.provisional_total == 70
    finally:
        assert edge.stop() == 0
    # Restart the edge (the queue is on disk) and bring the cloud back on its old port.
    with running_agent(tmp_path / "cloud", tier="cloud", listen=f"127.0.0.1:{cloud_port}") as cloud, \
            running_agent(tmp_path / "edge", "--queue-limit", "50") as edge:
        done = asyncio.run(_wait_totals(edge.address, "edge", lambda t: t.delivered_total == 50))
        assert done.delivered_total == 50 and done.queue_depth == 0
        heavy = asyncio.run(_stage_totals(cloud.address, "heavy"))
        assert heavy.inferences_total == 50


@pytest.mark.parametrize("batch", [1, 8])
def test_concurrent_escalations_are_batched_toward_next_hop(tmp_path: Path, batch: int) -> None:
    recorder = _Recorder()
    server, port = _serve_recorder(recorder)
    calls: list[int] = []
    original = recorder.ModelInfer

    def counting(request, context):  # type: ignore[no-untyped-def]
        calls.append(1)
        time.sleep(0.02)  # a slow top tier lets escalations pile up
        return original(request, context)

    recorder.ModelInfer = counting  # type: ignore[method-assign]
    model = classifier(tmp_path / "m.onnx", np.zeros((4, 2), np.float32)).read_bytes()
    try:
        with running_agent(tmp_path / "edge") as edge:
            async def go() -> None:
                async with NodeClient(edge.address) as client:
                    rule = ctl.EscalationRule(output="probs", labels=["a", "b"], confidence_below=0.9)
                    hop = ctl.NextHop(address=f"127.0.0.1:{port}", model="top")
                    await client.deploy(manifest_for("edge", model, "1", rule=rule, next_hop=hop), model)
                    results = await asyncio.gather(*(client.infer("edge", {"x": np.zeros((batch, 4), np.float32)})
                                                     for _ in range(40)))
                    assert all(r.outputs["decision_final"].all() for r in results)
            asyncio.run(go())
    finally:
        server.stop(grace=None)
    assert len(recorder.rows) == 40 * batch
    assert len(calls) < 40, "concurrent escalations should share forwarded calls"


def test_resent_escalated_rows_are_answered_once(tmp_path: Path) -> None:
    """A forwarded call can time out after the hop did the work; the re-sent rows must not count twice."""
    with running_agent(tmp_path / "cloud", tier="cloud") as cloud:
        model = classifier(tmp_path / "m.onnx", W_EDGE).read_bytes()
        rule = ctl.EscalationRule(output="probs", labels=EDGE_LABELS, confidence_below=0.0)

        async def go() -> tuple[dict, dict, ctl.StageTelemetry]:  # type: ignore[type-arg]
            async with NodeClient(cloud.address) as client:
                await client.deploy(manifest_for("heavy", model, rule=rule), model)
                first = infer_request("heavy", {"x": X[:6]})
                first.parameters["tierdeck.row_ids"].string_param = ",".join(f"r{i}" for i in range(6))
                a = infer_result(await client.inference.ModelInfer(first))
                # Re-sent: rows r3..r5 again plus two new ones, in another batch.
                again = infer_request("heavy", {"x": X[3:8]})
                again.parameters["tierdeck.row_ids"].string_param = "r3,r4,r5,r6,r7"
                b = infer_result(await client.inference.ModelInfer(again))
                return a.outputs, b.outputs, await _stage_totals(cloud.address, "heavy")

        a, b, totals = asyncio.run(go())
    np.testing.assert_array_equal(b["probs"][:3], a["probs"][3:6])
    np.testing.assert_allclose(b["probs"], softmax(X[3:8], W_EDGE), rtol=1e-5, atol=1e-6)
    assert list(b["decision_label"]) == [EDGE_LABELS[i].encode() for i in softmax(X[3:8], W_EDGE).argmax(axis=1)]
    assert totals.inferences_total == 8 and totals.duplicates_total == 3


def test_a_row_id_seen_before_is_never_answered_from_memory_for_other_inputs_or_another_version(
        tmp_path: Path) -> None:
    """Exactly-once must never cost correctness: the cache answers only the same inputs on the same version."""
    with running_agent(tmp_path / "cloud", tier="cloud") as cloud:
        model = classifier(tmp_path / "m.onnx", W_EDGE).read_bytes()
        other = classifier(tmp_path / "m2.onnx", W_EDGE[:, ::-1].copy()).read_bytes()
        rule = ctl.EscalationRule(output="probs", labels=EDGE_LABELS, confidence_below=0.0)
        renamed = ctl.EscalationRule(output="probs", labels=["x", "y", "z"], confidence_below=0.0)
        ids = ",".join(f"r{i}" for i in range(5))

        async def ask(client: NodeClient, rows: np.ndarray) -> dict:  # type: ignore[type-arg]
            request = infer_request("heavy", {"x": rows})
            request.parameters["tierdeck.row_ids"].string_param = ids
            return infer_result(await client.inference.ModelInfer(request)).outputs

        async def go() -> list[tuple[dict, ctl.StageTelemetry]]:  # type: ignore[type-arg]
            out = []
            async with NodeClient(cloud.address) as client:
                await client.deploy(manifest_for("heavy", model, "1", rule=rule), model)
                out.append((await ask(client, X[:5]), await _stage_totals(cloud.address, "heavy")))
                # The same ids with other rows (a sender whose counter started again): run, not recalled.
                out.append((await ask(client, X[10:15]), await _stage_totals(cloud.address, "heavy")))
                # Same ids, same rows, but the labels changed (a new version): run by the new version.
                await client.deploy(manifest_for("heavy", model, "2", rule=renamed), model)
                out.append((await ask(client, X[10:15]), await _stage_totals(cloud.address, "heavy")))
                # A new model under the same ids and rows: its own answers.
                await client.deploy(manifest_for("heavy", other, "3", rule=renamed), other)
                out.append((await ask(client, X[10:15]), await _stage_totals(cloud.address, "heavy")))
                # And a genuine re-send (same version, same rows, same ids) is still absorbed.
                out.append((await ask(client, X[10:15]), await _stage_totals(cloud.address, "heavy")))
            return out

        steps = asyncio.run(go())
    want = [(X[:5], W_EDGE, EDGE_LABELS), (X[10:15], W_EDGE, EDGE_LABELS), (X[10:15], W_EDGE, ["x", "y", "z"]),
            (X[10:15], W_EDGE[:, ::-1], ["x", "y", "z"]), (X[10:15], W_EDGE[:, ::-1], ["x", "y", "z"])]
    for (outputs, _), (rows, weights, labels) in zip(steps, want, strict=True):
        probs = softmax(rows, weights)
        np.testing.assert_allclose(outputs["probs"], probs, rtol=1e-5, atol=1e-6)
        assert list(outputs["decision_label"]) == [labels[i].encode() for i in probs.argmax(axis=1)]
    assert [t.duplicates_total for _, t in steps] == [0, 0, 0, 0, 5]


@given(prefix=st.text(alphabet="abc.-_0123456789", max_size=12), start=st.integers(0, 10**9),
       count=st.integers(1, 50), shuffle=st.booleans())
def test_row_ids_travel_compact_and_come_back_the_same(prefix: str, start: int, count: int, shuffle: bool) -> None:
    from runners._forward import pack_row_ids, unpack_row_ids

    ids = [f"{prefix}.{start + k}" for k in range(count)]
    if shuffle and count > 1:
        ids = ids[::-1]
    packed = pack_row_ids(ids)
    assert unpack_row_ids(packed) == ids
    if not shuffle or count == 1:
        assert "," not in packed and packed.endswith(f"+{count}")
