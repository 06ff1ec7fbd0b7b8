"""The bundled ONNX stages: they load, match their cards, and reproduce the accuracies the cards record."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import ROOT

from app.pipeline_file import load_pipeline
from resources import scenes
from resources.models.flops import count_flops, count_parameters, node_flops

MODELS = ROOT / "resources" / "models"
STAGES = ("detector", "classifier", "heavy")
PIPELINE = ROOT / "resources" / "pipelines" / "ship-finder.pipeline.json"


def _card(name: str) -> dict[str, Any]:
    return json.loads((MODELS / f"{name}.card.json").read_text())


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def heldout() -> tuple[np.ndarray, np.ndarray]:
    images, labels = scenes.load_heldout()
    return scenes.to_model_input(images), labels


@pytest.fixture(scope="module")
def probs(heldout: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    x, _ = heldout
    out = {}
    for name in STAGES:
        sess = _session(MODELS / _card(name)["file"])
        out[name] = np.concatenate([sess.run(["probs"], {"image": x[i:i + 250]})[0] for i in range(0, len(x), 250)])
    return out


@pytest.mark.parametrize("name", STAGES)
def test_card_matches_file(name: str) -> None:
    card = _card(name)
    path = MODELS / card["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == card["sha256"]
    assert path.stat().st_size == card["size_bytes"]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    assert card["flops_per_input"] == count_flops(path)
    assert card["parameters"] == count_parameters(path)
    assert json.loads(dict((p.key, p.value) for p in model.metadata_props)["classes"]) == card["classes"]


@pytest.mark.parametrize("name", STAGES)
def test_loads_in_onnxruntime_with_the_card_interface(name: str) -> None:
    card = _card(name)
    sess = _session(MODELS / card["file"])
    (inp,) = sess.get_inputs()
    (out,) = sess.get_outputs()
    assert (inp.name, inp.type) == ("image", "tensor(float)") and inp.shape[1:] == [1, 64, 64]
    assert (out.name, out.type) == ("probs", "tensor(float)") and out.shape[1:] == [len(card["classes"])]
    assert isinstance(inp.shape[0], str) and isinstance(out.shape[0], str)  # dynamic batch
    assert card["inputs"][0]["name"] == "image" and card["outputs"][0]["name"] == "probs"
    for n in (1, 7):
        p = sess.run(["probs"], {"image": np.random.default_rng(n).random((n, 1, 64, 64), dtype=np.float32)})[0]
        assert p.shape == (n, len(card["classes"]))
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)  # softmax is inside the model


@pytest.mark.parametrize("name", STAGES)
def test_reproduces_recorded_heldout_accuracy(name: str, heldout: tuple[np.ndarray, np.ndarray],
                                              probs: dict[str, np.ndarray]) -> None:
    _, labels = heldout
    target = (labels > 0).astype(np.int64) if name == "detector" else labels
    accuracy = float((probs[name].argmax(axis=1) == target).mean())
    recorded = _card(name)["accuracy"]["heldout"]
    assert recorded["n"] == len(labels)
    assert abs(accuracy - recorded["top1"]) <= 0.005


def test_cost_budgets() -> None:
    flops = {name: _card(name)["flops_per_input"] for name in STAGES}
    assert flops["detector"] <= 100_000
    assert flops["classifier"] > flops["detector"]
    assert flops["heavy"] >= 50 * flops["detector"]
    total = sum((MODELS / _card(name)["file"]).stat().st_size for name in STAGES)
    assert total < 20 * 1024 * 1024


def test_flop_counter_on_a_known_graph(tmp_path: Path) -> None:
    # Conv 1→2, 3×3, pad 1 on 4×4 with bias: 16·2·9 MACs = 288 → 576 + 32 bias; Relu 32; Softmax over 32: 96.
    w = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [2, 1, 3, 3], [0.1] * 18)
    b = onnx.helper.make_tensor("b", onnx.TensorProto.FLOAT, [2], [0.0, 0.0])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
         onnx.helper.make_node("Relu", ["c"], ["r"]),
         onnx.helper.make_node("Flatten", ["r"], ["f"]),
         onnx.helper.make_node("Softmax", ["f"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 4, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 32])], [w, b])
    path = tmp_path / "m.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))
    assert [f for _, _, f in node_flops(onnx.load(str(path)))] == [608, 32, 0, 96]
    assert count_parameters(path) == 20


def test_pipeline_uses_the_carded_models() -> None:
    pipeline = load_pipeline(PIPELINE)
    assert [s.id for s in pipeline.chain()] == list(STAGES)
    for stage in pipeline.stages:
        card = _card(stage.id)
        assert stage.sha256 == card["sha256"]
        assert list(stage.rule.labels) == card["classes"]
        assert stage.placement.tier == card["tier"]
    detector, classifier = pipeline.stages[0].rule, pipeline.stages[1].rule
    assert detector.confidence_below == _card("detector")["escalation_rule"]["confidence_below"]
    assert classifier.confidence_below == _card("classifier")["escalation_rule"]["confidence_below"]


def test_cascade_rules_in_process_match_the_recorded_routing(heldout: tuple[np.ndarray, np.ndarray],
                                                             probs: dict[str, np.ndarray]) -> None:
    # The pipeline's rules, applied in-process with the reference semantics, route the held-out rows the
    # way the training script's own cascade computation did (its numbers for the held-out set are in the card).
    pipeline = load_pipeline(PIPELINE)
    _, labels = heldout
    d1 = pipeline.stages[0].rule.evaluate(probs["detector"])
    d2 = pipeline.stages[1].rule.evaluate(probs["classifier"])
    to_edge = d1.escalate
    to_cloud = to_edge & d2.escalate
    decision = np.where(to_cloud, probs["heavy"].argmax(1), np.where(to_edge, d2.top_class, 0))
    recorded = _card("heavy")["cascade"]["heldout"]
    assert recorded["n"] == len(labels)
    assert int(to_edge.sum()) == recorded["to_edge_rows"]
    assert int(to_cloud.sum()) == recorded["to_cloud_rows"]
    assert abs(float((decision == labels).mean()) - recorded["accuracy"]) <= 0.005


def _pb_rule(rule: Any) -> Any:
    from runners._proto import tierdeck_control_pb2 as ctl

    pb = ctl.EscalationRule(output=rule.output, labels=list(rule.labels), class_in=list(rule.class_in),
                            drop_class=list(rule.drop_class))
    if rule.confidence_below is not None:
        pb.confidence_below = rule.confidence_below
    if rule.score_above is not None:
        pb.score_above = rule.score_above
    return pb


@pytest.mark.slow
def test_bundled_cascade_on_three_agents_matches_in_process_rules(tmp_path: Path,
                                                                  heldout: tuple[np.ndarray, np.ndarray],
                                                                  probs: dict[str, np.ndarray]) -> None:
    import asyncio

    from agents import running_agent

    from runners._proto import tierdeck_control_pb2 as ctl
    from runners.client import NodeClient, manifest_for

    pipeline = load_pipeline(PIPELINE)
    chain = pipeline.chain()
    x, _ = heldout
    rows = 300
    d1 = chain[0].rule.evaluate(probs["detector"][:rows])
    d2 = chain[1].rule.evaluate(probs["classifier"][:rows])
    heavy_top = probs["heavy"][:rows].argmax(axis=1)
    expected_labels, expected_stages = [], []
    for r in range(rows):
        if not d1.escalate[r]:
            expected_labels.append(chain[0].rule.labels[d1.top_class[r]]), expected_stages.append("detector")
        elif not d2.escalate[r]:
            expected_labels.append(chain[1].rule.labels[d2.top_class[r]]), expected_stages.append("classifier")
        else:
            expected_labels.append(chain[2].rule.labels[heavy_top[r]]), expected_stages.append("heavy")
    assert len(set(expected_stages)) == 3, "the held-out rows must exercise every route"

    with running_agent(tmp_path / "cloud", tier="cloud", name="cloud") as cloud, \
            running_agent(tmp_path / "edge", tier="edge", name="edge") as edge, \
            running_agent(tmp_path / "device", tier="device", name="device") as device:
        nodes = [device, edge, cloud]

        async def go() -> tuple[list[str], list[str]]:
            for i in reversed(range(3)):
                stage = chain[i]
                assert stage.model_path is not None
                model = stage.model_path.read_bytes()
                fields: dict[str, Any] = {}
                if i < 2:
                    fields["rule"] = _pb_rule(stage.rule)
                    fields["next_hop"] = ctl.NextHop(address=nodes[i + 1].address, model=chain[i + 1].id,
                                                     labels=list(chain[i + 1].rule.labels))
                async with NodeClient(nodes[i].address) as client:
                    await client.deploy(manifest_for(stage.id, model, "1", **fields), model)
            labels: list[str] = []
            stages: list[str] = []
            async with NodeClient(device.address) as client:
                for start in range(0, rows, 50):
                    result = await client.infer("detector", {"image": x[start:start + 50]})
                    assert result.outputs["decision_final"].all()
                    labels += [v.decode() for v in result.outputs["decision_label"]]
                    stages += [v.decode() for v in result.outputs["decision_stage"]]
            return labels, stages

        labels, stages = asyncio.run(go())
    assert stages == expected_stages
    assert labels == expected_labels
