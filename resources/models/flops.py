"""Count the floating-point operations of one input row through an ONNX graph (no torch needed).

Convention (stated in every model card): a multiply-accumulate is 2 FLOPs (Conv, Gemm, MatMul),
a bias add is 1 per output element, an element-wise op (Relu, Add, Sub, Mul, Div, Clip, …) is 1 per
output element, pooling is one op per window element per output element, a reduction is one op
per input element, BatchNormalization 2 per element, Softmax 3 per element (exp, sum, divide).
Shape-only ops (Reshape, Flatten, Concat, Transpose, Identity, Shape, …) are free.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import onnx
from onnx import shape_inference

_ELEMENTWISE = {"Relu", "Add", "Sub", "Mul", "Div", "Clip", "Sigmoid", "LeakyRelu", "Max", "Min",
                "Neg", "Abs", "Sqrt", "Exp", "Log", "Tanh", "Pow"}
_FREE = {"Reshape", "Flatten", "Concat", "Transpose", "Identity", "Shape", "Gather", "Unsqueeze",
         "Squeeze", "Constant", "Cast", "Slice", "Split", "Expand", "ConstantOfShape"}
_REDUCE = {"ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin", "GlobalAveragePool", "GlobalMaxPool"}


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Static shapes of every value for a batch of one (the batch dim is pinned to 1)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    inferred = shape_inference.infer_shapes(model, strict_mode=True)
    shapes: dict[str, list[int]] = {}
    for value in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        shapes[value.name] = [d.dim_value for d in value.type.tensor_type.shape.dim]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def node_flops(model: onnx.ModelProto) -> list[tuple[str, str, int]]:
    """(node name, op type, FLOPs) for every node, for one input row."""
    shapes = _shapes(model)
    rows: list[tuple[str, str, int]] = []
    for node in model.graph.node:
        op = node.op_type
        out = shapes.get(node.output[0], [])
        n_out = math.prod(out) if out else 0
        if op == "Conv":
            w = shapes[node.input[1]]
            macs = n_out * math.prod(w[1:])  # each output: C_in/group × kH × kW MACs
            flops = 2 * macs + (n_out if len(node.input) > 2 and node.input[2] else 0)
        elif op in ("Gemm", "MatMul"):
            a = shapes[node.input[0]]
            k = a[-1]
            if op == "Gemm" and int(_attr(node, "transA", 0)):
                k = a[-2]
            flops = 2 * n_out * k + (n_out if op == "Gemm" and len(node.input) > 2 else 0)
        elif op in ("AveragePool", "MaxPool"):
            kernel = _attr(node, "kernel_shape", [])
            flops = n_out * math.prod(kernel)
        elif op in _REDUCE:
            flops = math.prod(shapes[node.input[0]])
        elif op == "BatchNormalization":
            flops = 2 * n_out
        elif op == "Softmax":
            flops = 3 * n_out
        elif op in _ELEMENTWISE:
            flops = n_out
        elif op in _FREE:
            flops = 0
        else:
            raise ValueError(f"no FLOP rule for op {op!r} (node {node.name!r})")
        rows.append((node.name, op, int(flops)))
    return rows


def count_flops(path: Path | str) -> int:
    """Total FLOPs for one input row of the ONNX model at `path`."""
    return sum(f for _, _, f in node_flops(onnx.load(str(path))))


def count_parameters(path: Path | str) -> int:
    """Number of scalar weights stored in the model's initializers."""
    model = onnx.load(str(path))
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    return sum(math.prod(init.dims) for init in model.graph.initializer if init.data_type in floats)
