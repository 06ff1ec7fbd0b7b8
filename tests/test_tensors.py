"""The OIP v2 tensor codec: round trips for every datatype, every malformed-request rule, fuzzing."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runners._proto import grpc_predict_v2_pb2 as pb
from runners._tensors import (
    DATATYPES,
    TensorError,
    check_tensor,
    concat_rows,
    datatype_from_ort,
    datatype_of,
    decode_inputs,
    decode_outputs,
    encode_inputs,
    encode_outputs,
    nonfinite,
    parse_request,
    request_bytes,
    row_slice,
    serialize_request,
)

NUMERIC = [dt for dt in DATATYPES if dt != "BYTES"]


def _wire(message: pb.ModelInferRequest | pb.ModelInferResponse) -> bytes:
    return message.SerializeToString()


def _request(*inputs: tuple[str, np.ndarray]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    encode_inputs(request, list(inputs))
    return pb.ModelInferRequest.FromString(_wire(request))


def _assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype.kind in "OSU":
        assert got.dtype == np.dtype(object)
        assert [bytes(x) for x in got.reshape(-1)] == [
            x.encode() if isinstance(x, str) else bytes(x) for x in want.reshape(-1)
        ]
    else:
        assert got.dtype == want.dtype.newbyteorder("=")
        assert np.array_equal(got, want, equal_nan=want.dtype.kind == "f")
    assert got.flags.c_contiguous


def _arrays(datatype: str) -> st.SearchStrategy[np.ndarray]:
    shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
    if datatype == "BYTES":
        return shapes.flatmap(
            lambda shape: st.lists(
                st.binary(max_size=12), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))
            ).map(lambda items, shape=shape: _object_array(items, shape))
        )
    return hnp.arrays(DATATYPES[datatype], shapes)


def _object_array(items: list[bytes], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


# ---------------------------------------------------------------------------------------------- datatypes


def test_datatype_table_is_the_protocol_one() -> None:
    assert set(DATATYPES) == {
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
        "FP16", "FP32", "FP64", "BYTES",
    }
    assert DATATYPES["FP16"] == np.float16 and DATATYPES["BYTES"] == np.dtype(object)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_datatype_of_inverts_the_table(datatype: str) -> None:
    assert datatype_of(np.zeros(2, dtype=DATATYPES[datatype])) == datatype
    assert datatype_of(np.zeros(2, dtype=DATATYPES[datatype].newbyteorder(">"))) == datatype


def test_datatype_of_strings_and_unsupported() -> None:
    assert datatype_of(np.array([b"a"])) == "BYTES"
    assert datatype_of(np.array(["a"])) == "BYTES"
    assert datatype_of(np.array([b"a"], dtype=object)) == "BYTES"
    with pytest.raises(TensorError, match="complex128"):
        datatype_of(np.zeros(1, dtype=np.complex128))


def test_datatype_from_ort() -> None:
    assert datatype_from_ort("tensor(float)") == "FP32"
    assert datatype_from_ort("tensor(float16)") == "FP16"
    assert datatype_from_ort("tensor(double)") == "FP64"
    assert datatype_from_ort("tensor(string)") == "BYTES"
    assert datatype_from_ort("tensor(bool)") == "BOOL"
    for bits in (8, 16, 32, 64):
        assert datatype_from_ort(f"tensor(int{bits})") == f"INT{bits}"
        assert datatype_from_ort(f"tensor(uint{bits})") == f"UINT{bits}"
    with pytest.raises(TensorError, match="bfloat16"):
        datatype_from_ort("tensor(bfloat16)")


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("datatype", list(DATATYPES))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_inputs_round_trip(datatype: str, data: st.DataObject) -> None:
    a = data.draw(_arrays(datatype))
    b = data.draw(_arrays(datatype))
    decoded = decode_inputs(_request(("a", a), ("b", b)))
    assert list(decoded) == ["a", "b"]
    _assert_same(decoded["a"], a)
    _assert_same(decoded["b"], b)


@pytest.mark.parametrize("datatype", list(DATATYPES))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_outputs_round_trip(datatype: str, data: st.DataObject) -> None:
    a = data.draw(_arrays(datatype))
    response = pb.ModelInferResponse(model_name="m")
    encode_outputs(response, [("probs", a)])
    response = pb.ModelInferResponse.FromString(_wire(response))
    assert response.outputs[0].datatype == datatype
    assert list(response.outputs[0].shape) == list(a.shape)
    assert len(response.raw_output_contents) == 1
    assert not response.outputs[0].HasField("contents")
    _assert_same(decode_outputs(response)["probs"], a)


def test_bytes_with_empty_strings_and_str_elements() -> None:
    a = _object_array([b"", b"x", b"", b"\x00\xff" * 300], (2, 2))
    decoded = decode_inputs(_request(("s", a)))["s"]
    assert decoded.tolist() == [[b"", b"x"], [b"", b"\x00\xff" * 300]]
    # onnxruntime hands string outputs back as object arrays of str: they travel as UTF-8.
    response = pb.ModelInferResponse()
    encode_outputs(response, [("label", np.array(["ship", "", "Ærø"], dtype=object))])
    assert response.raw_output_contents[0] == b"\x04\x00\x00\x00ship\x00\x00\x00\x00\x05\x00\x00\x00\xc3\x86r\xc3\xb8"
    assert decode_outputs(response)["label"].tolist() == [b"ship", b"", "Ærø".encode()]


def test_fp16_round_trip_keeps_specials() -> None:
    a = np.array([0.0, -0.0, 1.5, np.inf, -np.inf, np.nan, 65504.0, 6e-8], dtype=np.float16)
    got = decode_inputs(_request(("h", a)))["h"]
    assert got.dtype == np.float16
    assert got.tobytes() == a.tobytes()


def test_raw_is_little_endian_whatever_the_array() -> None:
    big = np.array([1, 2], dtype=">i4")
    request = _request(("x", big))
    assert request.raw_input_contents[0] == b"\x01\x00\x00\x00\x02\x00\x00\x00"
    assert decode_inputs(request)["x"].tolist() == [1, 2]


def test_non_contiguous_arrays_encode_row_major() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4).T
    got = decode_inputs(_request(("t", a)))["t"]
    assert np.array_equal(got, a) and got.flags.c_contiguous


def test_raw_bool_nonzero_bytes_are_true() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="b", datatype="BOOL", shape=[3])
    request.raw_input_contents.append(b"\x00\x01\x07")
    got = decode_inputs(request)["b"]
    assert got.tolist() == [False, True, True]
    assert got.view(np.uint8).tolist() == [0, 1, 1]  # canonical bools, so sums and byte compares hold


def test_decoded_raw_arrays_are_read_only_views() -> None:
    # No copy of large batches: the array views the message's bytes, and nobody can write through it.
    request = _request(("x", np.zeros((2, 2), dtype=np.float32)))
    got = decode_inputs(request)["x"]
    assert not got.flags.writeable
    with pytest.raises(ValueError):
        got[0, 0] = 5.0


# ---------------------------------------------------------------------------------------------- typed contents


TYPED_CASES = [
    ("BOOL", "bool_contents", [True, False, True, True]),
    ("INT8", "int_contents", [-128, 0, 5, 127]),
    ("INT16", "int_contents", [-32768, 1, 2, 32767]),
    ("INT32", "int_contents", [-(2**31), 0, 1, 2**31 - 1]),
    ("INT64", "int64_contents", [-(2**63), 0, 1, 2**63 - 1]),
    ("UINT8", "uint_contents", [0, 1, 2, 255]),
    ("UINT16", "uint_contents", [0, 1, 2, 65535]),
    ("UINT32", "uint_contents", [0, 1, 2, 2**32 - 1]),
    ("UINT64", "uint64_contents", [0, 1, 2, 2**64 - 1]),
    ("FP32", "fp32_contents", [0.5, -1.25, 3.0, float("inf")]),
    ("FP64", "fp64_contents", [0.1, -1e300, 3.0, 2.0]),
    ("BYTES", "bytes_contents", [b"", b"a", b"bc", b"\x00"]),
]


@pytest.mark.parametrize(("datatype", "field", "values"), TYPED_CASES)
def test_typed_contents_decode(datatype: str, field: str, values: list[object]) -> None:
    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[2, 2])
    getattr(tensor.contents, field).extend(values)
    got = decode_inputs(pb.ModelInferRequest.FromString(_wire(request)))["x"]
    assert got.shape == (2, 2) and got.dtype == DATATYPES[datatype]
    assert got.reshape(-1).tolist() == values
    assert got.flags.writeable and got.flags.c_contiguous


@pytest.mark.parametrize(("datatype", "field", "values"), TYPED_CASES)
def test_typed_contents_count_mismatch(datatype: str, field: str, values: list[object]) -> None:
    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[5])
    getattr(tensor.contents, field).extend(values)
    with pytest.raises(TensorError, match=rf"^input 'x': expected 5 elements in {field} for {datatype} \[5\], got 4$"):
        decode_inputs(request)


def test_typed_fp16_is_refused() -> None:
    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="h", datatype="FP16", shape=[1])
    tensor.contents.fp32_contents.append(1.0)
    with pytest.raises(TensorError, match=r"^input 'h': FP16 travels only in raw contents"):
        decode_inputs(request)


def test_typed_wrong_field_is_refused() -> None:
    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1])
    tensor.contents.int_contents.append(1)
    with pytest.raises(TensorError, match=r"^input 'x': FP32 is carried in fp32_contents, got int_contents$"):
        decode_inputs(request)


@pytest.mark.parametrize(("datatype", "value"), [("INT8", 128), ("INT16", -32769), ("UINT8", 256), ("UINT16", 70000)])
def test_typed_values_out_of_range(datatype: str, value: int) -> None:
    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[2])
    field = "uint_contents" if datatype.startswith("U") else "int_contents"
    getattr(tensor.contents, field).extend([0, value])
    with pytest.raises(TensorError, match=rf"^input 'x': {field} holds values outside the {datatype} range"):
        decode_inputs(request)


def test_missing_contents_is_a_count_mismatch() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    with pytest.raises(TensorError, match=r"^input 'x': expected 3 elements in fp32_contents"):
        decode_inputs(request)


def test_zero_element_tensors_need_no_contents() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP32", shape=[0, 3])
    assert decode_inputs(request)["x"].shape == (0, 3)


# ---------------------------------------------------------------------------------------------- bad requests


def test_byte_count_message_names_tensor_and_expectation() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 64, 64])
    request.raw_input_contents.append(b"\x00" * 100)
    with pytest.raises(TensorError) as caught:
        decode_inputs(request)
    assert str(caught.value) == "input 'image': expected 16384 bytes for FP32 [1,1,64,64], got 100"


def test_raw_and_typed_together() -> None:
    request = _request(("x", np.zeros(2, dtype=np.float32)))
    request.inputs[0].contents.fp32_contents.extend([0.0, 0.0])
    with pytest.raises(TensorError, match=r"^input 'x': both raw contents and typed contents \(fp32_contents\)"):
        decode_inputs(request)


def test_raw_entries_must_match_inputs() -> None:
    request = _request(("a", np.zeros(1, np.int8)), ("b", np.zeros(1, np.int8)))
    del request.raw_input_contents[1]
    with pytest.raises(TensorError, match=r"^inputs: expected 2 raw contents entries .*, got 1$"):
        decode_inputs(request)
    request = _request(("a", np.zeros(1, np.int8)))
    request.raw_input_contents.append(b"\x00")
    with pytest.raises(TensorError, match=r"got 2$"):
        decode_inputs(request)


def test_unknown_datatype() -> None:
    request = _request(("x", np.zeros(1, np.float32)))
    request.inputs[0].datatype = "fp32"
    with pytest.raises(TensorError, match=r"^input 'x': unknown datatype 'fp32'"):
        decode_inputs(request)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([1, -1, 3], "negative dimension"),
        ([2**28 + 1], "too large"),
        ([2**16, 2**16], "too large"),
        ([0, 2**40], "too large"),
        ([2**62, 2**62, 4], "too large"),
        ([1] * 33, "33 dimensions"),
    ],
)
def test_bad_shapes(shape: list[int], message: str) -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP32", shape=shape)
    request.raw_input_contents.append(b"")
    with pytest.raises(TensorError, match=rf"^input 'x': .*{message}"):
        decode_inputs(request)


def test_max_elements_is_a_parameter() -> None:
    request = _request(("x", np.zeros(100, dtype=np.uint8)))
    assert decode_inputs(request, max_elements=100)["x"].size == 100
    with pytest.raises(TensorError, match="too large"):
        decode_inputs(request, max_elements=99)


def test_duplicate_and_empty_names() -> None:
    request = _request(("x", np.zeros(1, np.int8)), ("x", np.zeros(1, np.int8)))
    with pytest.raises(TensorError, match=r"^input 'x': name appears more than once$"):
        decode_inputs(request)
    request = _request(("", np.zeros(1, np.int8)))
    with pytest.raises(TensorError, match=r"^input #0: tensor has no name$"):
        decode_inputs(request)


def _bytes_request(raw: bytes, count: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest()
    request.inputs.add(name="s", datatype="BYTES", shape=[count])
    request.raw_input_contents.append(raw)
    return request


def test_bytes_length_prefix_past_the_buffer() -> None:
    raw = struct.pack("<I", 3) + b"ab"
    with pytest.raises(TensorError, match=r"^input 's': BYTES element 0 claims 3 bytes but only 2 remain$"):
        decode_inputs(_bytes_request(raw, 1))
    raw = struct.pack("<I", 2**32 - 1) + b"ab" + struct.pack("<I", 0)
    with pytest.raises(TensorError, match=r"^input 's': BYTES element 0 claims 4294967295 bytes"):
        decode_inputs(_bytes_request(raw, 2))


def test_bytes_prefix_cut_short_and_trailing_garbage() -> None:
    raw = struct.pack("<I", 1) + b"a" + b"\x00\x00\x00"
    with pytest.raises(TensorError, match=r"^input 's': BYTES element 1 length prefix runs past"):
        decode_inputs(_bytes_request(raw, 2))
    raw += b"\x00\x00"
    with pytest.raises(TensorError, match=r"^input 's': BYTES raw contents has 5 trailing bytes after 1 elements$"):
        decode_inputs(_bytes_request(raw, 1))


def test_bytes_element_count_bounded_by_buffer_before_allocating() -> None:
    with pytest.raises(TensorError, match=r"^input 's': BYTES raw contents of 8 bytes cannot hold 100000000"):
        decode_inputs(_bytes_request(b"\x00" * 8, 100_000_000))


def test_encode_refuses_what_has_no_datatype() -> None:
    with pytest.raises(TensorError, match=r"^output 'z': numpy dtype complex64"):
        encode_outputs(pb.ModelInferResponse(), [("z", np.zeros(1, np.complex64))])
    with pytest.raises(TensorError, match=r"^input 'o': BYTES element of type int"):
        encode_inputs(pb.ModelInferRequest(), [("o", np.array([b"a", 3], dtype=object))])


# ---------------------------------------------------------------------------------------------- helpers


def test_check_tensor() -> None:
    check_tensor("image", np.zeros((4, 1, 64, 64), np.float32), "FP32", [-1, 1, 64, 64])
    check_tensor("image", np.zeros((4, 1, 64, 64), np.float32), "FP32", ["batch", 1, None, 64])
    with pytest.raises(TensorError) as caught:
        check_tensor("image", np.zeros((4, 1, 32, 32), np.float32), "FP32", [-1, 1, 64, 64])
    assert str(caught.value) == "input 'image': expected FP32 [-1,1,64,64], got FP32 [4,1,32,32]"
    with pytest.raises(TensorError, match=r"expected FP32 \[-1,3\], got FP64 \[2,3\]"):
        check_tensor("image", np.zeros((2, 3)), "FP32", [-1, 3])
    with pytest.raises(TensorError, match=r"got FP32 \[6\]"):
        check_tensor("image", np.zeros(6, np.float32), "FP32", [-1, 3])


def test_nonfinite() -> None:
    assert not nonfinite(np.zeros(3, np.float32))
    assert nonfinite(np.array([1.0, np.nan], np.float16))
    assert nonfinite(np.array([np.inf]))
    assert not nonfinite(np.array([1, 2], np.int64))


def test_row_slice_and_concat() -> None:
    batch = {"a": np.arange(12).reshape(4, 3), "b": np.arange(4)}
    picked = row_slice(batch, [1, 3])
    assert picked["a"].tolist() == [[3, 4, 5], [9, 10, 11]] and picked["b"].tolist() == [1, 3]
    assert row_slice(batch, slice(0, 1))["b"].tolist() == [0]
    joined = concat_rows([row_slice(batch, [0, 1]), row_slice(batch, [2, 3])])
    assert all(np.array_equal(joined[k], batch[k]) for k in batch)
    assert concat_rows([]) == {}
    with pytest.raises(TensorError):
        concat_rows([{"a": batch["a"]}, {"b": batch["b"]}])


# ---------------------------------------------------------------------------------------------- fuzzing

_FIELDS = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=6),
}
_TYPED_FIELD = {datatype: field for datatype, field, _ in TYPED_CASES}


def _rarely(draw: st.DrawFn) -> bool:
    return draw(st.integers(0, 9)) == 0


def _typed_for(draw: st.DrawFn, datatype: str, count: int) -> pb.InferTensorContents:
    """Mostly the right field with the right count, sometimes other fields or other counts."""
    contents = pb.InferTensorContents()
    field = _TYPED_FIELD.get(datatype)
    if field is None or _rarely(draw):
        field = draw(st.sampled_from(sorted(_FIELDS)))
    n = count if count <= 64 and not _rarely(draw) else draw(st.integers(0, 6))
    getattr(contents, field).extend(draw(st.lists(_FIELDS[field], min_size=n, max_size=n)))
    if _rarely(draw):
        other = draw(st.sampled_from(sorted(_FIELDS)))
        getattr(contents, other).extend(draw(st.lists(_FIELDS[other], max_size=3)))
    return contents


def _raw_for(draw: st.DrawFn, datatype: str, shape: list[int]) -> bytes:
    """Mostly well-formed raw bytes for the tensor, sometimes arbitrary or cut ones."""
    count = math.prod(shape)
    if _rarely(draw) or datatype not in DATATYPES or any(d < 0 for d in shape) or count > 64:
        return draw(st.binary(max_size=64))
    if datatype == "BYTES":
        items = draw(st.lists(st.binary(max_size=5), min_size=count, max_size=count))
        raw = b"".join(struct.pack("<I", len(x)) + x for x in items)
    else:
        size = count * DATATYPES[datatype].itemsize
        raw = draw(st.binary(min_size=size, max_size=size))
    if _rarely(draw) and raw:
        cut = draw(st.integers(0, len(raw) - 1))
        raw = raw[:cut] + raw[cut + 1 :]
    if _rarely(draw):
        raw += draw(st.binary(min_size=1, max_size=4))
    return raw


@st.composite
def _requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """ModelInferRequests near the valid ones: each input breaks a rule only now and then."""
    request = pb.ModelInferRequest(model_name="m")
    use_raw = draw(st.booleans())
    described = []
    for index in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(["", "in0", "x"])) if _rarely(draw) else f"in{index}"
        datatype = draw(st.sampled_from(["", "fp32", "BF16", "STRING"])) if _rarely(draw) else draw(
            st.sampled_from(sorted(DATATYPES))
        )
        dims = st.integers(-(2**63), 2**63 - 1) if _rarely(draw) else st.integers(-1 if _rarely(draw) else 0, 4)
        shape = draw(st.lists(dims, max_size=4))
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if not use_raw or _rarely(draw):
            count = math.prod(shape) if all(d >= 0 for d in shape) else 1
            tensor.contents.CopyFrom(_typed_for(draw, datatype, count))
        described.append((datatype, shape))
    if use_raw:
        for datatype, shape in described:
            request.raw_input_contents.append(_raw_for(draw, datatype, shape))
        if _rarely(draw):
            request.raw_input_contents.append(draw(st.binary(max_size=8)))
    return request


def _decode_or_tensor_error(request: pb.ModelInferRequest) -> dict[str, np.ndarray] | None:
    try:
        result = decode_inputs(request, max_elements=1 << 20)
    except TensorError as exc:
        assert str(exc).startswith(("input ", "inputs: ")), str(exc)
        return None
    for tensor in request.inputs:
        array = result[tensor.name]
        assert array.shape == tuple(tensor.shape)
        assert array.dtype == DATATYPES[tensor.datatype]
        assert array.flags.c_contiguous
    return result


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests())
def test_fuzz_structured_requests(request: pb.ModelInferRequest) -> None:
    _same_decoding(_decode_or_tensor_error(request), parse_request(request.SerializeToString()))


def _same_decoding(expected: dict[str, np.ndarray] | None, received: object) -> None:
    """What a request parsed by parse_request decodes to is what the protobuf message decodes to."""
    try:
        got = decode_inputs(received, max_elements=1 << 20)  # type: ignore[arg-type]
    except TensorError:
        assert expected is None
        return
    assert expected is not None and list(got) == list(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape
        assert np.array_equal(got[name], array, equal_nan=array.dtype.kind == "f")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    try:
        request = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        with pytest.raises(DecodeError):
            parse_request(data)
        return
    _same_decoding(_decode_or_tensor_error(request), parse_request(data))


_VALID = _wire(_request(
    ("image", np.arange(6, dtype=np.float32).reshape(1, 2, 3)),
    ("tags", np.array([b"ship", b""], dtype=object)),
    ("mask", np.array([True, False])),
))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_fuzz_mutated_valid_request(flips: list[tuple[int, int]]) -> None:
    data = bytearray(_VALID)
    for position, value in flips:
        data[position] = value
    try:
        request = pb.ModelInferRequest.FromString(bytes(data))
    except DecodeError:
        return
    _decode_or_tensor_error(request)


def test_fuzz_baseline_decodes() -> None:
    decoded = decode_inputs(pb.ModelInferRequest.FromString(_VALID))
    assert decoded["image"].shape == (1, 2, 3) and decoded["tags"].tolist() == [b"ship", b""]


# -- payloads on the wire (request_bytes / parse_request) -----------------------------------------------------
WIRE_INPUTS = [
    ("image", np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)),
    ("mask", np.array([[True, False], [False, True]])),
    ("names", np.array([b"cargo", b"tanker"], dtype=object)),
    ("half", np.ones((2, 2), np.float16)),
    ("count", np.array(7, np.int64)),
    ("empty", np.zeros((0, 3), np.int32)),
]


def _wire_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="classifier", model_version="3", id="req-1")
    request.parameters["tierdeck.row_ids"].string_param = "a:0+2"
    request.outputs.add(name="decision_label")
    return request


def test_request_bytes_are_what_protobuf_would_send() -> None:
    by_protobuf = _wire_request()
    encode_inputs(by_protobuf, WIRE_INPUTS)
    assert request_bytes(_wire_request(), WIRE_INPUTS) == by_protobuf.SerializeToString()
    assert serialize_request(by_protobuf) == by_protobuf.SerializeToString()
    assert serialize_request(b"as it is") == b"as it is"
    with pytest.raises(TensorError, match="already carries raw input contents"):
        request_bytes(by_protobuf, WIRE_INPUTS)


def test_a_received_request_reads_like_the_message_and_its_inputs_stay_in_the_received_bytes() -> None:
    data = request_bytes(_wire_request(), WIRE_INPUTS)
    received = parse_request(data)
    assert not isinstance(received, pb.ModelInferRequest)  # raw contents were found and left in place
    full = pb.ModelInferRequest.FromString(data)
    assert (received.model_name, received.model_version, received.id) == ("classifier", "3", "req-1")
    assert received.parameters["tierdeck.row_ids"].string_param == "a:0+2"
    assert [o.name for o in received.outputs] == ["decision_label"]
    assert [bytes(r) for r in received.raw_input_contents] == list(full.raw_input_contents)
    decoded = decode_inputs(received)
    for name, array in WIRE_INPUTS:
        assert decoded[name].dtype == array.dtype and decoded[name].shape == array.shape
        assert np.array_equal(decoded[name], array)
    wire = np.frombuffer(data, np.uint8)
    assert np.shares_memory(decoded["image"], wire)  # a view of the message, not a copy
    assert not decoded["image"].flags.writeable


def test_raw_contents_are_found_wherever_the_sender_put_them() -> None:
    """Protobuf allows any field order: raw contents first, interleaved, or split around the tensors."""
    canonical = request_bytes(_wire_request(), WIRE_INPUTS[:2])
    full = pb.ModelInferRequest.FromString(canonical)
    raws = [b"\x3a" + bytes([len(r)]) + r for r in full.raw_input_contents]  # each under 128 bytes
    header = pb.ModelInferRequest()
    header.CopyFrom(full)
    del header.raw_input_contents[:]
    head = header.SerializeToString()
    for data in (raws[0] + raws[1] + head, raws[0] + head + raws[1]):
        received = parse_request(data)
        assert received.model_name == "classifier"
        assert [bytes(r) for r in received.raw_input_contents] == list(full.raw_input_contents)
        assert np.array_equal(decode_inputs(received)["image"], WIRE_INPUTS[0][1])


def test_requests_without_raw_contents_or_malformed_go_through_protobuf() -> None:
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="x", datatype="INT32", shape=[2]).contents.int_contents.extend([1, 2])
    parsed = parse_request(typed.SerializeToString())
    assert isinstance(parsed, pb.ModelInferRequest)
    assert list(decode_inputs(parsed)["x"]) == [1, 2]
    many = _wire_request()
    for k in range(3000):  # more fields than are walked in Python: protobuf parses it all
        many.outputs.add(name=f"out{k}")
    parsed = parse_request(request_bytes(many, WIRE_INPUTS[:1]))
    assert isinstance(parsed, pb.ModelInferRequest) and len(parsed.outputs) == 3001
    assert np.array_equal(decode_inputs(parsed)["image"], WIRE_INPUTS[0][1])
    data = request_bytes(_wire_request(), WIRE_INPUTS[:1])
    for broken in (data[:-5], data[:3] + b"\xff" * 12, b"\x0b\x00"):  # truncated, endless varint, a group
        with pytest.raises(DecodeError):
            parse_request(broken)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays=st.lists(hnp.arrays(st.sampled_from([np.float32, np.int64, np.uint8, np.bool_]),
                                  hnp.array_shapes(min_dims=0, max_dims=3, max_side=40)), min_size=1, max_size=3))
def test_any_inputs_survive_request_bytes_and_parse_request(arrays: list[np.ndarray]) -> None:
    inputs = [(f"in{i}", a) for i, a in enumerate(arrays)]
    by_protobuf = pb.ModelInferRequest(model_name="m", id="x")
    encode_inputs(by_protobuf, inputs)
    data = request_bytes(pb.ModelInferRequest(model_name="m", id="x"), inputs)
    assert data == by_protobuf.SerializeToString()
    decoded = decode_inputs(parse_request(data))
    for name, array in inputs:
        assert decoded[name].tobytes() == array.tobytes() and decoded[name].shape == array.shape
