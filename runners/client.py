"""Client helpers for the node agent's two services, used by the console, the CLI, tests and benchmarks."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runners._forward import CHANNEL_OPTIONS
from runners._proto import grpc_predict_v2_pb2 as pb
from runners._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from runners._proto import tierdeck_control_pb2 as ctl
from runners._proto import tierdeck_control_pb2_grpc as ctl_grpc
from runners._stream import StreamLink, model_infer
from runners._tensors import decode_outputs, encode_inputs, request_bytes

CHUNK_BYTES = 1 << 20
FAILED_STEP_KEY = "tierdeck-failed-step"  # trailer of a Deploy refused with a status (RESOURCE_EXHAUSTED)


@dataclass(frozen=True)
class ClientTLS:
    """A fleet certificate to dial nodes with: the fleet CA, our key and certificate (PEM)."""

    ca_pem: bytes
    key_pem: bytes
    cert_pem: bytes

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials for mutual TLS."""
        return grpc.ssl_channel_credentials(self.ca_pem, self.key_pem, self.cert_pem)


def fetch_server_certificate(address: str, timeout: float = 5.0) -> bytes:
    """The PEM certificate a TLS server presents, unverified (to pin an unenrolled node's bootstrap cert)."""
    import socket
    import ssl

    host, _, port = address.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw, \
            context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ConnectionError(f"{address} presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode()


class DeployError(RuntimeError):
    """A node refused a deploy; `step` says where (receive, verify, validate, load, warmup, activate)."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message


@dataclass(frozen=True)
class InferResult:
    """Outputs of one ModelInfer call and its response parameters."""

    outputs: dict[str, np.ndarray]
    parameters: dict[str, bool | int | str | float]


def manifest_for(stage_id: str, model: bytes, version: str = "1", **fields: object) -> ctl.StageManifest:
    """A StageManifest for these model bytes (sha256 and size filled in); extra fields as keyword arguments."""
    manifest = ctl.StageManifest(stage_id=stage_id, version=version, sha256=hashlib.sha256(model).hexdigest(),
                                 size_bytes=len(model))
    for name, value in fields.items():
        field = getattr(manifest, name)
        if hasattr(field, "CopyFrom"):
            field.CopyFrom(value)
        elif isinstance(value, list | tuple):
            field.extend(value)
        else:
            setattr(manifest, name, value)
    return manifest


def deploy_requests(manifest: ctl.StageManifest, model: bytes, chunk: int = CHUNK_BYTES) -> Iterator[ctl.DeployRequest]:
    """The Deploy stream: the manifest, then the model in chunks."""
    yield ctl.DeployRequest(manifest=manifest)
    for offset in range(0, len(model), chunk):
        yield ctl.DeployRequest(chunk=model[offset:offset + chunk])


def infer_request(model: str, inputs: Mapping[str, np.ndarray] | Sequence[tuple[str, np.ndarray]],
                  outputs: Sequence[str] = (), request_id: str = "") -> pb.ModelInferRequest:
    """A ModelInferRequest with raw input contents."""
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    encode_inputs(request, list(inputs.items()) if isinstance(inputs, Mapping) else list(inputs))
    for name in outputs:
        request.outputs.add(name=name)
    return request


def infer_result(response: pb.ModelInferResponse) -> InferResult:
    """Decode a ModelInferResponse."""
    params: dict[str, bool | int | str | float] = {}
    for key, value in response.parameters.items():
        which = value.WhichOneof("parameter_choice")
        if which:
            params[key] = getattr(value, which)
    return InferResult(decode_outputs(response), params)


class NodeClient:
    """Async client of one node (control plane, data plane, health). Create inside the running loop."""

    def __init__(self, address: str, tls: ClientTLS | None = None, node_id: str = "",
                 options: Sequence[tuple[str, object]] = (), root_pem: bytes = b"", target_name: str = "",
                 external: bool = False) -> None:
        """Insecure unless `tls` (fleet mutual TLS; `node_id` pins the node) or `root_pem` (server-only TLS).

        `external`: an engine tierdeck does not run; `tls` then holds its CA (and a client certificate and key
        where it asks for one, else empty) and the engine's own host name is checked."""
        self.address = address
        all_options: list[tuple[str, object]] = [*CHANNEL_OPTIONS, *options]
        if external and tls is not None:
            credentials = grpc.ssl_channel_credentials(tls.ca_pem, tls.key_pem or None, tls.cert_pem or None)
            self.channel = grpc.aio.secure_channel(address, credentials, options=all_options)
        elif tls is not None or root_pem:
            from runners._security import node_host, role_host

            name = target_name or (node_host(node_id) if node_id else role_host("node"))
            credentials = tls.credentials() if tls is not None else grpc.ssl_channel_credentials(root_pem)
            self.channel = grpc.aio.secure_channel(address, credentials,
                                                   options=[*all_options, ("grpc.ssl_target_name_override", name)])
        else:
            self.channel = grpc.aio.insecure_channel(address, options=all_options)
        self.control = ctl_grpc.NodeControlStub(self.channel)
        self.inference = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self._model_infer = model_infer(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()

    async def __aenter__(self) -> NodeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def info(self, timeout: float = 5.0) -> ctl.NodeInfo:
        """GetNodeInfo."""
        return await self.control.GetNodeInfo(ctl.GetNodeInfoRequest(), timeout=timeout)

    async def deploy(self, manifest: ctl.StageManifest, model: bytes, timeout: float = 120.0) -> ctl.StageInfo:
        """Upload and activate a stage; DeployError if the node refuses it."""
        try:
            reply = await self.control.Deploy(deploy_requests(manifest, model), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            trailers = dict(exc.trailing_metadata() or ())
            step = str(trailers.get(FAILED_STEP_KEY, "warmup"))
            details = exc.details() or ""
            raise DeployError(step, details.removeprefix(f"refused at {step}: ")) from exc
        if not reply.ok:
            raise DeployError(reply.failed_step, reply.error)
        return reply.stage

    async def rollback(self, stage_id: str, timeout: float = 60.0) -> ctl.StageInfo:
        """Roll a stage back to its previous version."""
        return await self.control.Rollback(ctl.RollbackRequest(stage_id=stage_id), timeout=timeout)

    async def undeploy(self, stage_id: str, timeout: float = 30.0) -> bool:
        """Remove a stage; True if it existed."""
        reply = await self.control.Undeploy(ctl.UndeployRequest(stage_id=stage_id), timeout=timeout)
        return reply.removed

    async def dead_letters(self, stage_id: str = "", limit: int = 100, after_seq: int = 0,
                           timeout: float = 10.0) -> ctl.ListDeadLettersResponse:
        """Escalations the next hop refused, kept aside (oldest first, paged by seq)."""
        return await self.control.ListDeadLetters(
            ctl.ListDeadLettersRequest(stage_id=stage_id, limit=limit, after_seq=after_seq), timeout=timeout)

    async def retry_dead_letters(self, stage_id: str, seqs: list[int] | None = None, timeout: float = 30.0) -> int:
        """Put dead letters (all of the stage's when `seqs` is empty) back in the queue; returns how many."""
        reply = await self.control.RetryDeadLetters(ctl.DeadLetterSelection(stage_id=stage_id, seqs=seqs or []),
                                                    timeout=timeout)
        return int(reply.count)

    async def discard_dead_letters(self, stage_id: str, seqs: list[int] | None = None, timeout: float = 30.0) -> int:
        """Drop dead letters for good; returns how many."""
        reply = await self.control.DiscardDeadLetters(ctl.DeadLetterSelection(stage_id=stage_id, seqs=seqs or []),
                                                      timeout=timeout)
        return int(reply.count)

    async def hard_examples(self, request: ctl.ListHardExamplesRequest | None = None,
                            timeout: float = 10.0) -> ctl.ListHardExamplesResponse:
        """A page of the node's hard-example ledger, newest first, with thumbnails (no tensors)."""
        return await self.control.ListHardExamples(request or ctl.ListHardExamplesRequest(), timeout=timeout)

    async def hard_example_tensors(self, seqs: list[int], timeout: float = 30.0) -> list[ctl.HardExample]:
        """These ledger entries with their input tensors (entries gone meanwhile are left out)."""
        out: list[ctl.HardExample] = []
        for start in range(0, len(seqs), 256):
            reply = await self.control.GetHardExample(ctl.GetHardExampleRequest(seqs=seqs[start:start + 256]),
                                                      timeout=timeout)
            out.extend(reply.examples)
        return out

    async def stages(self, timeout: float = 5.0) -> list[ctl.StageInfo]:
        """ListStages."""
        return list((await self.control.ListStages(ctl.ListStagesRequest(), timeout=timeout)).stages)

    async def update_policy(self, request: ctl.UpdatePolicyRequest, timeout: float = 30.0) -> ctl.StageInfo:
        """UpdatePolicy."""
        return await self.control.UpdatePolicy(request, timeout=timeout)

    async def telemetry(self, interval_s: float = 1.0) -> AsyncIterator[ctl.TelemetrySample]:
        """WatchTelemetry as an async iterator (cancel the iteration to stop the stream)."""
        call = self.control.WatchTelemetry(ctl.WatchTelemetryRequest(interval_s=interval_s))
        try:
            async for sample in call:
                yield sample
        finally:
            call.cancel()

    async def healthy(self, service: str = "", timeout: float = 2.0) -> bool:
        """grpc.health.v1 Check: True when SERVING."""
        try:
            reply = await self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray] | Sequence[tuple[str, np.ndarray]],
                    outputs: Sequence[str] = (), request_id: str = "", timeout: float = 30.0,
                    link: StreamLink | None = None) -> InferResult:
        """ModelInfer with raw inputs (as a message on `link` when given); returns decoded outputs and parameters."""
        request = pb.ModelInferRequest(model_name=model, id=request_id)
        for name in outputs:
            request.outputs.add(name=name)
        wire = request_bytes(request, list(inputs.items()) if isinstance(inputs, Mapping) else list(inputs))
        response = await (link.infer(wire, timeout) if link is not None else self._model_infer(wire, timeout=timeout))
        return infer_result(response)

    def stream_link(self) -> StreamLink:
        """A StreamInfer link to this node (runners/_stream.py): many infers on one stream, answers in order; it
        falls back to ModelInfer where the node has no StreamInfer. Close it with `await link.close()`."""
        return StreamLink(self.inference, self.channel, target=self.address)

    async def metadata(self, model: str, timeout: float = 5.0) -> pb.ModelMetadataResponse:
        """ModelMetadata."""
        return await self.inference.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=timeout)
