"""The pipeline file format: the bundled pipeline validates; each broken variant is refused with its message."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.pipeline_file import (
    Budget,
    PipelineError,
    Rule,
    dumps_pipeline,
    load_pipeline,
    loads_pipeline,
    parse_pipeline,
    save_pipeline,
    sha256_of,
)

PIPELINE = ROOT / "resources" / "pipelines" / "ship-finder.pipeline.json"
MODELS = ROOT / "resources" / "models"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the bundled layout (models/ and pipelines/) that tests may break."""
    root = tmp_path_factory.mktemp("layout")
    shutil.copytree(MODELS, root / "models", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (root / "pipelines").mkdir()
    return root


@pytest.fixture()
def doc() -> dict[str, Any]:
    return json.loads(PIPELINE.read_text())


def _load(workdir: Path, doc: Any) -> Any:
    path = workdir / "pipelines" / "t.pipeline.json"
    path.write_text(json.dumps(doc))
    return load_pipeline(path)


def test_bundled_pipeline_validates() -> None:
    p = load_pipeline(PIPELINE)
    assert p.name == "ship-finder" and p.path == PIPELINE
    assert [s.id for s in p.chain()] == ["detector", "classifier", "heavy"]
    assert [s.placement.tier for s in p.stages] == ["device", "edge", "cloud"]
    assert [s.next for s in p.stages] == ["classifier", "heavy", None]
    for s in p.stages:
        card = json.loads((MODELS / f"{s.id}.card.json").read_text())
        assert s.sha256 == card["sha256"] == sha256_of(s.model_path)  # type: ignore[arg-type]
        assert list(s.rule.labels) == card["classes"]
    assert p.stages[0].rule.class_in == ("vessel",) and p.stages[0].rule.confidence_below is not None
    assert p.stages[1].rule.confidence_below is not None
    assert not p.stages[2].rule.escalates


def test_round_trip(tmp_path: Path, workdir: Path) -> None:
    p = load_pipeline(PIPELINE)
    out = workdir / "pipelines" / "copy.pipeline.json"
    save_pipeline(p, out)
    again = load_pipeline(out)
    assert again.to_dict() == p.to_dict()
    assert json.loads(dumps_pipeline(again)) == json.loads(PIPELINE.read_text())


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets doc[path] (dotted, with [i] indices) to value; _DELETE removes it."""
    def mutate(doc: dict[str, Any]) -> None:
        parts = path.replace("]", "").replace("[", ".").split(".")
        node: Any = doc
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        last = parts[-1]
        key: Any = int(last) if isinstance(node, list) else last
        if value is _DELETE:
            del node[key]
        else:
            node[key] = copy.deepcopy(value)
    return mutate


_DELETE = object()

INVALID: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("unknown model file", _set("stages[1].model", "../models/nope.onnx"),
     "stages[1].model", "unknown model file '../models/nope.onnx'"),
    ("sha256 mismatch", _set("stages[0].sha256", "0" * 64), "stages[0].sha256", "sha256 mismatch"),
    ("malformed sha256", _set("stages[0].sha256", "XYZ"), "stages[0].sha256", "64 lowercase hex digits"),
    ("missing output name (model)", _set("stages[0].outputs[0].name", "scores"),
     "stages[0].outputs[0].name", "missing output name: detector.onnx has no output 'scores'"),
    ("missing output name (rule)", _set("stages[1].rule.output", "logits"),
     "stages[1].rule.output", "missing output name: 'logits' is not one of this stage's outputs"),
    ("cycle", _set("stages[2].next", "detector"), "stages[0].next", "cycle: detector → classifier → heavy → detector"),
    ("self loop", _set("stages[1].next", "classifier"), "stages[1].next", "cycle: classifier → classifier"),
    ("unknown next", _set("stages[0].next", "cloud-big"), "stages[0].next", "unknown stage 'cloud-big'"),
    ("unreachable stage", _set("stages[0].next", "heavy"), "stages[1]", "'classifier' is never reached"),
    ("unknown class in class_in", _set("stages[0].rule.class_in", ["boat"]),
     "stages[0].rule.class_in[0]", "rule refers to unknown class 'boat'"),
    ("unknown class in drop_class", _set("stages[1].rule.drop_class", ["Water"]),
     "stages[1].rule.drop_class[0]", "rule refers to unknown class 'Water'"),
    ("class both dropped and escalated", _set("stages[0].rule.drop_class", ["vessel"]),
     "stages[0].rule", "in both drop_class and class_in"),
    ("labels do not fit the output", _set("stages[1].rule.labels", ["water", "ship"]),
     "stages[1].rule.labels", "2 labels for output 'probs' of 5 classes"),
    ("last stage escalates", _set("stages[2].rule.confidence_below", 0.5),
     "stages[2].rule", "'heavy' is the last stage (no next hop) but its rule escalates"),
    ("link that never escalates", _set("stages[1].rule", {"output": "probs", "labels": [
        "water", "cargo", "tanker", "fishing", "patrol"]}), "stages[1].rule", "its rule never escalates"),
    ("duplicate stage id", _set("stages[1].id", "detector"), "stages[1].id", "duplicate stage id 'detector'"),
    ("bad stage id", _set("stages[1].id", "Edge Classifier"), "stages[1].id", "must be 1–63 of a-z"),
    ("unsupported version", _set("version", 3), "version", "unsupported version 3"),
    ("wrong format", _set("format", "kubeflow"), "format", "must be 'tierdeck.pipeline'"),
    ("typo in a rule key", _set("stages[0].rule.confidence_belw", 0.8), "stages[0].rule",
     "unknown key 'confidence_belw'"),
    ("missing placement", _set("stages[0].placement", _DELETE), "stages[0]", "missing required key 'placement'"),
    ("unknown tier", _set("stages[0].placement", {"tier": "fog"}), "stages[0].placement.tier", "unknown tier 'fog'"),
    ("tier and nodes", _set("stages[0].placement", {"tier": "edge", "nodes": ["n1"]}), "stages[0].placement",
     "exactly one of"),
    ("empty node list", _set("stages[0].placement", {"nodes": []}), "stages[0].placement.nodes", "must not be empty"),
    ("confidence out of range", _set("stages[1].rule.confidence_below", 1.5),
     "stages[1].rule.confidence_below", "must be in [0, 1]"),
    ("boolean is not a number", _set("stages[1].rule.confidence_below", True),
     "stages[1].rule.confidence_below", "must be a number, not a boolean"),
    ("negative budget", _set("stages[0].budget.max_escalations_per_s", -1),
     "stages[0].budget.max_escalations_per_s", "must be in [0, …]"),
    ("unknown priority", _set("stages[0].budget.priority", "urgent"), "stages[0].budget.priority",
     "unknown priority 'urgent'"),
    ("shadow rate above 1", _set("stages[0].budget.shadow_rate", 5), "stages[0].budget.shadow_rate",
     "must be in [0, 1]"),
    ("shadow rate as text", _set("stages[0].budget.shadow_rate", "1%"), "stages[0].budget.shadow_rate",
     "must be a number, not a string"),
    ("absolute model path", _set("stages[0].model", "/etc/passwd"), "stages[0].model",
     "must be relative to the pipeline file"),
    ("input not in model", _set("stages[0].inputs[0].name", "img"), "stages[0].inputs[0].name",
     "missing input name: detector.onnx has no input 'img'"),
    ("datatype differs from model", _set("stages[2].outputs[0].datatype", "FP16"), "stages[2].outputs[0].datatype",
     "heavy.onnx says FP32 for output 'probs', the pipeline says FP16"),
    ("shape differs from model", _set("stages[1].inputs[0].shape", [-1, 3, 64, 64]), "stages[1].inputs[0].shape",
     "the pipeline says [-1, 3, 64, 64]"),
    ("unknown datatype", _set("stages[1].inputs[0].datatype", "FLOAT"), "stages[1].inputs[0].datatype",
     "unknown datatype 'FLOAT'"),
    ("no stages", _set("stages", []), "stages", "must be a non-empty list of stages"),
    ("bad max_batch", _set("stages[0].max_batch", 0), "stages[0].max_batch", "must be an integer in [1, 65536]"),
]


@pytest.mark.parametrize(("mutate", "where", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_variant_is_rejected_with_its_message(workdir: Path, doc: dict[str, Any],
                                                      mutate: Callable[[dict[str, Any]], None],
                                                      where: str, message: str) -> None:
    _load(workdir, doc)  # the unbroken copy loads
    mutate(doc)
    with pytest.raises(PipelineError) as info:
        _load(workdir, doc)
    found = [(p.where, p.message) for p in info.value.problems]
    assert any(w == where and message in m for w, m in found), found
    assert message in str(info.value)


def test_every_problem_is_reported_once(workdir: Path, doc: dict[str, Any]) -> None:
    doc["stages"][0]["rule"]["class_in"] = ["boat"]
    doc["stages"][1]["sha256"] = "f" * 64
    doc["stages"][2]["placement"] = {"tier": "moon"}
    with pytest.raises(PipelineError) as info:
        _load(workdir, doc)
    wheres = [p.where for p in info.value.problems]
    assert wheres == ["stages[0].rule.class_in[0]", "stages[1].sha256", "stages[2].placement.tier"]
    assert "3 problems" in str(info.value)


def test_explicit_next_reorders_the_chain(workdir: Path, doc: dict[str, Any]) -> None:
    # The file order is not the hop order when stages name their next hop.
    doc["stages"] = [doc["stages"][0], doc["stages"][2], doc["stages"][1]]
    doc["stages"][0]["next"] = "classifier"
    doc["stages"][2]["next"] = "heavy"
    doc["stages"][1]["next"] = None
    p = _load(workdir, doc)
    assert [s.id for s in p.chain()] == ["detector", "classifier", "heavy"]
    again = loads_pipeline(dumps_pipeline(p), workdir / "pipelines")
    assert [s.id for s in again.chain()] == ["detector", "classifier", "heavy"]


def test_pinned_nodes_and_budget(workdir: Path, doc: dict[str, Any]) -> None:
    doc["stages"][1]["placement"] = {"nodes": ["edge-7f3a", "edge-19c2"]}
    doc["stages"][1]["budget"] = {"max_escalations_per_s": 50, "priority": "bulk"}
    del doc["stages"][2]["budget"]
    p = _load(workdir, doc)
    assert p.stages[1].placement.nodes == ("edge-7f3a", "edge-19c2") and p.stages[1].placement.tier is None
    assert p.stages[1].budget == Budget(50.0, "bulk")
    assert p.stages[2].budget == Budget()


def test_shadow_rate_is_read_saved_and_sent_to_the_node(workdir: Path, doc: dict[str, Any]) -> None:
    from app._deployer import budget_proto

    doc["stages"][0]["budget"]["shadow_rate"] = 0.05
    doc["stages"][1]["budget"]["shadow_rate"] = 0
    p = _load(workdir, doc)
    assert [s.budget.shadow_rate for s in p.stages] == [0.05, 0.0, None]
    again = json.loads(dumps_pipeline(p))
    assert [s["budget"].get("shadow_rate") for s in again["stages"]] == [0.05, 0, None]
    assert "shadow_rate" not in again["stages"][2]["budget"]  # unset stays unset: the node's default (1 %)
    protos = [budget_proto(s.budget) for s in p.stages]
    assert [b.shadow_rate for b in protos[:2]] == [0.05, 0.0] and not protos[2].HasField("shadow_rate")
    assert protos[1].HasField("shadow_rate")  # 0 is sent: it turns sampling off


def test_not_json_and_unreadable(tmp_path: Path) -> None:
    bad = tmp_path / "x.pipeline.json"
    bad.write_text('{"format": "tierdeck.pipeline",')
    with pytest.raises(PipelineError, match="not valid JSON"):
        load_pipeline(bad)
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PipelineError, match="not valid JSON"):
        load_pipeline(bad)
    with pytest.raises(PipelineError, match="cannot read pipeline file"):
        load_pipeline(tmp_path / "missing.pipeline.json")


def _model_with_external_data(path: Path, location: str) -> None:
    weight = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [1], [1.0])
    weight.ClearField("float_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Mul", ["image", "w"], ["probs"])], "g",
        [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", 2])],
        [onnx.helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, ["N", 2])], [weight])
    onnx.save(onnx.helper.make_model(graph), str(path))


def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    model = tmp_path / "models" / "evil.onnx"
    _model_with_external_data(model, "../../../../etc/passwd")
    stage = {"id": "evil", "model": "models/evil.onnx", "sha256": sha256_of(model), "placement": {"tier": "edge"},
             "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 2]}],
             "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, 2]}],
             "rule": {"output": "probs", "labels": ["a", "b"]}}
    doc = {"format": "tierdeck.pipeline", "version": 1, "name": "x", "stages": [stage]}
    with pytest.raises(PipelineError, match=r"external data '\.\./\.\./\.\./\.\./etc/passwd' points outside"):
        parse_pipeline(doc, tmp_path)
    _model_with_external_data(model, "weights.bin")  # inside the folder: fine
    stage["sha256"] = sha256_of(model)
    assert parse_pipeline(doc, tmp_path).stages[0].id == "evil"


def test_structure_only_without_base_dir(doc: dict[str, Any]) -> None:
    p = parse_pipeline(doc)  # the canvas checks a document before it is saved anywhere
    assert p.stages[0].model_path is None and len(p.stages) == 3


def test_rule_semantics() -> None:
    rule = Rule("probs", ("water", "vessel"), confidence_below=0.9, class_in=("vessel",))
    d = rule.evaluate([[0.95, 0.05], [0.85, 0.15], [0.2, 0.8], [0.5, 0.5]])
    assert d.top_class.tolist() == [0, 0, 1, 0]
    assert d.escalate.tolist() == [False, True, True, True]
    dropper = Rule("probs", ("water", "cargo"), confidence_below=0.9, drop_class=("water",))
    d = dropper.evaluate([[0.6, 0.4], [0.3, 0.7], [0.05, 0.95]])
    assert d.dropped.tolist() == [True, False, False]  # drop_class is checked first
    assert d.escalate.tolist() == [False, True, False]
    score = Rule("score", ("vessel",), score_above=0.3)
    assert score.evaluate(np.array([0.1, 0.5])).escalate.tolist() == [False, True]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
_KEYS = st.sampled_from(["format", "version", "name", "stages", "id", "model", "sha256", "placement", "tier",
                         "nodes", "inputs", "outputs", "rule", "labels", "output", "class_in", "drop_class",
                         "confidence_below", "score_above", "budget", "priority", "next", "max_batch", "shape",
                         "datatype"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_json)
def test_fuzz_any_json(workdir: Path, value: Any) -> None:
    try:
        parse_pipeline(value, workdir / "pipelines")
    except PipelineError as exc:
        assert exc.problems and all(p.message for p in exc.problems)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_bundled_pipeline(workdir: Path, data: st.DataObject) -> None:
    doc = json.loads(PIPELINE.read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(doc)[1:]
        where = data.draw(st.sampled_from(paths))
        parent: Any = doc
        for part in where[:-1]:
            parent = parent[part]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[where[-1]] = data.draw(_json)
        elif action == "delete":
            del parent[where[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(_KEYS)] = data.draw(_json)
    try:
        p = parse_pipeline(doc, workdir / "pipelines")
    except PipelineError as exc:
        assert exc.problems and all(p.message for p in exc.problems)
    else:
        assert p.chain()[0].id == p.stages[0].id


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_fuzz_text(text: str | bytes) -> None:
    try:
        loads_pipeline(text)
    except PipelineError as exc:
        assert exc.problems


def _endpoint_doc(doc: dict[str, Any], tls: dict[str, str] | None = None) -> dict[str, Any]:
    """ship-finder (version 2) with its heavy stage served by an engine."""
    doc["version"] = 2
    heavy = doc["stages"][2]
    del heavy["model"], heavy["sha256"]
    heavy["endpoint"] = {"address": "127.0.0.1:8001", "model": "heavy", **({"tls": tls} if tls else {})}
    return doc


def test_an_endpoint_stage_loads_saves_and_round_trips(workdir: Path, doc: dict[str, Any]) -> None:
    (workdir / "pipelines" / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    p = _load(workdir, _endpoint_doc(doc, {"ca": "ca.pem"}))
    heavy = p.stage("heavy")
    assert heavy.endpoint is not None and heavy.endpoint.address == "127.0.0.1:8001"
    assert heavy.model == heavy.sha256 == "" and heavy.model_path is None and not heavy.endpoint.plaintext
    assert heavy.endpoint.ca_pem.startswith(b"-----BEGIN") and p.version == 2
    out = workdir / "pipelines" / "saved.pipeline.json"
    save_pipeline(p, out)
    saved = json.loads(out.read_text())
    assert saved["stages"][2]["endpoint"] == {"address": "127.0.0.1:8001", "model": "heavy", "tls": {"ca": "ca.pem"}}
    assert "model" not in saved["stages"][2] and load_pipeline(out).to_dict() == p.to_dict()
    # Without labels the rule defaults to the engine's first output, and is not written back.
    fresh = _endpoint_doc(json.loads(PIPELINE.read_text()))
    del fresh["stages"][2]["rule"]
    bare = _load(workdir, fresh).stage("heavy")
    assert bare.rule.output == "probs" and bare.rule.labels == () and bare.endpoint.plaintext  # type: ignore[union-attr]


@pytest.mark.parametrize(("change", "where", "message"), [
    (_set("version", 1), "stages[2].endpoint", "endpoint stages need format version 2"),
    (_set("stages[2].model", "../models/heavy.onnx"), "stages[2].model", "an endpoint stage has no model"),
    (_set("stages[2].placement", {"nodes": ["n1"]}), "stages[2].placement", "is placed on a tier"),
    (_set("stages[2].rule.confidence_below", 0.5), "stages[2].rule", "ends the chain"),
    (_set("stages[2].endpoint.address", "no-port"), "stages[2].endpoint.address", "HOST:PORT"),
    (_set("stages[2].endpoint.tls", {"ca": "missing.pem"}), "stages[2].endpoint.tls.ca", "no such file"),
    (_set("stages[2].endpoint.tls", {"ca": "x.pem", "cert": "x.pem"}), "stages[2].endpoint.tls",
     "both cert and key"),
    (_set("stages[2].next", "detector"), "stages[2].next", "cannot escalate to another stage"),
])
def test_an_endpoint_stage_that_cannot_work_is_refused_in_words(workdir: Path, doc: dict[str, Any], change: Any,
                                                                 where: str, message: str) -> None:
    (workdir / "pipelines" / "x.pem").write_bytes(b"pem")
    d = _endpoint_doc(doc)
    change(d)
    with pytest.raises(PipelineError) as refused:
        _load(workdir, d)
    assert any(p.where == where and message in p.message for p in refused.value.problems), refused.value.problems


def test_an_endpoint_stage_must_end_the_chain(workdir: Path, doc: dict[str, Any]) -> None:
    d = _endpoint_doc(doc)
    d["stages"][1], d["stages"][2] = d["stages"][2], d["stages"][1]  # the engine in the middle
    with pytest.raises(PipelineError) as refused:
        _load(workdir, d)
    assert any("must end the chain" in p.message for p in refused.value.problems), refused.value.problems


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_endpoint_pipeline(workdir: Path, data: st.DataObject) -> None:
    doc = _endpoint_doc(json.loads(PIPELINE.read_text()))
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc)[1:] if p[:2] == ("stages", 2)] or _paths(doc)[1:]
        where = data.draw(st.sampled_from(paths))
        parent: Any = doc
        for part in where[:-1]:
            parent = parent[part]
        if data.draw(st.booleans()):
            parent[where[-1]] = data.draw(_json)
        else:
            del parent[where[-1]]
    try:
        p = parse_pipeline(doc, workdir / "pipelines")
    except PipelineError as exc:
        assert exc.problems and all(p.message for p in exc.problems)
    else:
        assert p.chain()[-1].id == p.stages[-1].id
