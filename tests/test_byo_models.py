"""Bring your own models: the common shapes of operator classifiers deploy as a two-tier cascade whose every
answer equals an onnxruntime reference, and the shapes that cannot work are refused in words.

Models are built at test time: scikit-learn digits classifiers exported by skl2onnx (probabilities, ZipMap,
integer class labels) and hand-written ONNX graphs (logits, two inputs, a UINT8 input).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agents import AgentProcess, running_agent, start_agent
from byo_models import (
    DIGITS,
    big_classifier,
    digits,
    export,
    graph_model,
    run_model,
    small_classifier,
    stage_entry,
    write_pipeline,
)
from test_app_support import started_core, wait_nodes

from app._console import ConsoleCore
from app.pipeline_file import PipelineError, load_pipeline
from runners._proto import tierdeck_control_pb2 as ctl
from runners.client import DeployError, NodeClient, manifest_for

THRESHOLD = 0.9


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _case(name: str, root: Path) -> dict[str, Any]:
    """Models, feeds, tensors and the probability function of one kind of operator model."""
    _, _, x, _ = digits()
    if name in ("probabilities", "integer_labels"):
        small, big = small_classifier(root / f"{name}-small.onnx"), big_classifier(root / f"{name}-big.onnx")
        feeds = {"X": x}
        return {"models": (small, big), "feeds": feeds, "output": "probabilities",
                "probs": lambda m: run_model(m, feeds, "probabilities"),
                "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}],
                "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
                "labels": list(range(10)) if name == "integer_labels" else DIGITS, "scores": None}
    kind = {"logits": "logits", "two_inputs": "two_inputs", "uint8_input": "uint8"}[name]
    small, big = graph_model(root / f"{name}-small.onnx", kind, 1), graph_model(root / f"{name}-big.onnx", kind, 0)
    if kind == "two_inputs":
        feeds = {"a": np.ascontiguousarray(x[:, :32]), "b": np.ascontiguousarray(x[:, 32:])}
        inputs = [{"name": n, "datatype": "FP32", "shape": [-1, 32]} for n in ("a", "b")]
    elif kind == "uint8":
        feeds = {"img": np.rint(x * 16).astype(np.uint8)}
        inputs = [{"name": "img", "datatype": "UINT8", "shape": [-1, 64]}]
    else:
        feeds = {"X": x}
        inputs = [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}]
    output = "logits" if kind == "logits" else "probs"
    convert: Callable[[np.ndarray], np.ndarray] = _softmax if kind == "logits" else (lambda v: v)
    return {"models": (small, big), "feeds": feeds, "output": output,
            "probs": lambda m: convert(run_model(m, feeds, output).astype(np.float64)),
            "inputs": inputs, "outputs": [{"name": output, "datatype": "FP32", "shape": [-1, 10]}],
            "labels": DIGITS, "scores": "logits" if kind == "logits" else None}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ConsoleCore, dict[str, AgentProcess]]]:
    """A device and a cloud agent and a console core connected to both."""
    root = tmp_path_factory.mktemp("fleet")
    agents = {"device": start_agent(root / "device", tier="device", name="device-1"),
              "cloud": start_agent(root / "cloud", tier="cloud", name="cloud-1")}
    try:
        with started_core(root / "console.sqlite") as core:
            for agent in agents.values():
                core.add_address(agent.address).result(10)
            wait_nodes(core, lambda nodes: len(nodes) == 2 and all(n.state.value == "online" for n in nodes),
                       message="two nodes online")
            yield core, agents
    finally:
        for agent in agents.values():
            agent.stop()


@pytest.mark.parametrize("name", ["probabilities", "integer_labels", "logits", "two_inputs", "uint8_input"])
def test_an_operator_classifier_cascade_answers_like_onnxruntime(
        name: str, tmp_path: Path, fleet: tuple[ConsoleCore, dict[str, AgentProcess]]) -> None:
    core, agents = fleet
    case = _case(name, tmp_path)
    small, big = case["models"]
    stages = []
    for stage_id, model, tier, condition in ((f"{name}_small", small, "device", {"confidence_below": THRESHOLD}),
                                             (f"{name}_big", big, "cloud", {})):
        rule = {"output": case["output"], "labels": case["labels"], **condition}
        if case["scores"]:
            rule["scores"] = case["scores"]
        entry = stage_entry(stage_id, model, rule, {"tier": tier})
        entry["inputs"], entry["outputs"] = case["inputs"], case["outputs"]
        stages.append(entry)
    pipeline = load_pipeline(write_pipeline(tmp_path, stages, name=name.replace("_", "-")))
    assert pipeline.stages[0].rule.labels == tuple(DIGITS)  # integer labels read as text
    the_plan = core.plan(pipeline).result(30)
    assert the_plan.ok, the_plan.problems
    result = core.apply(the_plan).result(120)
    assert result.ok, result

    p_small, p_big = case["probs"](small), case["probs"](big)
    escalate = p_small.max(axis=1) < THRESHOLD
    assert 10 < escalate.sum() < len(escalate) // 2
    want_labels = np.where(escalate, np.array(DIGITS)[p_big.argmax(axis=1)], np.array(DIGITS)[p_small.argmax(axis=1)])
    want_conf = np.where(escalate, p_big.max(axis=1), p_small.max(axis=1))
    want_stage = np.where(escalate, f"{name}_big", f"{name}_small")

    async def ask() -> tuple[list[str], list[str], np.ndarray]:
        labels: list[str] = []
        stages_: list[str] = []
        conf: list[np.ndarray] = []
        async with NodeClient(agents["device"].address) as client:
            n = len(next(iter(case["feeds"].values())))
            for start in range(0, n, 50):
                batch = {k: v[start:start + 50] for k, v in case["feeds"].items()}
                out = (await client.infer(f"{name}_small", batch)).outputs
                labels += [v.decode() for v in out["decision_label"]]
                stages_ += [v.decode() for v in out["decision_stage"]]
                conf.append(out["decision_confidence"])
        return labels, stages_, np.concatenate(conf)

    labels, deciders, confidence = asyncio.run(ask())
    assert labels == list(want_labels)
    assert deciders == list(want_stage)
    np.testing.assert_allclose(confidence, want_conf, rtol=1e-4, atol=1e-5)
    assert confidence.max() <= 1.0 + 1e-6  # a confidence is a probability, also for a logits model


def test_a_confidence_rule_on_logits_is_refused_by_the_node_with_the_way_out(tmp_path: Path) -> None:
    model = graph_model(tmp_path / "logits.onnx", "logits", 0).read_bytes()
    rule = ctl.EscalationRule(output="logits", labels=DIGITS, confidence_below=0.9)

    async def go() -> tuple[str, ctl.StageInfo]:
        async with NodeClient(agent.address) as client:
            with pytest.raises(DeployError) as refused:
                await client.deploy(manifest_for("raw", model, "1", rule=rule), model)
            fixed = ctl.EscalationRule(output="logits", labels=DIGITS, confidence_below=0.9, scores="logits")
            info = await client.deploy(manifest_for("raw", model, "2", rule=fixed), model)
            return str(refused.value), info

    with running_agent(tmp_path / "node") as agent:
        message, info = asyncio.run(go())
    assert "cannot be probabilities" in message and "logits" in message and "validate" in message
    assert info.manifest.version == "2"


def test_a_confidence_rule_on_a_label_tensor_is_refused_in_words(tmp_path: Path) -> None:
    model = small_classifier(tmp_path / "small.onnx")
    entry = stage_entry("digits", model, {"output": "label", "labels": DIGITS, "confidence_below": 0.9},
                        {"tier": "device"})
    with pytest.raises(PipelineError) as refused:
        load_pipeline(write_pipeline(tmp_path, [entry]))
    problems = [str(p) for p in refused.value.problems]
    assert any("INT64" in p and "class ids" in p and "probability output" in p for p in problems), problems


def test_a_zipmap_model_serves_its_tensors_and_its_map_output_is_explained(tmp_path: Path) -> None:
    """skl2onnx's default export: `output_label` (INT64) and ZipMap's `output_probability` (a seq of maps)."""
    from sklearn.linear_model import LogisticRegression

    x, y, xt, _ = digits()
    fitted = LogisticRegression(max_iter=1000, C=20.0).fit(x[:300], y[:300])
    path = export(fitted, tmp_path / "zipmap.onnx", zipmap=True)
    # Declared in a pipeline: one problem, in words, with the way out.
    entry = stage_entry("zm", path, {"output": "output_label", "labels": DIGITS}, {"tier": "cloud"})
    entry["outputs"] = [{"name": "output_label", "datatype": "INT64", "shape": [-1]},
                        {"name": "output_probability", "datatype": "FP32", "shape": [-1, 10]}]
    with pytest.raises(PipelineError) as refused:
        load_pipeline(write_pipeline(tmp_path, [entry]))
    problems = [str(p) for p in refused.value.problems]
    assert len(problems) == 1 and "ZipMap" in problems[0] and "zipmap" in problems[0], problems

    model = path.read_bytes()

    async def go() -> tuple[str, np.ndarray]:
        async with NodeClient(agent.address) as client:
            with pytest.raises(DeployError) as named_map:
                await client.deploy(manifest_for("zm", model, "1", output_names=["output_probability"]), model)
            # Only the label tensor is needed: the model loads, the map output is never fetched.
            await client.deploy(manifest_for("zm", model, "2", output_names=["output_label"]), model)
            out = (await client.infer("zm", {"X": xt[:40]})).outputs
            return str(named_map.value), out["output_label"]

    with running_agent(tmp_path / "node") as agent:
        message, labels = asyncio.run(go())
    assert "ZipMap" in message and "zipmap" in message
    np.testing.assert_array_equal(labels, fitted.predict(xt[:40]))
