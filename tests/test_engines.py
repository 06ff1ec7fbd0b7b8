"""The cloud tier on a serving engine tierdeck does not run: real MLServer and KServe as the top of ship-finder.

For each engine: `tierdeck deploy` checks it and wires the edge to it; the held-out stream through the device
gets the engine's answers (equal to onnxruntime's) for the rows that reach the top; kill -9 of the engine
mid-stream → escalations queue (answers provisional) → restart → every queued row delivered once, none lost.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from agents import start_agent
from conftest import ROOT
from engine_fixtures import Engine
from test_app_support import agent_totals

from app.pipeline_file import load_pipeline
from resources.scenes import load_heldout, to_model_input
from runners.client import NodeClient

pytestmark = pytest.mark.slow
MODELS = ROOT / "resources" / "models"
SHIP_FINDER = ROOT / "resources" / "pipelines" / "ship-finder.pipeline.json"


def _pipeline(folder: Path, engine: Engine) -> Path:
    """ship-finder with its heavy stage served by the engine (format version 2)."""
    doc = json.loads(SHIP_FINDER.read_text())
    doc["version"] = 2
    for stage in doc["stages"]:
        if stage["id"] == "heavy":
            del stage["model"], stage["sha256"]
            stage["endpoint"] = {"address": engine.address, "model": engine.model}
        else:
            shutil.copy(MODELS / Path(stage["model"]).name, folder / Path(stage["model"]).name)
            stage["model"] = Path(stage["model"]).name
    path = folder / "ship-finder-engine.pipeline.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


def _reference(pipeline_path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, deciding tier 0/1/2, classifier's labels) of the cascade, computed with onnxruntime alone."""
    pipeline = load_pipeline(pipeline_path)
    x = to_model_input(images)
    run = {name: ort.InferenceSession(str(MODELS / f"{name}.onnx"), providers=["CPUExecutionProvider"])
           for name in ("detector", "classifier", "heavy")}
    probs = {name: np.asarray(s.run(None, {"image": x})[0]) for name, s in run.items()}
    det, cls, heavy = (pipeline.stage(n).rule for n in ("detector", "classifier", "heavy"))
    up1 = det.evaluate(probs["detector"]).escalate
    up2 = up1 & cls.evaluate(probs["classifier"]).escalate
    labels_cls = np.array(cls.labels)[probs["classifier"].argmax(axis=1)]
    labels = np.where(up2, np.array(heavy.labels)[probs["heavy"].argmax(axis=1)],
                      np.where(up1, labels_cls, np.array(det.labels)[probs["detector"].argmax(axis=1)]))
    return labels, up1.astype(int) + up2.astype(int), labels_cls


async def _send(address: str, images: np.ndarray, batch: int = 10) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    async with NodeClient(address) as client:
        for start in range(0, len(images), batch):
            out = (await client.infer("detector", {"image": to_model_input(images[start:start + batch])},
                                      timeout=30)).outputs
            for label, stage, final in zip(out["decision_label"], out["decision_stage"], out["decision_final"],
                                           strict=True):
                rows.append({"label": label.decode(), "stage": stage.decode(), "final": bool(final)})
    return rows


def _edge_totals(address: str) -> Any:
    return agent_totals(address)["classifier"]


def _deploy(pipeline: Path, device: Any, edge: Any, db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", "deploy", str(pipeline), "--node", device.address, "--node",
                           edge.address, "--db", str(db), "--json"], capture_output=True, text=True, cwd=ROOT,
                          timeout=180)


@pytest.mark.parametrize("kind", ["mlserver", "kserve"])
def test_an_engine_as_the_cloud_tier_answers_and_loses_nothing_when_killed(kind: str, tmp_path: Path) -> None:
    engine = Engine(kind, f"heavy-{kind}", MODELS / "heavy.onnx", tmp_path / kind).start()
    device = start_agent(tmp_path / "device", tier="device", name="device-1")
    edge = start_agent(tmp_path / "edge", tier="edge", name="edge-1")
    try:
        pipeline = _pipeline(tmp_path, engine)
        deploy = _deploy(pipeline, device, edge, tmp_path / "console.sqlite")
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        report = json.loads(deploy.stdout)
        assert any("plaintext" in w for w in report["plan"]["warnings"])
        verified = [p for p in report["progress"] if p["stage_id"] == "heavy" and p["status"] == "done"]
        assert verified and "lists no tensors" in verified[0]["message"], report["progress"]

        images, _ = load_heldout()
        images = images[:300]
        want_labels, want_tier, classifier_labels = _reference(pipeline, images)
        assert (want_tier == 2).sum() >= 5  # some rows do reach the engine

        # 1. The engine up: every answer final and equal to the reference, the top ones from the engine.
        got = asyncio.run(_send(device.address, images[:150]))
        assert all(r["final"] for r in got)
        assert [r["label"] for r in got] == list(want_labels[:150])
        assert [r["stage"] for r in got] == [("detector", "classifier", engine.model)[t] for t in want_tier[:150]]

        # 2. kill -9 mid-stream: the edge answers provisional and queues; nothing is dead-lettered.
        engine.kill()
        late = asyncio.run(_send(device.address, images[150:]))
        top = want_tier[150:] == 2
        assert top.sum() >= 2
        assert all(not r["final"] and r["stage"] == "classifier" for r, t in zip(late, top, strict=True) if t)
        assert [r["label"] for r, t in zip(late, top, strict=True) if t] == list(classifier_labels[150:][top])
        assert [r["label"] for r, t in zip(late, top, strict=True) if not t] == list(want_labels[150:][~top])
        queued = _edge_totals(edge.address)
        assert queued.queued_total >= top.sum() and queued.dead_letter_total == 0

        # 3. Restart on the same port: the queue drains in order, each row delivered once.
        engine.start()
        deadline = time.monotonic() + 60
        while True:
            totals = _edge_totals(edge.address)
            if totals.queue_depth == 0 and totals.delivered_total == totals.queued_total:
                break
            assert time.monotonic() < deadline, f"queue did not drain: {totals}"
            time.sleep(0.3)
        escalated_to_engine = int((want_tier == 2).sum())
        assert totals.escalated_total == escalated_to_engine
        assert totals.forwarded_total + totals.delivered_total == escalated_to_engine
        assert totals.overflow_total == 0 and totals.shed_total == 0 and totals.dead_letter_total == 0
        # The engine ran every escalated row (a call cut by the kill may have run once more: engines do not
        # know tierdeck's row ids).
        assert escalated_to_engine <= engine.rows_run() <= escalated_to_engine + 10
        assert totals.hop_calls_total > 0 and totals.hop_errors_total >= 1
    finally:
        engine.stop()
        device.stop()
        edge.stop()


def test_an_engine_whose_metadata_disagrees_is_refused_at_deploy_with_the_differences(tmp_path: Path) -> None:
    """The detector (2 classes) served where the pipeline expects the heavy model (5 classes)."""
    # MLServer lists tensors when the model settings declare them: declare the detector's (2 classes).
    declared: dict[str, list[dict[str, object]]] = {
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 64, 64]}],
        "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, 2]}]}
    engine = Engine("mlserver", "heavy-mlserver", MODELS / "detector.onnx", tmp_path / "mls", declared=declared)
    engine.start()
    device = start_agent(tmp_path / "device", tier="device", name="device-1")
    edge = start_agent(tmp_path / "edge", tier="edge", name="edge-1")
    try:
        pipeline = _pipeline(tmp_path, engine)
        deploy = _deploy(pipeline, device, edge, tmp_path / "console.sqlite")
        assert deploy.returncode == 1
        result = json.loads(deploy.stdout)["result"]
        assert "output 'probs' has 2 classes there, the pipeline names 5" in result["reason"], result
        assert result["status"] == "failed"  # checked before anything was pushed: nothing to roll back

        async def stages(address: str) -> list[str]:
            async with NodeClient(address) as client:
                return [s.manifest.stage_id for s in await client.stages()]
        assert asyncio.run(stages(device.address)) == [] and asyncio.run(stages(edge.address)) == []
    finally:
        engine.stop()
        device.stop()
        edge.stop()


def test_the_console_watches_an_engine_like_a_node(tmp_path: Path) -> None:
    from test_app_support import started_core, wait_nodes

    engine = Engine("mlserver", "heavy-mlserver", MODELS / "heavy.onnx", tmp_path / "mls").start()
    try:
        pipeline = load_pipeline(_pipeline(tmp_path, engine))
        with started_core(tmp_path / "console.sqlite") as core:
            core.plan(pipeline).result(30)  # a plan (or a deploy) names the engine: the console watches it

            def engine_is(state: str) -> Any:
                return lambda nodes: any(n.source == "endpoint" and n.state.value == state for n in nodes)

            nodes = wait_nodes(core, engine_is("online"), message="engine online")
            card = next(n for n in nodes if n.source == "endpoint")
            assert card.tier == "cloud" and card.name == "heavy engine" and card.address == engine.address
            assert card.info is not None and card.info.platform == "external · mlserver 1.7.1"
            assert [(s.stage_id, s.serving) for s in card.stages] == [("heavy", True)]
            engine.kill()
            gone = next(n for n in wait_nodes(core, engine_is("offline"), message="engine offline")
                        if n.source == "endpoint")
            assert gone.reason  # says why (unavailable / connection refused)
            engine.start()
            wait_nodes(core, engine_is("online"), message="engine back")
            # An engine is not a node to deploy to: the plan leaves it alone.
            assert all(not n.node_key.startswith("endpoint:") for n in core.plan(pipeline).result(30).nodes)
    finally:
        engine.stop()


def test_an_engine_card_says_what_its_callers_see() -> None:
    """The stages escalating to an engine carry its latency and errors in their telemetry; the card sums them."""
    from test_app_support import synthetic_sample

    from app._records import NodeInfoSummary, NodeSnapshot, StageSnapshot
    from widgets import _format as fmt

    engine = NodeSnapshot("endpoint:10.0.0.9:8001", "", "heavy engine", "cloud", "10.0.0.9:8001", source="endpoint",
                          info=NodeInfoSummary(platform="external · triton 2.61"))
    edges = [NodeSnapshot(f"e{i}", f"edge-{i}", f"edge-{i}", "edge", f"127.0.0.1:{i}",
                          stages=(StageSnapshot("classifier", "v1", next_hop="10.0.0.9:8001", next_model="heavy"),))
             for i in (1, 2)]
    samples = {}
    for i, (p95, calls, errors) in enumerate(((4.0, 100, 1), (7.5, 50, 2)), start=1):
        base = synthetic_sample(f"edge-{i}", 1, 0, stage_id="classifier")
        stage = base.stages[0]._replace(hop_latency_p95_ms=p95, hop_calls_total=calls, hop_errors_total=errors)
        samples[f"edge-{i}"] = base._replace(stages=(stage,))
    assert fmt.hardware(engine) == "external · triton 2.61"
    assert fmt.callers_view(engine, [engine, *edges], samples.get) == "callers see p95 7.5 ms · 3 errors of 150 calls"
    assert fmt.callers_view(engine, [engine], samples.get) == "no calls from its callers yet"
