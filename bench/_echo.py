"""The gRPC transport floor: a StreamInfer server that runs nothing and answers every message at once with the
decision tensors an agent would send for its rows. What the same messages cost through it (its CPU and the
client's) is what Python gRPC costs with no tierdeck code at all: bench/cascade.py subtracts it, with the
models' own compute, from each system's CPU per input to show what is left.

    python -m bench._echo        (prints {"address": ...} on its first line, serves until killed)
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator

import grpc
import numpy as np

from runners._forward import CHANNEL_OPTIONS
from runners._proto import grpc_predict_v2_pb2 as pb
from runners._stream import STREAM_METHOD
from runners._tensors import ReceivedRequest, encode_outputs, parse_request


def answer(rows: int) -> pb.StreamInferResponse:
    """The message an agent answers `rows` rows with (label, stage, final, confidence), built once per size."""
    response = pb.ModelInferResponse(model_name="echo", model_version="1")
    encode_outputs(response, [("decision_label", np.array([b"cargo"] * rows, dtype=object)),
                              ("decision_stage", np.array([b"classifier"] * rows, dtype=object)),
                              ("decision_final", np.ones(rows, bool)),
                              ("decision_confidence", np.full(rows, 0.9, np.float32))])
    return pb.StreamInferResponse(infer_response=response)


async def serve() -> None:
    """Answer StreamInfer messages on 127.0.0.1 until killed."""
    answers: dict[int, pb.StreamInferResponse] = {}

    async def stream(requests: AsyncIterator[pb.ModelInferRequest | ReceivedRequest],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StreamInferResponse]:
        async for request in requests:
            rows = int(request.inputs[0].shape[0]) if request.inputs and request.inputs[0].shape else 1
            if rows not in answers:
                answers[rows] = answer(rows)
            yield answers[rows]

    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    service, method = STREAM_METHOD.strip("/").split("/")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {
        method: grpc.stream_stream_rpc_method_handler(stream, parse_request,
                                                      pb.StreamInferResponse.SerializeToString)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"address": f"127.0.0.1:{port}"}), flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    from runners.agent import _limit_malloc_arenas

    _limit_malloc_arenas()  # the agents' glibc thresholds: the same allocator behaviour as theirs
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        sys.exit(0)
