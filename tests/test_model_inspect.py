"""The rule a dropped model starts with, on real models built here: skl2onnx classifiers and hand-written graphs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from app._document import PipelineDocument, stage_from_card
from app._fit import read_model_card
from app._model_inspect import DEFAULT_CONFIDENCE, has_zipmap, inspect_file, rule_scores, without_zipmap
from app.pipeline_file import Placement

RNG = np.random.default_rng(11)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    x = RNG.random((240, 8)).astype(np.float32)
    y = (x[:, :4].sum(axis=1) * 2).astype(np.int64) % 4     # four classes, learnable
    return x, y


def _skl(model: object, x: np.ndarray, path: Path, zipmap: bool) -> Path:
    from skl2onnx import to_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        options = None if zipmap else {id(model): {"zipmap": False}}
        onx = to_onnx(model, x[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    path.write_bytes(onx.SerializeToString())
    return path


def _fit(kind: str, labels: str) -> tuple[object, np.ndarray, np.ndarray]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    x, y = _digits()
    target = np.array([f"k{v}" for v in y]) if labels == "str" else y
    model = LogisticRegression(max_iter=300) if kind == "logreg" else MLPClassifier((16,), max_iter=400,
                                                                                      random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, target)  # type: ignore[attr-defined]
    return model, x, target


def _deployable(path: Path) -> PipelineDocument:
    """The dropped model as the first of two stages (device → cloud): the document must validate as it stands."""
    card = read_model_card(path)
    doc = PipelineDocument()
    doc.insert(0, stage_from_card(card, "small", Placement(tier="device")), card)
    doc.insert(1, stage_from_card(card, "big", Placement(tier="cloud")), card)
    return doc


def _outputs(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


@pytest.mark.parametrize(("kind", "labels"), [("logreg", "str"), ("logreg", "int"), ("mlp", "int"), ("mlp", "str")])
def test_skl2onnx_classifier_rule_is_on_probabilities_with_the_models_labels(tmp_path: Path, kind: str,
                                                                             labels: str) -> None:
    model, x, _target = _fit(kind, labels)
    path = _skl(model, x, tmp_path / f"{kind}-{labels}.onnx", zipmap=False)
    hint = inspect_file(path)
    # never the label tensor (output 0): the [N, C] probabilities
    assert hint.output == "probabilities" and hint.scores == "probabilities"
    classes = [str(c) for c in model.classes_]  # type: ignore[attr-defined]
    assert list(hint.labels) == classes, hint.labels_from
    assert hint.source == "default" and hint.confidence_below == DEFAULT_CONFIDENCE and not hint.problems
    doc = _deployable(path)
    assert doc.problems() == []
    rule = doc.stage("small").rule
    assert rule.output == "probabilities" and rule.confidence_below == DEFAULT_CONFIDENCE
    # the rule's top class is the classifier's own answer, row for row
    out = _outputs(path, {"X": x})
    decided = np.array(rule.labels)[rule.evaluate(out["probabilities"]).top_class]
    expected = np.array([str(v) for v in out["label"]])
    assert (decided == expected).all()
    assert (expected == np.array([str(v) for v in model.predict(x)])).mean() > 0.99  # type: ignore[attr-defined]


def test_zipmap_classifier_is_said_in_words_and_a_copy_without_it_serves(tmp_path: Path) -> None:
    model, x, _ = _fit("logreg", "int")
    path = _skl(model, x, tmp_path / "zipped.onnx", zipmap=True)
    hint = inspect_file(path)
    assert hint.problems and "zipmap=False" in hint.problems[0] and "sequence" in hint.problems[0]
    assert has_zipmap(onnx.load(str(path)))
    card = read_model_card(path)
    assert [t.name for t in card.outputs] == ["output_label"], "the ZipMap output is not declared as a tensor"
    copy = without_zipmap(path, tmp_path / "unzipped.onnx")
    fixed = inspect_file(copy)
    assert fixed.output == "probabilities" and not fixed.problems
    assert list(fixed.labels) == [str(c) for c in model.classes_]  # type: ignore[attr-defined]
    assert _deployable(copy).problems() == []
    maps = _outputs(path, {"X": x})["output_probability"]
    plain = _outputs(copy, {"X": x})["probabilities"]
    assert plain.shape == (len(x), 4)
    for row, m in zip(plain, maps, strict=True):
        assert np.allclose(row, [m[c] for c in sorted(m)], atol=1e-6)


def _save(graph: onnx.GraphProto, path: Path, metadata: dict[str, str] | None = None) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (metadata or {}).items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def _weights(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def test_logits_output_with_labels_in_metadata(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["logits"])],
        "logits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], [_weights("w", (4, 3)),
                                                                                   _weights("b", (3,))])
    path = _save(graph, tmp_path / "logits.onnx", {"labels": json.dumps(["cat", "dog", "eel"])})
    hint = inspect_file(path)
    assert (hint.output, hint.scores, hint.labels) == ("logits", "logits", ("cat", "dog", "eel"))
    assert "metadata" in hint.labels_from
    assert rule_scores(hint.rule()) in ("logits", "probabilities")  # 'logits' once the file format carries it
    assert _deployable(path).problems() == []


def test_two_inputs_and_a_label_output_first(tmp_path: Path) -> None:
    nodes = [helper.make_node("Concat", ["a", "b"], ["ab"], axis=1), helper.make_node("MatMul", ["ab", "w"], ["h"]),
             helper.make_node("Softmax", ["h"], ["probs"], axis=1),
             helper.make_node("ArgMax", ["probs"], ["label"], axis=1, keepdims=0)]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2]),
                                             helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
                               helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 5])],
                              [_weights("w", (4, 5))])
    path = _save(graph, tmp_path / "two.onnx", {"classes": "a,b,c,d,e"})
    hint = inspect_file(path)
    assert (hint.output, hint.scores, hint.labels) == ("probs", "probabilities", ("a", "b", "c", "d", "e"))
    doc = _deployable(path)
    assert doc.problems() == []
    assert [t.name for t in doc.stage("small").inputs] == ["a", "b"]


def test_uint8_input_single_score_gets_a_score_rule(tmp_path: Path) -> None:
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["xf", "w"], ["h"]), helper.make_node("Sigmoid", ["h"], ["score"])]
    graph = helper.make_graph(nodes, "u8", [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", 6])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
                              [_weights("w", (6, 1))])
    path = _save(graph, tmp_path / "u8.onnx")
    hint = inspect_file(path)
    assert (hint.output, hint.scores, hint.labels, hint.score_above, hint.confidence_below) == (
        "score", "raw", ("score",), 0.5, None)
    doc = _deployable(path)
    assert doc.problems() == []
    assert doc.stage("small").inputs[0].datatype == "UINT8"


def test_model_card_rule_and_classes_win_over_the_default(tmp_path: Path) -> None:
    from resources import models

    bundled = Path(models.__file__).parent / "detector.onnx"
    hint = inspect_file(bundled)
    assert hint.source == "card" and hint.labels == ("water", "vessel")
    assert hint.class_in == ("vessel",) and hint.confidence_below == pytest.approx(0.95)
    assert "rule from the model card" in hint.words()
    # an unknown class in the card's rule is left out rather than making the stage undeployable
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Softmax", ["h"], ["p"], axis=1)]
    graph = helper.make_graph(nodes, "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 2])],
                              [_weights("w", (3, 2))])
    path = _save(graph, tmp_path / "carded.onnx")
    (tmp_path / "carded.card.json").write_text(json.dumps(
        {"classes": ["no", "yes"], "escalation_rule": {"class_in": ["yes", "maybe"], "confidence_below": 0.7}}))
    hint = inspect_file(path)
    assert (hint.source, hint.labels, hint.class_in, hint.confidence_below) == ("card", ("no", "yes"), ("yes",), 0.7)
    assert "model card" in hint.labels_from
    assert _deployable(path).problems() == []


def test_importing_a_zipmap_model_imports_a_copy_without_it(tmp_path: Path) -> None:
    from app._document import import_model_file

    model, x, _ = _fit("mlp", "str")
    path = _skl(model, x, tmp_path / "mlp.onnx", zipmap=True)
    card = import_model_file(path)
    assert card.path == tmp_path / "mlp.nozipmap.onnx" and card.suggestion is not None
    assert card.suggestion.output == "probabilities" and not card.suggestion.problems
    assert list(card.suggestion.labels) == [str(c) for c in model.classes_]  # type: ignore[attr-defined]
    plain = tmp_path / "plain.onnx"
    _skl(model, x, plain, zipmap=False)
    assert import_model_file(plain).path == plain, "a model without ZipMap is imported as it is"
