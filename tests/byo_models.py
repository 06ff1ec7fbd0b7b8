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
