"""The protocol's facts, each defined once: tiers, stage counters, tensor datatypes.

    from runners.protocol import DATATYPES, STAGE_COUNTERS, TIERS

The stage counters are read from the control-plane descriptor (`StageTelemetry` in
resources/proto/tierdeck_control.proto): every integer field named `*_total`. A counter added there
reaches the agent's stats, its Prometheus families, the console's records, database and export without
another list to edit. The datatypes are those the agent's tensor codec can carry (runners/_tensors.py).
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor

from discovery import TIERS
from runners._proto import tierdeck_control_pb2 as ctl
from runners._tensors import DATATYPES as _CODEC

STAGE_COUNTERS: tuple[str, ...] = tuple(
    f.name for f in ctl.StageTelemetry.DESCRIPTOR.fields
    if f.name.endswith("_total") and f.type in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_INT64)
)
DATATYPES: tuple[str, ...] = tuple(_CODEC)

# ONNX TensorProto element types -> OIP datatype names (BF16 is named here but not in DATATYPES: the codec refuses it).
ONNX_DATATYPES: dict[int, str] = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "BYTES", 9: "BOOL",
    10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64", 16: "BF16",
}

__all__ = ["DATATYPES", "ONNX_DATATYPES", "STAGE_COUNTERS", "TIERS"]
