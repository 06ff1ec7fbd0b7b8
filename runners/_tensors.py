"""Open Inference Protocol v2 tensor codec: protobuf tensors <-> numpy arrays, with strict checks."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from runners._proto import grpc_predict_v2_pb2 as pb

__all__ = [
    "DATATYPES",
    "TensorError",
    "check_tensor",
    "concat_rows",
    "datatype_from_ort",
    "datatype_of",
    "decode_inputs",
    "decode_outputs",
    "encode_inputs",
    "encode_outputs",
    "format_shape",
    "nonfinite",
    "parse_request",
    "read_request",
    "request_bytes",
    "row_slice",
    "serialize_request",
]


class TensorError(ValueError):
    """Bad tensor in a request; the message names the tensor and what was expected."""


DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

# Which InferTensorContents field carries each datatype in typed form (FP16 has none: raw only).
_TYPED_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# The numpy type of each typed field as protobuf stores it (before narrowing to INT8 etc.).
_FIELD_DTYPE: dict[str, np.dtype] = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}

_ORT_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

_MAX_NDIM = 32  # numpy's floor across versions; deeper shapes are refused, not crashed on
_LEN = struct.Struct("<I")


def format_shape(shape: Iterable[int]) -> str:
    """Shape as the operator reads it in messages: `[1,3,64,64]`."""
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def _label(kind: str, name: str, index: int) -> str:
    return f"{kind} {name!r}" if name else f"{kind} #{index}"


def datatype_of(array: np.ndarray) -> str:
    """OIP datatype of a numpy array (object, bytes_ and str_ arrays are BYTES); TensorError if none fits."""
    return _datatype_of(np.asarray(array).dtype, "array")


def _datatype_of(dtype: np.dtype, label: str) -> str:
    kind, size = dtype.kind, dtype.itemsize
    if kind == "b":
        return "BOOL"
    if kind in "OSU":
        return "BYTES"
    if kind == "u" and size in (1, 2, 4, 8):
        return f"UINT{size * 8}"
    if kind == "i" and size in (1, 2, 4, 8):
        return f"INT{size * 8}"
    if kind == "f" and size in (2, 4, 8):
        return f"FP{size * 8}"
    raise TensorError(f"{label}: numpy dtype {dtype} has no Open Inference Protocol datatype")


def datatype_from_ort(ort_type: str) -> str:
    """OIP datatype of an onnxruntime type string ("tensor(float)" -> "FP32"); TensorError if unsupported."""
    try:
        return _ORT_TYPES[ort_type]
    except KeyError:
        raise TensorError(f"onnxruntime type {ort_type!r} has no Open Inference Protocol datatype") from None


def _checked_shape(label: str, shape: Sequence[int], max_elements: int) -> tuple[tuple[int, ...], int]:
    dims = tuple(int(d) for d in shape)
    if len(dims) > _MAX_NDIM:
        raise TensorError(f"{label}: shape has {len(dims)} dimensions, at most {_MAX_NDIM} are allowed")
    if any(d < 0 for d in dims):
        raise TensorError(f"{label}: shape {format_shape(dims)} has a negative dimension")
    # Zero dims are ignored in the bound too, so that numpy never sees a shape it cannot allocate.
    nominal = 1
    for d in dims:
        nominal *= max(d, 1)
        if nominal > max_elements:
            raise TensorError(
                f"{label}: shape {format_shape(dims)} is too large (more than {max_elements} elements)"
            )
    return dims, math.prod(dims)


def _decode_bytes_raw(label: str, raw: bytes | memoryview, count: int) -> np.ndarray:
    data = raw if isinstance(raw, bytes) else bytes(raw)
    size = len(data)
    if count * _LEN.size > size:
        raise TensorError(
            f"{label}: BYTES raw contents of {size} bytes cannot hold {count} elements "
            f"(4-byte length prefix each)"
        )
    items: list[bytes] = []
    unpack, pos = _LEN.unpack_from, 0
    for i in range(count):
        if pos + 4 > size:
            raise TensorError(f"{label}: BYTES element {i} length prefix runs past the end of the contents")
        (length,) = unpack(data, pos)
        pos += 4
        if pos + length > size:
            raise TensorError(f"{label}: BYTES element {i} claims {length} bytes but only {size - pos} remain")
        items.append(data[pos:pos + length])
        pos += length
    if pos != size:
        raise TensorError(f"{label}: BYTES raw contents has {size - pos} trailing bytes after {count} elements")
    out = np.empty(count, dtype=object)
    out[:] = items
    return out


def _decode_raw(label: str, datatype: str, dims: tuple[int, ...], count: int,
                raw: bytes | memoryview) -> np.ndarray:
    if datatype == "BYTES":
        return _decode_bytes_raw(label, raw, count).reshape(dims)
    dtype = DATATYPES[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise TensorError(
            f"{label}: expected {expected} bytes for {datatype} {format_shape(dims)}, got {len(raw)}"
        )
    if datatype == "BOOL":
        # Any non-zero byte is true; copying through != 0 also keeps numpy from holding odd bool bytes.
        return (np.frombuffer(raw, dtype=np.uint8) != 0).reshape(dims)
    wire = dtype.newbyteorder("<")
    # A read-only view of the message's bytes: no copy on little-endian hosts (batches are large).
    return np.frombuffer(raw, dtype=wire).astype(dtype, copy=False).reshape(dims)


def _typed_fields(contents: pb.InferTensorContents) -> list[str]:
    return [field.name for field, _ in contents.ListFields()]


def _decode_typed(
    label: str, datatype: str, dims: tuple[int, ...], count: int, contents: pb.InferTensorContents
) -> np.ndarray:
    if datatype == "FP16":
        raise TensorError(f"{label}: FP16 travels only in raw contents, typed contents cannot carry it")
    field = _TYPED_FIELD[datatype]
    others = [f for f in _typed_fields(contents) if f != field]
    if others:
        raise TensorError(f"{label}: {datatype} is carried in {field}, got {', '.join(others)}")
    values = getattr(contents, field)
    if len(values) != count:
        raise TensorError(
            f"{label}: expected {count} elements in {field} for {datatype} {format_shape(dims)}, "
            f"got {len(values)}"
        )
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        for i, item in enumerate(values):
            out[i] = bytes(item)
        return out.reshape(dims)
    wide = np.array(values, dtype=_FIELD_DTYPE[field]).reshape(count)
    dtype = DATATYPES[datatype]
    if wide.dtype != dtype:
        info = np.iinfo(dtype)
        if count and (int(wide.min()) < info.min or int(wide.max()) > info.max):
            raise TensorError(
                f"{label}: {field} holds values outside the {datatype} range [{info.min},{info.max}]"
            )
        wide = wide.astype(dtype)
    return np.ascontiguousarray(wide).reshape(dims)


def _decode_tensors(
    kind: str,
    tensors: Sequence[Any],
    raw_contents: Sequence[bytes | memoryview],
    max_elements: int,
) -> dict[str, np.ndarray]:
    if raw_contents and len(raw_contents) != len(tensors):
        raise TensorError(
            f"{kind}s: expected {len(tensors)} raw contents entries (one per {kind}, in order), "
            f"got {len(raw_contents)}"
        )
    result: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        name = tensor.name
        label = _label(kind, name, index)
        if not name:
            raise TensorError(f"{label}: tensor has no name")
        if name in result:
            raise TensorError(f"{label}: name appears more than once")
        datatype = tensor.datatype
        if datatype not in DATATYPES:
            known = ", ".join(DATATYPES)
            raise TensorError(f"{label}: unknown datatype {datatype!r} (expected one of {known})")
        dims, count = _checked_shape(label, tensor.shape, max_elements)
        if raw_contents:
            typed = _typed_fields(tensor.contents)
            if typed:
                fields = ", ".join(typed)
                raise TensorError(f"{label}: both raw contents and typed contents ({fields}) are set")
            array = _decode_raw(label, datatype, dims, count, raw_contents[index])
        else:
            array = _decode_typed(label, datatype, dims, count, tensor.contents)
        result[name] = array
    return result


def decode_inputs(request: pb.ModelInferRequest | ReceivedRequest,
                  max_elements: int = 1 << 28) -> dict[str, np.ndarray]:
    """Input tensors of a request by name (raw ones as read-only views, no copy); TensorError if malformed."""
    return _decode_tensors("input", request.inputs, request.raw_input_contents, max_elements)


def decode_outputs(response: pb.ModelInferResponse, max_elements: int = 1 << 28) -> dict[str, np.ndarray]:
    """Output tensors of a ModelInferResponse (raw or typed) by name; TensorError if malformed."""
    return _decode_tensors("output", response.outputs, response.raw_output_contents, max_elements)


def _bytes_element(label: str, item: object) -> bytes:
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    if isinstance(item, str):
        return item.encode("utf-8")
    raise TensorError(f"{label}: BYTES element of type {type(item).__name__} is neither bytes nor str")


def _encode_raw(label: str, array: np.ndarray) -> tuple[str, bytes]:
    datatype = _datatype_of(array.dtype, label)
    if datatype == "BYTES":
        parts: list[bytes] = []
        for item in array.reshape(-1):
            data = _bytes_element(label, item)
            parts.append(_LEN.pack(len(data)))
            parts.append(data)
        return datatype, b"".join(parts)
    wire = DATATYPES[datatype].newbyteorder("<")
    return datatype, np.ascontiguousarray(array, dtype=wire).tobytes()


def encode_outputs(response: pb.ModelInferResponse, outputs: Sequence[tuple[str, Any]]) -> None:
    """Append each (name, array) to the response as an output tensor with raw contents.

    A value with `table` and `index` (runners._rules.IndexedBytes) is a BYTES tensor encoded from its table:
    each distinct string is length-prefixed once and the rows are joined in C, with no object per row."""
    for index, (name, value) in enumerate(outputs):
        if hasattr(value, "table") and hasattr(value, "index"):
            prefixed = np.array([len(b).to_bytes(4, "little") + b for b in (t.encode() for t in value.table)]
                                or [b""], dtype=object)
            response.outputs.add(name=name, datatype="BYTES", shape=[len(value.index)])
            response.raw_output_contents.append(b"".join(prefixed[value.index].tolist()))
            continue
        array = np.asarray(value)
        datatype, raw = _encode_raw(_label("output", name, index), array)
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(raw)


def encode_inputs(request: pb.ModelInferRequest, inputs: Sequence[tuple[str, np.ndarray]]) -> None:
    """Append each (name, array) to the request as an input tensor with raw contents (client side)."""
    for index, (name, value) in enumerate(inputs):
        array = np.asarray(value)
        datatype, raw = _encode_raw(_label("input", name, index), array)
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(raw)


def check_tensor(
    name: str, array: np.ndarray, datatype: str, shape: Sequence[int | str | None], kind: str = "input"
) -> None:
    """Raise TensorError unless array has the datatype and shape a model declares (-1/None/str = any)."""
    label = f"{kind} {name!r}"
    expected = [d if isinstance(d, int) and d >= 0 else -1 for d in shape]
    got_type = _datatype_of(array.dtype, label)
    fits = got_type == datatype and len(array.shape) == len(expected)
    fits = fits and all(e == -1 or e == g for e, g in zip(expected, array.shape, strict=False))
    if not fits:
        raise TensorError(
            f"{label}: expected {datatype} {format_shape(expected)}, "
            f"got {got_type} {format_shape(array.shape)}"
        )


def nonfinite(array: np.ndarray) -> bool:
    """True when a floating-point array holds NaN or infinity (such inputs are answered but flagged)."""
    return array.dtype.kind == "f" and not bool(np.isfinite(array).all())


def row_slice(
    tensors: Mapping[str, np.ndarray], rows: slice | Sequence[int] | np.ndarray
) -> dict[str, np.ndarray]:
    """The given rows (first axis) of every tensor in a batch, as new C-contiguous arrays."""
    return {name: np.ascontiguousarray(array[rows]) for name, array in tensors.items()}


def concat_rows(batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack batches with the same tensor names along the first axis (the inverse of row_slice)."""
    if not batches:
        return {}
    names = list(batches[0])
    for batch in batches[1:]:
        if set(batch) != set(names):
            raise TensorError(f"batch tensors {sorted(batch)} differ from {sorted(names)}")
    return {name: np.concatenate([batch[name] for batch in batches], axis=0) for name in names}


# -- the request's payloads on the wire, copied once ---------------------------------------------------------
# A batch of 32 image rows is a 512 KiB message. Through protobuf it was copied four times on the sending side
# (tobytes, into the message, into the serialized string, into gRPC's buffer) and twice more on the receiving
# side (into the parsed message, out of it as bytes): about 300 µs of CPU per such message, a third of what
# gRPC costs for it (bench/cascade.py, "gRPC floor"). The wire format makes this simple (protobuf encoding
# spec): a message's fields may come in any order and a repeated field's entries are appended one by one, so
# `raw_input_contents` (field 7, bytes) can be written after the rest of the request and read back as views
# into the received message.
_RAW_INPUT_FIELD = 7
_RAW_INPUT_TAG = bytes([_RAW_INPUT_FIELD << 3 | 2])  # field 7, wire type 2 (length-delimited)
# Fields walked in Python at most; a message with more (thousands of outputs, or hostile padding) goes to protobuf's
# parser, which is fast at that, so that no message can keep the event loop busy walking it.
_MAX_FIELDS_WALKED = 1024


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def request_bytes(request: pb.ModelInferRequest, inputs: Sequence[tuple[str, np.ndarray]]) -> bytes:
    """The serialized request with `inputs` appended as input tensors with raw contents (what encode_inputs and
    SerializeToString give, byte for byte), each payload copied once."""
    parts: list[Any] = []
    for index, (name, value) in enumerate(inputs):
        array = np.asarray(value)
        label = _label("input", name, index)
        datatype = _datatype_of(array.dtype, label)
        if datatype == "BYTES":
            payload: Any = _encode_raw(label, array)[1]
        else:
            payload = np.ascontiguousarray(array, dtype=DATATYPES[datatype].newbyteorder("<")).reshape(-1)
            payload = memoryview(payload).cast("B")
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        parts += [_RAW_INPUT_TAG, _varint(len(payload)), payload]
    if request.raw_input_contents:
        raise TensorError("request_bytes: the request already carries raw input contents")
    return b"".join([request.SerializeToString(), *parts])


def serialize_request(request: pb.ModelInferRequest | bytes) -> bytes:
    """gRPC request serializer for ModelInfer/StreamInfer: a request_bytes() result as it is, a message serialized."""
    return request if isinstance(request, bytes) else request.SerializeToString()


class ReceivedRequest:
    """A ModelInferRequest as received: every field parsed except `raw_input_contents`, which are read-only views
    into the received bytes (no copy). Reads like the message (attributes are the message's)."""

    __slots__ = ("message", "raw_input_contents")

    def __init__(self, message: pb.ModelInferRequest, raw_input_contents: list[memoryview]) -> None:
        self.message = message
        self.raw_input_contents = raw_input_contents

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message, name)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]  # IndexError past the end: the caller falls back to protobuf's parser
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def parse_request(data: bytes) -> ReceivedRequest | pb.ModelInferRequest:
    """gRPC request deserializer for ModelInfer/StreamInfer: the request with its raw input contents left in `data`.

    Only the top level is walked here; anything unusual (a wire type protobuf has retired, a truncated field, more
    than _MAX_FIELDS_WALKED fields) is handed to protobuf's own parser, which gives its usual error for a malformed
    message."""
    raw: list[memoryview] = []
    keep: list[tuple[int, int]] = []
    view = memoryview(data)
    pos, end = 0, len(data)
    try:
        while pos < end:
            if len(keep) + len(raw) >= _MAX_FIELDS_WALKED:
                raise ValueError("more top-level fields than a request has")
            start = pos
            key, pos = _read_varint(data, pos)
            wire_type = key & 7
            if wire_type == 2:
                length, pos = _read_varint(data, pos)
                if pos + length > end:
                    raise ValueError("truncated")
                if key >> 3 == _RAW_INPUT_FIELD:
                    raw.append(view[pos:pos + length])
                else:
                    keep.append((start, pos + length))
                pos += length
                continue
            if wire_type == 0:
                _, pos = _read_varint(data, pos)
            elif wire_type in (1, 5):
                pos += 8 if wire_type == 1 else 4
            else:
                raise ValueError("unsupported wire type")
            if pos > end:
                raise ValueError("truncated")
            keep.append((start, pos))
    except (ValueError, IndexError):
        return pb.ModelInferRequest.FromString(data)
    if not raw:
        return pb.ModelInferRequest.FromString(data)
    merged: list[tuple[int, int]] = []
    for start, stop in keep:  # adjacent spans (all of the header, usually) in one slice
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    header = b"".join(data[a:b] for a, b in merged)
    return ReceivedRequest(pb.ModelInferRequest.FromString(header), raw)


class UnreadableRequest:
    """A message that is not a ModelInferRequest; `reason` is what protobuf's parser said. The handler refuses it
    with INVALID_ARGUMENT (on a stream, that message only: the stream goes on)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def read_request(data: bytes) -> ReceivedRequest | pb.ModelInferRequest | UnreadableRequest:
    """The servers' deserializer: parse_request, or UnreadableRequest for bytes that do not parse (gRPC itself
    would end the call, and on StreamInfer the whole stream, with INTERNAL or UNKNOWN and no reason)."""
    try:
        return parse_request(data)
    except DecodeError as exc:
        return UnreadableRequest(f"the message is not a ModelInferRequest ({len(data)} bytes): {exc}")
