"""Real ONNX files built for the tests with onnx.helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def classifier(path: Path, weights: np.ndarray, bias: np.ndarray | None = None, input_name: str = "x",
               output_name: str = "probs") -> Path:
    """softmax(x @ W + b): input FP32 [-1, F], output FP32 [-1, C]."""
    features, classes = weights.shape
    bias = np.zeros(classes, np.float32) if bias is None else bias
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [input_name, "W"], ["logits0"]),
            helper.make_node("Add", ["logits0", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [output_name], axis=-1),
        ],
        "classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(weights.astype(np.float32), "W"),
                     numpy_helper.from_array(bias.astype(np.float32), "B")],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def softmax(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """What classifier() computes, in numpy."""
    logits = x.astype(np.float64) @ weights.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


ALL_TYPES = {
    "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def identity_all_types(path: Path) -> Path:
    """One Identity per OIP datatype: input in_<DT> -> output out_<DT>, shape [-1, 3]."""
    nodes, inputs, outputs = [], [], []
    for name, proto_type in ALL_TYPES.items():
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
        inputs.append(helper.make_tensor_value_info(f"in_{name}", proto_type, ["n", 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", proto_type, ["n", 3]))
    graph = helper.make_graph(nodes, "identity_all", inputs, outputs)
    return _save(helper.make_model(graph, opset_imports=OPSET), path)
