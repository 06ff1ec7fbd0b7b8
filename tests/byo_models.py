"""Operator-style models built at test time: scikit-learn classifiers on the 8×8 digits set, via skl2onnx.

These are the models an operator brings (not the bundled ship-finder stages): a small probability
classifier for the device, a bigger one for the cloud, exported the way skl2onnx exports by default
(ZipMap on) or with `zipmap=False` (a plain FP32 [N, C] probability tensor).
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

DIGITS = [str(d) for d in range(10)]


@cache
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) of sklearn's bundled digits set, FP32 features scaled to 0..1."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    return x[:1200], y[:1200], x[1200:], y[1200:]


def export(model: Any, path: Path, *, zipmap: bool = False, features: int = 64) -> Path:
    """Write a fitted scikit-learn classifier as ONNX (input `X` FP32 [N, features])."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(model): {"zipmap": zipmap}}
    onx = to_onnx(model, initial_types=[("X", FloatTensorType([None, features]))], options=options,
                  target_opset={"": 17, "ai.onnx.ml": 3})
    path.write_bytes(onx.SerializeToString())
    return path


def small_classifier(path: Path, *, seed: int = 0, zipmap: bool = False) -> Path:
    """Logistic regression on the first 300 training rows: the cheap device stage."""
    from sklearn.linear_model import LogisticRegression

    x, y, _, _ = digits()
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(x), 300, replace=False)
    return export(LogisticRegression(max_iter=1000, C=20.0).fit(x[pick], y[pick]), path, zipmap=zipmap)


def big_classifier(path: Path, *, seed: int = 0, hidden: int = 48, zipmap: bool = False) -> Path:
    """A one-hidden-layer MLP on all training rows: the heavy cloud stage."""
    from sklearn.neural_network import MLPClassifier

    x, y, _, _ = digits()
    model = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=400, random_state=seed).fit(x, y)
    return export(model, path, zipmap=zipmap)


def probabilities(path: Path, x: np.ndarray) -> np.ndarray:
    """The model's `probabilities` output computed by onnxruntime directly: the reference."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["probabilities"], {"X": x})[0])


def stage_entry(stage_id: str, model: Path, rule: dict[str, Any], placement: dict[str, Any],
                classes: int = 10) -> dict[str, Any]:
    """One stage of a pipeline file for a zipmap=False skl2onnx classifier."""
    return {
        "id": stage_id,
        "model": model.name,
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "placement": placement,
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]}],
        "rule": rule,
        "budget": {"max_escalations_per_s": 0, "priority": "normal"},
    }


def write_pipeline(folder: Path, stages: list[dict[str, Any]], name: str = "digits") -> Path:
    """A pipeline file in `folder` (next to its models)."""
    doc = {"format": "tierdeck.pipeline", "version": 1, "name": name, "stages": stages}
    target = folder / f"{name}.pipeline.json"
    target.write_text(json.dumps(doc, indent=2))
    return target


# ----- hand-written graphs (onnx.helper) for the shapes skl2onnx does not make -------------------------------

def _linear_weights(seed: int, features: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Weights of a multinomial logistic regression on the digits set (fitted with scikit-learn)."""
    from sklearn.linear_model import LogisticRegression

    x, y, _, _ = digits()
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(x), 400 if seed else len(x), replace=False)
    model = LogisticRegression(max_iter=1000, C=5.0).fit(x[pick][:, :features], y[pick])
    return model.coef_.T.astype(np.float32), model.intercept_.astype(np.float32)


def graph_model(path: Path, kind: str, seed: int) -> Path:
    """A digits classifier as a raw ONNX graph. kind: `logits` (no softmax: scores, not probabilities),
    `two_inputs` (inputs `a` and `b`, 32 features each, softmax output `probs`), `uint8` (input `img`
    UINT8 [N, 64] of 0..16 pixel values, softmax output `probs`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = _linear_weights(seed)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    if kind == "logits":
        nodes = [helper.make_node("MatMul", ["X", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["logits"])]
        inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 64])]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])]
    elif kind == "two_inputs":
        nodes = [helper.make_node("Concat", ["a", "b"], ["X"], axis=1),
                 helper.make_node("MatMul", ["X", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["logits"]),
                 helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
        inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 32]) for n in ("a", "b")]
        outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])]
    elif kind == "uint8":
        inits.append(numpy_helper.from_array(np.array(1 / 16, np.float32), "scale"))
        nodes = [helper.make_node("Cast", ["img"], ["f"], to=TensorProto.FLOAT),
                 helper.make_node("Mul", ["f", "scale"], ["X"]),
                 helper.make_node("MatMul", ["X", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["logits"]),
                 helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
        inputs = [helper.make_tensor_value_info("img", TensorProto.UINT8, ["N", 64])]
        outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])]
    else:
        raise ValueError(kind)
    graph = helper.make_graph(nodes, kind, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def run_model(path: Path, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
    """One output of a model computed by onnxruntime directly."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run([output], feeds)[0])
