"""StreamInfer: ModelInfer exchanges on one long-lived gRPC stream, a message per batch instead of a call.

Why: gRPC Python's per-call machinery (call object, metadata, deadline, HTTP/2 stream set-up and flow-control
window per call) costs about twice what a message on an open stream costs, and between tiers it was the
largest part of the agent's own time (bench/agent_overhead.py, bench/cascade.py).

Contract (resources/proto/grpc_predict_v2.proto): every request on the stream gets exactly one
StreamInferResponse, in request order; a request ModelInfer would have refused is answered with that status
in the message (error_code, error_message) and the stream goes on. The server runs the messages of one stream
concurrently (the stage's dynamic batcher may put them in one onnxruntime call) and answers in order.

The client end (StreamLink) matches answers to requests by order, so any doubt about that order (a timeout, a
broken stream, an answer too many) ends the stream: every request still waiting fails with a status the
forwarder already handles for ModelInfer (its rows are queued and re-sent under the same row ids, which the
next hop answers from its exactly-once memory). Before its first stream the link asks ServerMetadata whether the
server lists the `tierdeck_stream_infer` extension; one without it (an engine, an older agent) gets ModelInfer.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from runners._proto import grpc_predict_v2_pb2 as pb
from runners._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from runners._tensors import ReceivedRequest, UnreadableRequest, read_request, serialize_request

log = logging.getLogger("tierdeck.stream")

STREAM_METHOD = "/inference.GRPCInferenceService/StreamInfer"
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
STREAM_EXTENSION = "tierdeck_stream_infer"  # in ServerMetadata.extensions of a server that has StreamInfer
MAX_IN_FLIGHT = 64  # messages of one stream being answered at once; the reader waits beyond that

Request = pb.ModelInferRequest | ReceivedRequest | UnreadableRequest  # as the server reads it (read_request)
InferFn = Callable[[Request, Any], Awaitable[pb.ModelInferResponse]]
OutgoingRequest = pb.ModelInferRequest | bytes  # bytes: runners._tensors.request_bytes()


def add_inference_service(servicer: pb_grpc.GRPCInferenceServiceServicer, server: grpc.aio.Server) -> None:
    """Serve GRPCInferenceService as the generated code does, except that ModelInfer and StreamInfer requests are
    read with runners._tensors.read_request (their input payloads stay in the received bytes; a message that does
    not parse reaches the handler as UnreadableRequest)."""

    class _Handlers:  # receives the generated handler table instead of a server
        def __init__(self) -> None:
            self.table: dict[str, grpc.RpcMethodHandler] = {}

        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            pass

        def add_registered_method_handlers(self, service: str, table: dict[str, grpc.RpcMethodHandler]) -> None:
            self.table = dict(table)

    generated = _Handlers()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, generated)
    table = generated.table
    table["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
        servicer.ModelInfer, request_deserializer=read_request,
        response_serializer=table["ModelInfer"].response_serializer)
    table["StreamInfer"] = grpc.stream_stream_rpc_method_handler(
        servicer.StreamInfer, request_deserializer=read_request,
        response_serializer=table["StreamInfer"].response_serializer)
    service = "inference.GRPCInferenceService"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, table),))
    server.add_registered_method_handlers(service, table)


def model_infer(channel: grpc.aio.Channel) -> Any:
    """ModelInfer on `channel`, taking a message or request_bytes() (the generated stub takes messages only)."""
    return channel.unary_unary(INFER_METHOD, request_serializer=serialize_request,
                               response_deserializer=pb.ModelInferResponse.FromString)


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _MessageContext:
    """What a unary ModelInfer handler needs from its context, for one message of a stream: the stream's peer
    and credentials, and abort() that ends this message (not the stream) with a status."""

    def __init__(self, stream: grpc.aio.ServicerContext) -> None:
        self._stream = stream

    def auth_context(self) -> Any:
        """The stream's authentication context (every message comes from the same verified peer)."""
        return self._stream.auth_context()

    def peer(self) -> str:
        """The stream's peer address."""
        return self._stream.peer()

    def invocation_metadata(self) -> Any:
        """The stream's metadata."""
        return self._stream.invocation_metadata()

    def set_trailing_metadata(self, metadata: Any) -> None:
        """Messages carry no trailers; ignored."""

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        """End this message with a status (raises; the stream handler turns it into an error answer)."""
        raise _Aborted(code, details)


def error_code(code: grpc.StatusCode) -> int:
    """The numeric value of a status code, as StreamInferResponse carries it."""
    return int(code.value[0])


_CODES = {error_code(c): c for c in grpc.StatusCode}


class StreamServer:
    """The server end: answers StreamInfer with a unary ModelInfer handler, per message, in order."""

    def __init__(self, infer: InferFn) -> None:
        self._infer = infer
        self._readers: set[asyncio.Task[None]] = set()
        self._closing = False

    def close(self) -> None:
        """Stop reading every open stream (the agent is stopping): answers in progress still go out, then each
        stream ends, so the server's grace period is not spent waiting on idle links."""
        self._closing = True
        for reader in list(self._readers):
            reader.cancel()

    async def serve(self, requests: AsyncIterator[Request],
                    context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StreamInferResponse]:
        """The StreamInfer handler (an async generator of answers)."""
        if self._closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the node is stopping")
        loop = asyncio.get_running_loop()
        message_context = _MessageContext(context)
        answers: asyncio.Queue[asyncio.Task[pb.StreamInferResponse] | None] = asyncio.Queue()
        room = asyncio.Semaphore(MAX_IN_FLIGHT)

        async def answer(request: Request) -> pb.StreamInferResponse:
            try:
                return pb.StreamInferResponse(infer_response=await self._infer(request, message_context))
            except _Aborted as exc:
                return pb.StreamInferResponse(error_code=error_code(exc.code), error_message=exc.details)
            except Exception as exc:  # one message's failure never ends the stream
                log.exception("StreamInfer: request %r failed", getattr(request, "id", "?"))
                return pb.StreamInferResponse(error_code=error_code(grpc.StatusCode.INTERNAL),
                                              error_message=f"{type(exc).__name__}: {exc}")

        async def read() -> None:
            try:
                async for request in requests:
                    answers.put_nowait(loop.create_task(answer(request)))
                    await room.acquire()
            finally:
                answers.put_nowait(None)

        reader = loop.create_task(read())
        self._readers.add(reader)
        try:
            while (task := await answers.get()) is not None:
                reply = await task
                room.release()
                yield reply
            if not reader.cancelled() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]
        finally:
            self._readers.discard(reader)
            reader.cancel()
            while not answers.empty():
                left = answers.get_nowait()
                if left is not None:
                    left.cancel()


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class StreamLink:
    """The client end: ModelInfer over one StreamInfer call (opened when first used, re-opened after a failure),
    or over ModelInfer itself where the server has no StreamInfer. Failures raise grpc.aio.AioRpcError, as
    ModelInfer would."""

    def __init__(self, stub: pb_grpc.GRPCInferenceServiceStub, channel: grpc.aio.Channel,
                 streaming: bool | None = None, target: str = "next hop") -> None:
        self._stub = stub
        self._channel = channel
        self._target = target
        # None: ask the server (ServerMetadata extensions) before the first exchange; False: ModelInfer only.
        self.streaming = streaming
        self._call: Any = None
        self._waiting: collections.deque[asyncio.Future[pb.StreamInferResponse]] = collections.deque()
        self._reader: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._model_infer = model_infer(channel)

    async def infer(self, request: OutgoingRequest, timeout: float) -> pb.ModelInferResponse:
        """One exchange; the answer, or AioRpcError with the status the server (or the link) ended it with."""
        if self.streaming is None:
            try:
                meta = await self._stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=timeout)
                self.streaming = STREAM_EXTENSION in meta.extensions
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise  # the server is not there: ask again next time
                self.streaming = False  # a bare OIP server (ModelInfer only)
            if not self.streaming:
                log.info("%s has no StreamInfer: using ModelInfer", self._target)
        if not self.streaming:
            return await self._model_infer(request, timeout=timeout)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[pb.StreamInferResponse] = loop.create_future()
        async with self._write_lock:
            if self._call is None:
                self._open()
            call = self._call
            self._waiting.append(future)
            try:
                await call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
                self._end(call, await _final_status(call, exc))
        try:
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            # The answer may still come; matched by order it would go to the next request: end the stream.
            self._end(call, _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded (stream)"))
            raise _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded (stream)") from None
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED and self.streaming:
                # Nothing ran there: the same request goes as a plain ModelInfer, and so will the next ones.
                self.streaming = False
                log.info("%s has no StreamInfer: using ModelInfer", self._target)
                return await self._model_infer(request, timeout=timeout)
            raise
        if reply.error_code:
            raise _rpc_error(_CODES.get(reply.error_code, grpc.StatusCode.UNKNOWN), reply.error_message)
        return reply.infer_response

    def _open(self) -> None:
        method = self._channel.stream_stream(STREAM_METHOD, request_serializer=serialize_request,
                                             response_deserializer=pb.StreamInferResponse.FromString)
        call = method()
        self._call = call
        self._reader = asyncio.get_running_loop().create_task(self._read(call))

    async def _read(self, call: Any) -> None:
        try:
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    self._end(call, _rpc_error(grpc.StatusCode.UNAVAILABLE, "the stream ended (next hop stopping)"))
                    return
                if not self._waiting or self._call is not call:
                    self._end(call, _rpc_error(grpc.StatusCode.INTERNAL, "an answer no request was waiting for"))
                    return
                future = self._waiting.popleft()
                if not future.done():
                    future.set_result(reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # AioRpcError (UNAVAILABLE, UNIMPLEMENTED, ...) or a broken call
            self._end(call, _as_rpc_error(exc))

    def _end(self, call: Any, error: grpc.aio.AioRpcError) -> None:
        """Forget this stream: every request still waiting on it fails with `error`; the next one opens anew."""
        if self._call is not call:
            return
        self._call = None
        waiting, self._waiting = self._waiting, collections.deque()
        for future in waiting:
            if not future.done():
                future.set_exception(error)
        call.cancel()
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()

    async def close(self) -> None:
        """End the stream (requests still waiting fail as UNAVAILABLE)."""
        if self._call is not None:
            self._end(self._call, _rpc_error(grpc.StatusCode.UNAVAILABLE, "link closed"))


async def _final_status(call: Any, exc: BaseException) -> grpc.aio.AioRpcError:
    """The status a stream really ended with: a write on a call the server already ended (UNIMPLEMENTED from a
    server without StreamInfer, say) only says "Internal error from Core"."""
    try:
        code = await asyncio.wait_for(call.code(), 2.0)
        details = await call.details()
    except Exception:  # the call did not end after all: keep what the write said
        return _as_rpc_error(exc)
    if code == grpc.StatusCode.OK:
        return _rpc_error(grpc.StatusCode.UNAVAILABLE, "the stream ended (next hop stopping)")
    return _rpc_error(code, details)


def _as_rpc_error(exc: BaseException) -> grpc.aio.AioRpcError:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc
    return _rpc_error(grpc.StatusCode.UNAVAILABLE, f"stream broken: {exc}")
