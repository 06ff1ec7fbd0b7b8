"""Shadow sampling on real agents: the miss estimate against true labels, kept out of counts and answers, shed first."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from agents import running_agent

from app._miss import ShadowCounts, miss_estimate, wilson_interval
from resources import scenes
from runners._proto import grpc_predict_v2_pb2 as pb
from runners._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from runners._proto import tierdeck_control_pb2 as ctl
from runners._rules import Decisions, RuleOutcome
from runners._shadow import BINS, LINGER_S, SHADOW, ShadowSampler
from runners._telemetry import StageStats
from runners._tensors import decode_inputs, encode_outputs
from runners.client import NodeClient, manifest_for

MODELS = Path(__file__).resolve().parent.parent / "resources" / "models"
CLASSES = ["water", "cargo", "tanker", "fishing", "patrol"]
DETECTOR_RULE = ctl.EscalationRule(output="probs", labels=["water", "vessel"], class_in=["vessel"],
                                   confidence_below=0.95)
CLASSIFIER_RULE = ctl.EscalationRule(output="probs", labels=CLASSES, confidence_below=0.8)


async def _stage(client: NodeClient, stage_id: str) -> ctl.StageTelemetry:
    stream = client.telemetry(0.1)
    await anext(stream)
    sample = await anext(stream)
    await stream.aclose()
    return next(s for s in sample.stages if s.stage_id == stage_id)


async def _settle(client: NodeClient, stage_id: str, done, timeout: float = 60.0) -> ctl.StageTelemetry:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not done(t := await _stage(client, stage_id)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return t


async def _quiet(client: NodeClient, stage_id: str, timeout: float = 60.0) -> ctl.StageTelemetry:
    """The stage's telemetry once its shadow sender is done: nothing sent for longer than it lingers, all answered
    or shed."""
    deadline = time.monotonic() + timeout
    before = await _stage(client, stage_id)
    while time.monotonic() < deadline:
        await asyncio.sleep(LINGER_S + 0.3)
        now = await _stage(client, stage_id)
        if now.shadow_sent_total == before.shadow_sent_total and \
                now.shadow_answered_total + now.shadow_shed_total >= now.shadow_sent_total:
            return now
        before = now
    return before


def _run(name: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(MODELS / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"image": x[i:i + 512]})[0] for i in range(0, len(x), 512)])


def _counts(t: ctl.StageTelemetry) -> ShadowCounts:
    return ShadowCounts(t.shadow_sent_total, t.shadow_answered_total, t.shadow_agreed_total, t.shadow_shed_total,
                        t.shadow.rate, {(p.settled, p.answered): p.count for p in t.shadow.disagreements},
                        tuple(t.shadow.answered), tuple(t.shadow.disagreed))


def test_wilson_interval_matches_known_values() -> None:
    # Reference values: Wilson score interval, z = 1.96 (e.g. Newcombe 1998, table I; statsmodels' proportion_confint).
    lo, hi = wilson_interval(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    lo, hi = wilson_interval(10, 10)
    assert round(lo, 4) == 0.7225 and hi == 1.0
    lo, hi = wilson_interval(1, 29)
    assert (round(lo, 4), round(hi, 4)) == (0.0061, 0.1718)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_shadow_estimate_of_detector_misses_contains_the_true_rate(tmp_path: Path) -> None:
    """The demo cascade on a labelled stream: the shadow estimate's interval holds the true vessel miss rate, and
    shadow rows never reach an escalation count or a caller's answer."""
    images, labels = scenes.split("test", 3000)
    x = scenes.to_model_input(images)
    d, c, h = _run("detector", x), _run("classifier", x), _run("heavy", x)
    settled = (d.argmax(1) == 0) & (d.max(1) >= 0.95)
    to_heavy = ~settled & (c.max(1) < 0.8)
    expected = np.where(settled, "water", np.where(to_heavy, np.array(CLASSES)[h.argmax(1)],
                                                   np.array(CLASSES)[c.argmax(1)]))
    true_miss = float((labels[settled] > 0).mean())
    files = {n: (MODELS / f"{n}.onnx").read_bytes() for n in ("detector", "classifier", "heavy")}
    with running_agent(tmp_path / "cloud", tier="cloud", name="cloud") as cloud, \
            running_agent(tmp_path / "edge", tier="edge", name="edge") as edge, \
            running_agent(tmp_path / "device", tier="device", name="device") as device:
        async def go() -> tuple[list[str], ctl.StageTelemetry, ctl.StageTelemetry, ctl.StageTelemetry]:
            async with NodeClient(cloud.address) as cc, NodeClient(edge.address) as ec, \
                    NodeClient(device.address) as dc:
                await cc.deploy(manifest_for("heavy", files["heavy"], rule=ctl.EscalationRule(
                    output="probs", labels=CLASSES)), files["heavy"])
                await ec.deploy(manifest_for("classifier", files["classifier"], rule=CLASSIFIER_RULE,
                                             next_hop=ctl.NextHop(address=cloud.address, model="heavy"),
                                             budget=ctl.Budget(shadow_rate=0.0)), files["classifier"])
                # Every other settled row in shadow: a higher rate than the default keeps the run short.
                await dc.deploy(manifest_for("detector", files["detector"], rule=DETECTOR_RULE,
                                             next_hop=ctl.NextHop(address=edge.address, model="classifier"),
                                             budget=ctl.Budget(shadow_rate=0.5, priority="high")), files["detector"])
                answers: list[str] = []
                for start in range(0, len(x), 50):
                    result = await dc.infer("detector", {"image": x[start:start + 50]})
                    answers += [v.decode() for v in result.outputs["decision_label"]]
                    assert result.outputs["decision_final"].all()
                det = await _quiet(dc, "detector")
                return answers, det, await _stage(ec, "classifier"), await _stage(cc, "heavy")

        answers, det, cls, heavy = asyncio.run(go())
    assert answers == expected.tolist()  # callers get the cascade's answers, never a shadow row's
    assert det.inferences_total == len(x) and det.escalated_total == int((~settled).sum())
    # Shadow rows ran on the classifier and the heavy stage but are in none of their counts.
    assert cls.inferences_total == det.forwarded_total == det.escalated_total
    assert cls.escalated_total == int(to_heavy.sum()) == heavy.inferences_total
    assert det.queued_total == 0 and det.shed_total == 0
    assert det.shadow_sent_total > 0.4 * settled.sum() and det.shadow_answered_total == det.shadow_sent_total
    assert det.shadow.rate == 0.5 and len(det.shadow.answered) == 100
    assert sum(det.shadow.answered) == det.shadow_answered_total
    assert sum(p.count for p in det.shadow.disagreements) == det.shadow_answered_total - det.shadow_agreed_total
    assert all(p.settled == "water" and p.answered in CLASSES[1:] for p in det.shadow.disagreements)
    estimate = miss_estimate(_counts(det))
    assert estimate.low <= true_miss <= estimate.high, (estimate, true_miss)
    assert cls.shadow.rate == 0.0 and cls.shadow_sent_total == 0  # 0 turns it off


def test_shadow_rate_changes_live_and_works_with_a_model_the_operator_brings(tmp_path: Path) -> None:
    """A non-bundled model (scikit-learn digits via skl2onnx): shadow rows go up once UpdatePolicy turns them on."""
    from byo_models import big_classifier, digits, small_classifier

    small = small_classifier(tmp_path / "small.onnx").read_bytes()
    big = big_classifier(tmp_path / "big.onnx").read_bytes()
    _, _, x_test, y_test = digits()
    labels = [str(i) for i in range(10)]
    with running_agent(tmp_path / "top", name="top", tier="cloud") as top, \
            running_agent(tmp_path / "low", name="low", tier="device") as low:
        async def go() -> tuple[ctl.StageTelemetry, ctl.StageTelemetry, ctl.StageTelemetry]:
            async with NodeClient(top.address) as tc, NodeClient(low.address) as lc:
                await tc.deploy(manifest_for("big", big, rule=ctl.EscalationRule(output="probabilities",
                                                                                   labels=labels)), big)
                rule = ctl.EscalationRule(output="probabilities", labels=labels, confidence_below=0.6)
                await lc.deploy(manifest_for("small", small, rule=rule, output_names=["probabilities"],
                                             next_hop=ctl.NextHop(address=top.address, model="big"),
                                             budget=ctl.Budget(shadow_rate=0.0)), small)
                await lc.infer("small", {"X": x_test})
                off = await _stage(lc, "small")
                await lc.update_policy(ctl.UpdatePolicyRequest(stage_id="small", budget=ctl.Budget(shadow_rate=1.0)))
                await lc.infer("small", {"X": x_test})
                on = await _quiet(lc, "small")
                return off, on, await _stage(tc, "big")

        off, on, big_totals = asyncio.run(go())
    settled_per_pass = off.inferences_total - off.escalated_total
    assert off.shadow_sent_total == 0 and off.shadow.rate == 0.0
    # Every settled row was picked once: what one 597-row request picks beyond the buffer is shed, not queued.
    assert on.shadow.rate == 1.0 and on.shadow_sent_total + on.shadow_shed_total == settled_per_pass
    assert on.shadow_sent_total >= 256 and on.shadow_answered_total == on.shadow_sent_total
    assert big_totals.inferences_total == 2 * off.escalated_total  # the shadow rows are not in its counts
    # The big model disagrees with some of what the small one settled: the estimate says so.
    estimate = miss_estimate(_counts(on))
    assert 0 < estimate.rate < 0.5 and estimate.low < estimate.rate < estimate.high
    assert y_test.size == len(x_test)


class _Hop(pb_grpc.GRPCInferenceServiceServicer):
    """A next hop that records every call (real escalation or shadow) and can be taken down."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.lock = threading.Lock()
        self.calls: list[tuple[bool, int, str]] = []   # (shadow, rows, row ids)

    def ModelReady(self, request, context):  # type: ignore[no-untyped-def]
        if self.down.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        return pb.ModelReadyResponse(ready=True)

    def ModelMetadata(self, request, context):  # type: ignore[no-untyped-def]
        if self.down.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        return pb.ModelMetadataResponse(name=request.name, inputs=[pb.ModelMetadataResponse.TensorMetadata(
            name="x", datatype="FP32", shape=[-1, 4])])

    def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]
        if self.down.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "link down")
        rows = decode_inputs(request)["x"].shape[0]
        shadow = SHADOW in request.parameters and request.parameters[SHADOW].bool_param
        with self.lock:
            self.calls.append((shadow, rows, request.parameters["tierdeck.row_ids"].string_param))
        response = pb.ModelInferResponse(model_name=request.model_name)
        encode_outputs(response, [("p", np.tile([[0.1, 0.9]], (rows, 1)).astype(np.float32))])
        return response


def test_a_link_flap_sheds_shadow_rows_first_and_loses_no_escalation(tmp_path: Path) -> None:
    from models import classifier

    hop = _Hop()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(hop, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    weights = np.array([[2.0, -2.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], np.float32)
    model = classifier(tmp_path / "m.onnx", weights).read_bytes()
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    try:
        # every row recorded (no recording rate): the ledger is counted against the shadow counters below
        with running_agent(tmp_path / "device", "--ledger-max-rows-per-s", "0", tier="device") as device:
            async def go() -> tuple[ctl.StageTelemetry, ctl.StageTelemetry, ctl.StageTelemetry, int,
                                    ctl.ListHardExamplesResponse]:
                async with NodeClient(device.address) as client:
                    rule = ctl.EscalationRule(output="probs", labels=["water", "vessel"], class_in=["vessel"])
                    await client.deploy(manifest_for(
                        "detector", model, rule=rule, budget=ctl.Budget(shadow_rate=1.0),
                        next_hop=ctl.NextHop(address=f"127.0.0.1:{port}", model="top", labels=["water", "vessel"],
                                             timeout_s=0.5)), model)
                    escalating = 0
                    for _ in range(3):  # link up: escalations answered, shadow rows too
                        result = await client.infer("detector", {"x": x})
                        assert result.outputs["decision_final"].all()
                    # Every settled row is in shadow (rate 1): wait until all of them are answered.
                    up = await _settle(client, "detector", lambda t: t.shadow_answered_total
                                       >= t.inferences_total - t.escalated_total)
                    hop.down.set()
                    for _ in range(5):  # link down: escalations queue, shadow rows are shed
                        result = await client.infer("detector", {"x": x})
                        escalating += int((~result.outputs["decision_final"]).sum())
                    down = await _stage(client, "detector")
                    hop.down.clear()
                    back = await _settle(client, "detector", lambda t: t.delivered_total >= t.queued_total
                                         and t.link_state == "up")
                    deadline = time.monotonic() + 30
                    while (ledger := await client.hard_examples(ctl.ListHardExamplesRequest(
                            kind="shadow_disagreed", limit=1000))).total < back.shadow_answered_total \
                            and time.monotonic() < deadline:
                        await asyncio.sleep(0.1)
                    return up, down, back, escalating, ledger

            up, down, back, provisional, ledger = asyncio.run(go())
    finally:
        server.stop(grace=None)
    escalated_per_pass = up.escalated_total // 3
    settled_per_pass = up.inferences_total // 3 - escalated_per_pass
    assert 0 < escalated_per_pass < len(x) and settled_per_pass > 0
    assert up.shadow_sent_total == up.shadow_answered_total == 3 * settled_per_pass and up.shadow_shed_total == 0
    assert up.shadow_agreed_total == 0  # the hop says "vessel" to everything: every settled "water" disagrees
    # Down: not one shadow row went out or was queued; every real escalation was queued and then delivered.
    assert down.shadow_sent_total == up.shadow_sent_total
    assert down.shadow_shed_total >= 4 * settled_per_pass  # the first call may trip the breaker before shedding
    assert down.queued_total == 5 * escalated_per_pass == provisional and down.overflow_total == 0
    assert back.delivered_total == back.queued_total and back.queue_depth == 0
    assert back.forwarded_total + back.delivered_total == back.escalated_total  # none lost
    real = [c for c in hop.calls if not c[0]]
    shadow = [c for c in hop.calls if c[0]]
    assert sum(rows for _, rows, _ in real) >= back.escalated_total  # (a timed-out call may be re-sent)
    assert all(ids for _, _, ids in real) and not any(ids for _, _, ids in shadow)  # shadow rows never queued
    assert sum(rows for _, rows, _ in shadow) == back.shadow_sent_total
    # Every disagreeing shadow row is in the node's hard-example ledger, with its inputs and both answers.
    assert ledger.total == back.shadow_answered_total - back.shadow_agreed_total > 0
    assert all(e.stage_label == "water" and e.hop_label == "vessel" and e.final_label == "water"
               and e.stage_id == "detector" and e.stage_version == "1" and len(e.scores) == 2
               and e.input_bytes == 16 for e in ledger.examples)


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.3, 1.0])
def test_the_sampler_picks_the_configured_share_of_settled_rows(rate: float) -> None:
    """Geometric skips: the share of settled rows picked matches the rate (within a binomial tolerance)."""
    from runners._rules import ESCALATE, SETTLED, Decisions, RuleOutcome
    from runners._shadow import ShadowSampler
    from runners._telemetry import StageStats

    class _Link:
        up, backlog, stage_id, _pending = True, 0, "s", []

    stats = StageStats("s")
    sampler = ShadowSampler(stats, seed=7)
    sampler.set_rate(rate)
    picked = 0
    settled_total = 0
    rng = np.random.default_rng(3)

    async def go() -> None:
        nonlocal picked, settled_total
        for _ in range(400):
            n = int(rng.integers(1, 40))
            action = np.where(rng.random(n) < 0.3, ESCALATE, SETTLED).astype(np.int8)
            outcome = RuleOutcome(action, np.zeros(n, np.int64), np.ones(n, np.float32), np.ones(n))
            decisions = Decisions(["water"], np.zeros(n, np.int32), np.ones(n, np.float32), ["s"],
                                  np.zeros(n, np.int32), action != ESCALATE)
            sampler.sample(_Link(), None, {"x": np.zeros((n, 2), np.float32)},  # type: ignore[arg-type]
                           outcome, decisions, np.zeros((n, 2)), "1")
            picked += len(sampler._buffer) + stats.counters["shadow_shed_total"]
            stats.counters["shadow_shed_total"] = 0
            sampler._buffer.clear()
            settled_total += int((action != ESCALATE).sum())
        if sampler._task is not None:
            sampler._task.cancel()

    asyncio.run(go())
    expected = rate * settled_total
    assert abs(picked - expected) <= 4 * np.sqrt(max(expected * (1 - rate), 1.0)) + 1


def test_shadow_rows_take_only_spare_budget_and_the_rate_defaults_to_one_percent() -> None:
    from runners._rules import TokenBucket
    from runners._shadow import _spare_tokens, shadow_rate

    bucket = TokenBucket(10.0)            # burst 10
    assert _spare_tokens(bucket, 4)       # 10 → 6: at least half the burst stays for real escalations
    assert not _spare_tokens(bucket, 2)   # 6 → 4 would leave less than half: shed
    assert bucket.take(6, now=bucket.stamp) == 6   # the real escalations still find every token left
    assert _spare_tokens(TokenBucket(0.0), 1000)   # no budget: nothing to spare
    assert shadow_rate(ctl.Budget()) == 0.01 and shadow_rate(ctl.Budget(shadow_rate=0.0)) == 0.0
    assert shadow_rate(ctl.Budget(shadow_rate=7.0)) == 1.0 and shadow_rate(ctl.Budget(shadow_rate=float("nan"))) == 0.0


def test_escalated_rows_count_where_the_next_hop_disagreed_by_score_bin() -> None:
    """note_escalated: rows escalated and answered final by the next hop, by this stage's score bin; rows whose
    own class is in class_in, provisional answers and NaN scores are not counted."""
    sampler = ShadowSampler(StageStats("detector"), seed=1)
    sampler.set_rate(0.5)
    outcome = RuleOutcome(action=np.zeros(7, np.int8), top_index=np.array([0, 0, 1, 0, 0, 2, 0]),
                          top_prob=np.ones(7), score=np.array([0.12, 0.13, 0.5, 0.9, np.nan, 0.31, 0.95]))
    sent = np.array([0, 1, 2, 3, 4, 5])
    # Their answers for the six sent rows: agree, disagree, (vessel: class_in), provisional, (NaN), "2" vs "2".
    answers = Decisions(["cargo", "water", "2"], np.array([1, 0, 0, 0, 1, 2], np.int32), np.ones(6, np.float32),
                        ["classifier"], np.zeros(6, np.int32), np.array([True, True, True, False, True, True]))
    sampler.note_escalated(("water", "vessel"), frozenset({"vessel"}), outcome, sent, answers)
    book = sampler.book
    def by_bin(counts: np.ndarray) -> dict[int, int]:
        return {b: int(n) for b, n in enumerate(counts) if n}

    assert by_bin(book.escalated_answered) == {int(0.12 * BINS): 1, int(0.13 * BINS): 1, int(0.31 * BINS): 1}
    assert by_bin(book.escalated_disagreed) == {int(0.13 * BINS): 1}


def test_a_buffered_shadow_row_keeps_only_its_own_bytes_not_the_request_it_came_in() -> None:
    """Sampled rows wait in the buffer up to LINGER_S, or for as long as real escalations keep the link busy. The
    agent decodes a request without copying (its tensors are views of the received message), so a row kept as a
    view held its whole message: 1 % shadow sampling under the cascade bench kept ~70 batch-32 messages (≈ 30 MB)
    alive on the device node until the load ended."""
    from runners._rules import ESCALATE, SETTLED
    from runners._tensors import parse_request, request_bytes

    class _Link:
        up, backlog, stage_id, _pending = True, 0, "s", []

    rows = 32
    image = np.random.default_rng(5).random((rows, 3, 32, 32)).astype(np.float32)  # 12 KiB a row
    received = parse_request(request_bytes(pb.ModelInferRequest(model_name="s"), [("image", image)]))
    feeds = decode_inputs(received)
    message: object = feeds["image"]
    while isinstance(message, np.ndarray) and message.base is not None:  # down to the buffer it is a view of
        message = message.base
    if isinstance(message, memoryview):
        message = message.obj
    assert isinstance(message, bytes) and len(message) > image.nbytes  # the received message: no copy was made

    sampler = ShadowSampler(StageStats("s"), seed=7)
    sampler.set_rate(1.0)
    action = np.where(np.arange(rows) % 4 == 0, ESCALATE, SETTLED).astype(np.int8)
    outcome = RuleOutcome(action, np.zeros(rows, np.int64), np.ones(rows, np.float32), np.ones(rows))
    decisions = Decisions(["water"], np.zeros(rows, np.int32), np.ones(rows, np.float32), ["s"],
                          np.zeros(rows, np.int32), action != ESCALATE)

    async def go() -> None:
        sampler.sample(_Link(), None, feeds, outcome, decisions, np.zeros((rows, 2)), "1")  # type: ignore[arg-type]
        assert sampler._task is not None
        sampler._task.cancel()

    asyncio.run(go())
    buffered = [row.inputs["image"] for row in sampler._buffer]
    assert len(buffered) == 24  # every settled row picked at rate 1
    for k, row in zip(np.flatnonzero(action != ESCALATE), buffered, strict=True):
        assert np.array_equal(row, image[k:k + 1])  # the right row, unchanged
        assert not np.shares_memory(row, feeds["image"])
        held = row if row.base is None else row.base
        assert held.nbytes == image[0].nbytes  # what the buffer keeps alive is this row, not the 384 KiB message


def test_a_sample_of_large_inputs_waits_within_its_byte_bound_and_the_rest_is_counted_as_shed() -> None:
    """An operator's 224×224×3 float images are 588 KiB a row: 256 waiting rows would be 147 MiB on a device.
    The buffer also stops at MAX_BUFFERED_BYTES; the rows it has no room for are shed and counted."""
    from runners._rules import SETTLED
    from runners._shadow import MAX_BUFFERED_BYTES

    class _Link:
        up, backlog, stage_id, _pending = True, 0, "s", []

    rows = 8
    image = np.random.default_rng(9).random((rows, 3, 224, 224)).astype(np.float32)
    stats = StageStats("s")
    sampler = ShadowSampler(stats, seed=3)
    sampler.set_rate(1.0)
    action = np.full(rows, SETTLED, np.int8)
    outcome = RuleOutcome(action, np.zeros(rows, np.int64), np.ones(rows, np.float32), np.ones(rows))
    decisions = Decisions(["water"], np.zeros(rows, np.int32), np.ones(rows, np.float32), ["s"],
                          np.zeros(rows, np.int32), np.ones(rows, bool))
    requests = 10

    async def go() -> None:
        for _ in range(requests):  # the link never gets to send: every sampled row waits
            sampler.sample(_Link(), None, {"image": image}, outcome, decisions, np.zeros((rows, 2)),  # type: ignore[arg-type]
                           "1")
        assert sampler._task is not None
        sampler._task.cancel()

    asyncio.run(go())
    fits = MAX_BUFFERED_BYTES // image[0].nbytes
    assert len(sampler._buffer) == fits < requests * rows
    assert sum(a.nbytes for row in sampler._buffer for a in row.inputs.values()) <= MAX_BUFFERED_BYTES
    assert stats.counters["shadow_shed_total"] == requests * rows - fits  # nothing vanishes uncounted
    assert np.array_equal(sampler._buffer[-1].inputs["image"], image[(fits - 1) % rows:(fits - 1) % rows + 1])
