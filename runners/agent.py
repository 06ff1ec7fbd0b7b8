"""`tierdeck-node`: the node agent. Serves OIP v2 (data plane), tierdeck.v1.NodeControl and grpc.health.v1.

Event-loop story: one asyncio loop runs the grpc.aio server, the forwarders and the samplers. onnxruntime
runs in a thread pool (`compute`), except runs expected to take under a millisecond, which cost less on the
loop than the hand-off to a thread and back (runners/_stage.py INLINE_RUN_S); every file and SQLite operation
runs in a single I/O thread (`io`); nothing else blocking ever runs on the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import ipaddress
import json
import logging
import os
import platform
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import onnxruntime as ort
import psutil
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from runners import __version__
from runners._forward import ROW_IDS, SMOKE, EscalationQueue, Forwarder, unpack_row_ids
from runners._identity import AccessDenied, NodeIdentity
from runners._ledger import (
    DEFAULT_MAX_AGE_H,
    DEFAULT_MAX_MB,
    DEFAULT_MAX_ROWS_PER_S,
    KINDS,
    Ledger,
    LedgerEntry,
    LedgerStats,
)
from runners._lifeline import arm_from_env
from runners._limits import (
    ResourceRefused,
    RssWindow,
    check_declared,
    check_measured,
    check_warmup_fits,
    guarded_warmup,
)
from runners._proto import grpc_predict_v2_pb2 as pb
from runners._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from runners._proto import tierdeck_control_pb2 as ctl
from runners._proto import tierdeck_control_pb2_grpc as ctl_grpc
from runners._providers import (
    GPU_PROVIDERS,
    ProviderRefused,
    ProviderSettings,
    check_builds,
    check_required,
    measure_placement,
    node_order,
    plan_for,
    probe,
    short_name,
    unknown_preferences,
)
from runners._rules import DROPPED, ESCALATE, Decisions, evaluate
from runners._security import peer_address
from runners._seen import row_digests
from runners._shadow import Disagreements, is_shadow, sampler_for, shadow_call, shadow_rate
from runners._stage import PLATFORM, ModelRejected, Stage, check_model_file, load_session
from runners._store import StageStore, check_name
from runners._stream import STREAM_EXTENSION, Request, StreamServer, add_inference_service
from runners._telemetry import StageStats, TelemetryWindow, attribute_energy, prune
from runners._tensors import TensorError, UnreadableRequest, decode_inputs, encode_outputs, nonfinite
from runners.client import FAILED_STEP_KEY
from runners.power import GpuPowerMeter, PowerMeter
from runners.protocol import TIERS

log = logging.getLogger("tierdeck.agent")
T = TypeVar("T")

PROTO = "oip-v2-grpc"


@dataclass
class AgentConfig:
    """Everything the agent is started with (the command line maps onto this)."""

    name: str
    tier: str
    data_dir: Path
    listen: str = "127.0.0.1:0"
    preload: list[tuple[str, Path]] = field(default_factory=list)
    insecure: bool = True
    allow_insecure_network: bool = False
    mdns: bool = True
    mdns_interfaces: list[str] = field(default_factory=list)
    metrics_port: int | None = None
    idle_watts: float = 5.0
    max_watts: float = 25.0
    memory_cap_mb: float = 0.0
    power_budget_watts: float = 0.0
    queue_limit: int = 100_000
    ort_threads: int = 1
    ort_arena: bool = True    # onnxruntime keeps its runs' working memory (runners/_stage.load_session)
    max_message_mb: int = 256
    pairing_rotate_after: int = 1000  # wrong pairing proofs (all peers) before a new code is made
    fleet_id: str = ""            # advertised in TXT `fleet`: consoles scoped to a fleet show only its nodes
    providers: tuple[str, ...] = ()  # preference, full names; empty: the best the build offers
    device_id: int = 0
    openvino_device: str = "CPU"
    trt_fp16: bool = False
    ledger_max_mb: float = DEFAULT_MAX_MB      # hard-example ledger bounds (runners/_ledger.py)
    ledger_max_age_h: float = DEFAULT_MAX_AGE_H
    ledger_max_rows_per_s: float = DEFAULT_MAX_ROWS_PER_S


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def split_address(address: str) -> tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:PORT)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not a HOST:PORT address: {address!r}")
    return host.strip("[]"), int(port)


class Agent:
    """The node agent: stages, servers, samplers. Create and use inside one running event loop."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.store = StageStore(config.data_dir)
        self.node_id = self.store.node_id()
        self.boot_id = uuid.uuid4().hex
        self.started_unix_ms = int(time.time() * 1000)
        self.stages: dict[str, Stage] = {}
        self.stats: dict[str, StageStats] = {}
        self.compute_workers = max(2, os.cpu_count() or 2)
        self.compute = ThreadPoolExecutor(max_workers=self.compute_workers, thread_name_prefix="compute")
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="io")
        self.queue = EscalationQueue(config.data_dir / "queue.sqlite", config.queue_limit)
        self.ledger = Ledger(config.data_dir / "ledger.sqlite", config.ledger_max_mb, config.ledger_max_age_h,
                             max_rows_per_s=config.ledger_max_rows_per_s)
        # Ledger reads (the console pulling hard examples) get their own thread: never behind the queue's I/O.
        self.ledger_reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-read")
        self.identity = NodeIdentity(config.data_dir, self.node_id, config.insecure)
        self.identity.on_code_changed = self._pairing_code_changed
        self.identity.guard.rotate_after = max(1, config.pairing_rotate_after)
        self.power = PowerMeter(idle_watts=config.idle_watts, max_watts=config.max_watts)
        self.providers = ProviderSettings(config.providers, config.device_id, config.openvino_device,
                                          config.trt_fp16, config.data_dir / "provider-cache", config.ort_threads)
        self.provider_order = node_order(self.providers, ort.get_available_providers())
        self.available_providers = list(self.provider_order)  # what stages may use: the order (probed at start)
        # NVML for the energy of stages that run on a GPU (see runners/power.py), whatever the node's source.
        self.gpu_power = GpuPowerMeter.open() if GPU_PROVIDERS & set(self.provider_order) else None
        self.builds = check_builds(imported_version=ort.__version__)
        self.runtime_problems = list(self.builds.problems)
        unknown = unknown_preferences(self.providers, ort.get_available_providers())
        if unknown:
            self.runtime_problems.append(
                f"--providers names {', '.join(map(short_name, unknown))}, which this onnxruntime build "
                f"({self.builds.summary}) does not offer; using {', '.join(map(short_name, self.provider_order))}")
        for problem in self.runtime_problems:
            log.warning("onnxruntime: %s", problem)
        log.info("execution providers: %s (build %s)", ", ".join(map(short_name, self.provider_order)),
                 self.builds.summary)
        self.health = health.aio.HealthServicer()
        self.cfg = self.store.config_counter()
        self.address = ""
        self.metrics_port: int | None = None
        self.active_streams = 0
        self.telemetry_seq = 0  # one sequence per boot, shared by every stream: (boot_id, seq) names a sample
        self.node_sample = ctl.TelemetrySample()
        self._process = psutil.Process()
        self._locks: dict[str, asyncio.Lock] = {}
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._advertiser: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = asyncio.Event()
        self.stream = StreamServer(InferenceService(self).ModelInfer)  # StreamInfer: ModelInfer per message

    # -- life cycle -------------------------------------------------------------------------------
    async def async_start(self) -> str:
        """Load stages, start serving; returns the address actually listened on."""
        self._loop = asyncio.get_running_loop()
        await self._probe_providers()
        host, port = split_address(self.config.listen)
        self._server, bound = self._make_server(host, port)
        self.address = f"{host}:{bound}"
        for stage_id in await self._in_io(self.store.stage_ids):
            try:
                await self._activate_stored(stage_id)
            except (ModelRejected, OSError, ValueError) as exc:
                log.error("stage %s could not be reloaded: %s", stage_id, exc)
        for stage_id, path in self.config.preload:
            await self._preload(stage_id, path)
        await self._server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._tasks.append(asyncio.create_task(self._node_sampler(), name="node-sampler"))
        if self.config.metrics_port is not None:
            from runners._metrics import serve_metrics

            self.metrics_port = serve_metrics(self, host, self.config.metrics_port)
        if self.config.mdns:
            await self._advertise(host, bound)
        return self.address

    async def _probe_providers(self) -> None:
        """Keep only the accelerators that really start here (see runners/_providers.probe)."""
        if len(self.provider_order) == 1:
            return
        order, problems = await asyncio.get_running_loop().run_in_executor(
            self.compute, probe, self.providers, self.provider_order)
        for problem in problems:
            log.warning("onnxruntime: %s", problem)
        self.runtime_problems += problems
        self.provider_order = order
        self.available_providers = list(order)

    def _make_server(self, host: str, port: int) -> tuple[grpc.aio.Server, int]:
        """A server with all three services, bound with the credentials the node's identity calls for."""
        limit = self.config.max_message_mb << 20
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ])
        add_inference_service(InferenceService(self), server)
        ctl_grpc.add_NodeControlServicer_to_server(ControlService(self), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        credentials = self.identity.server_credentials()
        bound = server.add_insecure_port(target) if credentials is None else server.add_secure_port(target, credentials)
        if bound == 0:
            raise OSError(f"cannot listen on {host}:{port}")
        return server, bound

    async def switch_to_fleet_tls(self) -> None:
        """After enrolment: serve mutual TLS on the same port (bound before the bootstrap server stops)."""
        await asyncio.sleep(0.2)  # let the CompleteEnrollment answer leave first
        host, port = split_address(self.address)
        new, _ = self._make_server(host, port)
        await new.start()
        old, self._server = self._server, new
        if old is not None:
            await old.stop(1.0)
        log.info("enrolled: now serving mutual TLS with the fleet certificate")
        if self._advertiser is not None:
            await self._advertiser.async_update(fp=self.identity.fingerprint, paired="1")

    def _pairing_code_changed(self, code: str, reason: str) -> None:
        """I/O thread: the operator's code changed — say it where they read it (stdout JSON), and advertise it."""
        print(json.dumps({"event": "pairing_code", "pairing_code": code, "generation": self.identity.code_generation,
                          "reason": reason}), flush=True)
        loop = self._loop
        if loop is not None and self._advertiser is not None:
            loop.call_soon_threadsafe(lambda: self._tasks.append(asyncio.ensure_future(
                self._advertiser.async_update(pgen=str(self.identity.code_generation)))))

    async def allow(self, context: grpc.aio.ServicerContext, need: str) -> None:
        """Abort the RPC unless the verified peer may do this (see NodeIdentity.authorize)."""
        try:
            self.identity.authorize(context.auth_context(), need)  # type: ignore[arg-type]
        except AccessDenied as exc:
            await context.abort(exc.code, exc.message)

    async def _advertise(self, host: str, port: int) -> None:
        from discovery import Advertiser

        interfaces = self.config.mdns_interfaces or ([host] if host not in ("0.0.0.0", "::") else None)
        addresses = interfaces or [socket.gethostbyname(socket.gethostname())]
        self._advertiser = Advertiser(node_id=self.node_id, name=self.config.name, tier=self.config.tier,
                                      port=port, addresses=addresses, version=__version__, proto=PROTO,
                                      interfaces=interfaces, fingerprint=self.identity.fingerprint,
                                      extra_txt={"cfg": str(self.cfg),
                                                 "paired": "1" if self.identity.enrolled or self.config.insecure
                                                 else "0",
                                                 # pairing code generation: a console notices a new code
                                                 **({"pgen": str(self.identity.code_generation)}
                                                    if self.identity.pairing_code else {}),
                                                 **({"fleet": self.config.fleet_id} if self.config.fleet_id else {})})
        await self._advertiser.async_start()

    async def async_stop(self, grace: float = 5.0) -> None:
        """Finish in-flight requests, flush forwarders to disk, say goodbye on mDNS."""
        self._stopping.set()
        await self.health.enter_graceful_shutdown()
        self.stream.close()  # open StreamInfer links end after their answers, not at the end of the grace
        if self._advertiser is not None:
            await self._advertiser.async_stop()
        if self._server is not None:
            await self._server.stop(grace)
        for stage in list(self.stages.values()):
            if stage.forwarder is not None:
                await stage.forwarder.async_stop()
        for stats in list(self.stats.values()):
            if stats.shadow is not None:
                await stats.shadow.async_stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._in_io(self.queue.close)
        await self._in_io(self.ledger.close)
        self.ledger_reads.shutdown(wait=True)
        self.io.shutdown(wait=True)
        self.compute.shutdown(wait=True)

    async def _in_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    # -- stages -----------------------------------------------------------------------------------
    def _stats_for(self, stage_id: str) -> StageStats:
        return self.stats.setdefault(stage_id, StageStats(stage_id))

    def lock_for(self, stage_id: str) -> asyncio.Lock:
        """Deploys, rollbacks and policy changes of one stage happen one at a time."""
        return self._locks.setdefault(stage_id, asyncio.Lock())

    async def build_stage(self, manifest: ctl.StageManifest, path: Path, previous: str = "",
                          activated_ms: int = 0) -> Stage:
        """Load a model file into a ready Stage (session opened on its providers, warmed up, placement, policy and
        memory limits checked)."""
        loop = asyncio.get_running_loop()
        rss = RssWindow().start()
        choice = manifest.providers
        try:
            plan = plan_for(self.providers, self.available_providers, choice.require, choice.prefer)
        except ProviderRefused as exc:
            raise ModelRejected("load", str(exc)) from exc
        notes: list[str] = []
        while True:  # a preferred accelerator that cannot take the model is left out, never fatal
            try:
                session = await loop.run_in_executor(self.compute, load_session, path, self.config.ort_threads,
                                                     plan, self.config.data_dir, self.config.ort_arena)
                stage = Stage(manifest=manifest, session=session, model_path=path,
                              stats=self._stats_for(manifest.stage_id), previous_version=previous,
                              activated_unix_ms=activated_ms or int(time.time() * 1000))
                # Limits (runners/_limits.py): refused at "warmup" as RESOURCE_EXHAUSTED, never an allocation crash.
                check_warmup_fits(stage.inputs)
                check_declared(stage.inputs, stage.outputs, manifest.max_batch, path.stat().st_size,
                               self.memory_cap_bytes)
                placement = await loop.run_in_executor(self.compute, measure_placement, session,
                                                       functools.partial(guarded_warmup, stage.warm_up))
                break
            except ResourceRefused:
                raise  # memory does not depend on the provider
            except Exception as exc:  # ModelRejected, or onnxruntime's own errors from the warm-up
                if isinstance(exc, ModelRejected) and exc.step not in ("load", "warmup"):
                    raise  # the manifest does not fit the model: no provider changes that
                fallback = plan.next_fallback()
                if fallback is None:
                    if isinstance(exc, ModelRejected):
                        raise
                    raise ModelRejected("warmup", f"warm-up inference failed: {exc}") from exc
                dropped = next(p for p in plan.providers if p not in fallback.providers)
                first_line = str(getattr(exc, "message", exc)).strip().splitlines()[0][:300]
                notes.append(f"{short_name(dropped)} could not take the model ({first_line}); opened without it")
                log.warning("stage %s: %s", manifest.stage_id, notes[-1])
                plan = fallback
        check_measured(rss.growth(), self.memory_cap_bytes)
        placement.notes = (*notes, *placement.notes)
        stage.placement = placement
        try:
            check_required(placement, plan.required)
        except ProviderRefused as exc:
            raise ModelRejected("load", str(exc)) from exc
        log.info("stage %s %s %s (warm-up %.1f ms, then %.2f ms; session providers %s)", manifest.stage_id,
                 manifest.version, stage.placement.describe(), stage.placement.warmup_first_ms,
                 stage.placement.warmup_ms, ", ".join(map(short_name, stage.placement.session_providers)))
        return stage

    async def swap_in(self, stage: Stage) -> None:
        """Make `stage` the one that answers its model name; wire its next hop."""
        old = self.stages.get(stage.stage_id)
        await self.wire_next_hop(stage, old)
        self.stages[stage.stage_id] = stage
        # Shadow sampling of settled rows (runners/_shadow.py): the rate in force changes with the stage that serves;
        # disagreeing shadow rows go to the hard-example ledger.
        sampler = sampler_for(stage.stats)
        sampler.set_rate(shadow_rate(stage.manifest.budget) if stage.forwarder is not None else 0.0)
        sampler.on_disagreement = self._record_shadow_disagreed
        if stage.placement is not None:
            stage.stats.runs_on = stage.placement.runs_on
            stage.stats.cpu_fallback_nodes = stage.placement.cpu_fallback_nodes
        await self.health.set(f"stage/{stage.stage_id}", health_pb2.HealthCheckResponse.SERVING)

    async def wire_next_hop(self, stage: Stage, old: Stage | None) -> None:
        """Give the stage a forwarder for its next hop, reusing the old one when the hop is unchanged."""
        hop = stage.manifest.next_hop if stage.manifest.HasField("next_hop") else None
        reuse = old.forwarder if old is not None else None
        if reuse is not None and hop is not None and reuse.hop == hop:
            stage.forwarder = reuse
            reuse._max_batch = stage.manifest.max_batch or 64
            reuse._priority = stage.manifest.budget.priority
            reuse.on_late_answers = functools.partial(self.ledger.record_late_answers, stage.stage_id)
            return
        if reuse is not None:
            await reuse.async_stop()
        if hop is not None:
            stage.forwarder = Forwarder(stage.stage_id, hop, self.queue, self.io, stage.stats,
                                        max_batch=stage.manifest.max_batch or 64,
                                        priority=stage.manifest.budget.priority,
                                        origin=f"{self.node_id[:8]}-{self.boot_id[:8]}")
            stage.forwarder.on_late_answers = functools.partial(self.ledger.record_late_answers, stage.stage_id)
            await stage.forwarder.async_start(self.identity.channel_credentials(),
                                              self.identity.target_name(hop.node_id))
        else:
            stage.stats.link_state = "none"

    def _record_shadow_disagreed(self, found: Disagreements) -> None:
        """Shadow rows the next tier answered differently: into the ledger (never blocks; see runners/_ledger.py)."""
        self.ledger.record_shadow_disagreed(found.stage_id, found.stage_version, found.row_ids, found.inputs,
                                            found.scores, found.score_labels, found.settled, found.answered)

    async def _activate_stored(self, stage_id: str) -> Stage:
        stored = await self._in_io(self.store.load, stage_id)
        if stored is None:
            raise LookupError(f"stage '{stage_id}' is not deployed")
        stage = await self.build_stage(stored.manifest, stored.model_path, stored.previous_version,
                                       stored.activated_unix_ms)
        await self.swap_in(stage)
        return stage

    async def _preload(self, stage_id: str, path: Path) -> None:
        check_name("stage id", stage_id)
        if stage_id in self.stages:
            raise ValueError(f"--stage {stage_id}: a deployed stage already has that id")
        data = await self._in_io(path.read_bytes)
        manifest = ctl.StageManifest(stage_id=stage_id, version="local", sha256=hashlib.sha256(data).hexdigest(),
                                     size_bytes=len(data))
        await self._in_io(check_model_file, path, self.memory_cap_bytes)
        await self.swap_in(await self.build_stage(manifest, path))

    @property
    def memory_cap_bytes(self) -> int:
        """Largest memory a model may take on this node (0 = unlimited)."""
        return int(self.config.memory_cap_mb * 2**20)

    async def config_changed(self) -> None:
        """Bump the config counter (persisted, advertised) after a deploy, rollback, undeploy or policy change."""
        self.cfg += 1
        await self._in_io(self.store.save_config_counter, self.cfg)
        if self._advertiser is not None:
            await self._advertiser.async_update(cfg=str(self.cfg))

    # -- telemetry --------------------------------------------------------------------------------
    async def _node_sampler(self) -> None:
        """Every 0.5 s: CPU, RSS, power; attribute dynamic energy to stages by their compute time."""
        cores = psutil.cpu_count() or 1
        self._process.cpu_percent(None)
        last_compute = {sid: s.compute_seconds_total for sid, s in self.stats.items()}
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            cpu = self._process.cpu_percent(None) / cores
            reading = self.power.sample(now, cpu)
            node_source, node_measured, node_watts = reading.source, reading.measured, reading.watts
            if reading.source == "nvml":  # GPU-only sensor: CPU stages' share comes from the power model
                node_source, node_measured, node_watts = "estimate", False, self.power.estimate_watts(cpu)
            dynamic = max(0.0, node_watts - self.config.idle_watts) * (now - last)
            gpu = self.gpu_power.sample(now) if self.gpu_power is not None else None
            gpu_stages = frozenset(sid for sid, s in self.stats.items() if s.runs_on in GPU_PROVIDERS)
            deltas = {sid: s.compute_seconds_total - last_compute.get(sid, 0.0) for sid, s in self.stats.items()}
            attribute_energy(self.stats, deltas, dynamic, node_source, node_measured,
                             gpu.dynamic_joules if gpu is not None else None, gpu_stages)
            for sid, stats in self.stats.items():
                last_compute[sid] = stats.compute_seconds_total
                prune(stats, now)
            last = now
            self.node_sample = ctl.TelemetrySample(
                node_id=self.node_id, boot_id=self.boot_id, cpu_percent=cpu,
                rss_bytes=self._process.memory_info().rss, power_watts=reading.watts,
                power_source=reading.source, power_measured=reading.measured,
                energy_joules_total=reading.energy_joules_total,
                backlog=sum(s.queue_depth for s in self.stats.values()))

    def node_info(self) -> ctl.NodeInfo:
        """What GetNodeInfo answers."""
        memory = psutil.virtual_memory()
        return ctl.NodeInfo(
            node_id=self.node_id, name=self.config.name, tier=self.config.tier, agent_version=__version__,
            cpu_cores=psutil.cpu_count() or 1, ram_total_bytes=memory.total, ram_free_bytes=memory.available,
            execution_providers=ort.get_available_providers(), power_source=self.power.source,
            power_measured=self.power.measured, hostname=socket.gethostname(),
            platform=f"{platform.system()} {platform.machine()}", onnxruntime_version=ort.__version__,
            memory_cap_bytes=self.memory_cap_bytes, power_budget_watts=self.config.power_budget_watts,
            config_counter=self.cfg, started_unix_ms=self.started_unix_ms, boot_id=self.boot_id,
            insecure=self.config.insecure, enrolled=self.identity.enrolled, fingerprint=self.identity.fingerprint,
            active_streams=self.active_streams, provider_preference=self.provider_order,
            onnxruntime_build=self.builds.summary, runtime_problems=self.runtime_problems,
            hard_example_ledger=ledger_pb(self.ledger.stats()))


def ledger_pb(stats: LedgerStats) -> ctl.HardExampleLedger:
    """The ledger's size, limits and counters on the wire."""
    return ctl.HardExampleLedger(rows=stats.rows, bytes=stats.bytes, max_bytes=stats.max_bytes,
                                 max_age_s=stats.max_age_s, recorded_total=stats.recorded_total,
                                 evicted_total=stats.evicted_total, expired_total=stats.expired_total,
                                 dropped_total=stats.dropped_total)


def example_pb(entry: LedgerEntry) -> ctl.HardExample:
    """A ledger entry on the wire (tensors only when the entry was read with them)."""
    return ctl.HardExample(
        seq=entry.seq, created_unix_ms=entry.created_ms, kind=entry.kind, stage_id=entry.stage_id,
        stage_version=entry.stage_version, row_id=entry.row_id, origin_row_id=entry.origin_row_id,
        score_labels=entry.score_labels, scores=entry.scores, stage_label=entry.stage_label,
        stage_confidence=entry.stage_confidence, hop_label=entry.hop_label, hop_stage=entry.hop_stage,
        hop_confidence=entry.hop_confidence, final_label=entry.final_label, final_stage=entry.final_stage,
        final_confidence=entry.final_confidence, final=entry.final, input_bytes=entry.input_bytes,
        preview=entry.preview, preview_shape=entry.preview_shape,
        inputs=[ctl.HardExampleTensor(name=t.name, dtype=t.dtype, shape=t.shape,
                                      data=entry.tensors[t.name].tobytes() if t.name in entry.tensors else b"")
                for t in entry.inputs])


def _param(value: bool | int | str) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    return pb.InferParameter(string_param=value)


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """Open Inference Protocol v2: one model per deployed stage, named by the stage id."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def ServerLive(self, request: pb.ServerLiveRequest,
                         context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        await self.agent.allow(context, "fleet")
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        await self.agent.allow(context, "fleet")
        return pb.ServerReadyResponse(ready=not self.agent._stopping.is_set())

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        await self.agent.allow(context, "fleet")
        return pb.ServerMetadataResponse(name="tierdeck", version=__version__,
                                         extensions=["tierdeck_cascade", STREAM_EXTENSION])

    def _stage(self, name: str, version: str) -> Stage | None:
        stage = self.agent.stages.get(name)
        if stage is None or (version and version != stage.version):
            return None
        return stage

    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        await self.agent.allow(context, "fleet")
        return pb.ModelReadyResponse(ready=self._stage(request.name, request.version) is not None)

    async def _not_found(self, context: grpc.aio.ServicerContext, name: str, version: str) -> None:
        known = sorted(self.agent.stages)
        what = f"model '{name}'" + (f" version '{version}'" if version else "")
        await context.abort(grpc.StatusCode.NOT_FOUND, f"{what} is not deployed on this node (models: {known})")

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        await self.agent.allow(context, "fleet")
        stage = self._stage(request.name, request.version)
        if stage is None:
            await self._not_found(context, request.name, request.version)
            raise AssertionError("unreachable")
        meta = pb.ModelMetadataResponse(name=stage.stage_id, versions=[stage.version], platform=PLATFORM)
        for spec in stage.inputs:
            meta.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        for spec in stage.metadata_outputs():
            meta.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return meta

    async def ModelInfer(self, request: Request, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        await self.agent.allow(context, "fleet")
        if isinstance(request, UnreadableRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
            raise AssertionError("unreachable")
        started = time.perf_counter()
        stage = self._stage(request.model_name, request.model_version)
        if stage is None:
            await self._not_found(context, request.model_name, request.model_version)
            raise AssertionError("unreachable")
        # The deployer's smoke inference runs the real path but is not traffic: it is kept out of every count.
        smoke = SMOKE in request.parameters and request.parameters[SMOKE].bool_param
        shadow = is_shadow(request)  # shadow rows too (runners/_shadow.py), and their escalations go on as such
        stats = StageStats(stage.stage_id) if smoke or shadow else stage.stats
        stats.add("requests_total")
        try:
            feeds = stage.check_inputs(decode_inputs(request))
            requested = [o.name for o in request.outputs]
            known = [o.name for o in stage.metadata_outputs()]
            for name in requested:
                if name not in known:
                    raise TensorError(f"output {name!r}: model '{stage.stage_id}' has no such output "
                                      f"(outputs: {known})")
        except TensorError as exc:
            stats.add("errors_total")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable") from exc
        row_ids = unpack_row_ids(request.parameters[ROW_IDS].string_param) if ROW_IDS in request.parameters else []
        batch = next(iter(feeds.values())).shape[0] if feeds and next(iter(feeds.values())).ndim else 0
        seen = stage.seen_rows  # this version's own memory: a redeploy or policy change starts empty
        digests = row_digests(feeds) if row_ids and len(row_ids) == batch else []
        fresh = seen.fresh(row_ids, digests) if digests else None
        if fresh is not None and len(fresh) < batch:
            stats.add("duplicates_total", batch - len(fresh))
            run_feeds = {n: np.ascontiguousarray(a[fresh]) for n, a in feeds.items()}
        else:
            run_feeds = feeds
        try:
            # Rows escalated from below keep their ids in the ledger (shadow rows are the sender's to record).
            origin = [row_ids[i] for i in fresh] if fresh is not None and not shadow else None
            named, decisions = await self._compute(stage, run_feeds, request.id, stats, smoke, origin,
                                                   "shadow" if shadow else "") \
                if fresh != [] else ({}, None)
        except Exception as exc:  # onnxruntime's own exception types
            stats.add("errors_total")
            code = grpc.StatusCode.INVALID_ARGUMENT if "InvalidArgument" in type(exc).__name__ \
                else grpc.StatusCode.INTERNAL
            await context.abort(code, f"model '{stage.stage_id}' failed: {exc}")
            raise AssertionError("unreachable") from exc
        if fresh is not None:
            seen.remember(row_ids, digests, fresh, named, decisions)
            if len(fresh) < batch:
                named, decisions = seen.answers(row_ids)
        response = pb.ModelInferResponse(model_name=stage.stage_id, model_version=stage.version, id=request.id)
        flagged = sum(nonfinite(a) for a in feeds.values())
        if flagged:
            response.parameters["tierdeck.nonfinite_inputs"].CopyFrom(_param(int(flagged)))
        if decisions is not None:
            named.update(decisions.outputs())  # type: ignore[arg-type]
            deciders = [decisions.stages[i] for i in dict.fromkeys(decisions.stage.tolist())]  # in row order
            provisional = int((~decisions.final).sum())
        else:
            deciders, provisional = [stage.stage_id], 0
        response.parameters["tierdeck.decided_by"].CopyFrom(_param(",".join(deciders)))
        response.parameters["tierdeck.final"].CopyFrom(_param(provisional == 0))
        response.parameters["tierdeck.provisional_rows"].CopyFrom(_param(provisional))
        selected = requested or list(named)
        encode_outputs(response, [(n, named[n]) for n in selected])
        stats.record_latency(time.perf_counter() - started, time.monotonic())
        return response

    async def StreamInfer(self, request_iterator: AsyncIterator[Request],
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StreamInferResponse]:
        """tierdeck's extension: ModelInfer per message of one long-lived stream, answers in request order
        (runners/_stream.py)."""
        async for reply in self.agent.stream.serve(request_iterator, context):
            yield reply

    async def _compute(self, stage: Stage, feeds: dict[str, np.ndarray], request_id: str, stats: StageStats,
                       smoke: bool = False, origin_row_ids: list[str] | None = None, mode: str = ""
                       ) -> tuple[dict[str, np.ndarray], Decisions | None]:
        """Run the model on the compute pool and, for a stage with a rule, decide (and escalate) per row.

        `origin_row_ids`: the ids the rows arrived with (escalations from the tier below), one per row of `feeds`."""
        outputs, compute_s = await stage.async_run(feeds, self.agent.compute, self.agent.compute_workers)
        stats.compute_seconds_total += compute_s
        named = dict(zip([o.name for o in stage.outputs], outputs, strict=True))
        if stage.rule is None:
            first = next(iter(named.values()), None)
            stats.add("inferences_total", first.shape[0] if first is not None and first.ndim else 1)
            return named, None
        decisions = await self._decide(stage, feeds, named[stage.rule.output], request_id, stats, smoke,
                                       origin_row_ids, mode)
        stats.add("inferences_total", len(decisions))
        return named, decisions

    async def _decide(self, stage: Stage, feeds: dict[str, np.ndarray], output: np.ndarray,
                      request_id: str, stats: StageStats, smoke: bool = False,
                      origin_row_ids: list[str] | None = None, mode: str = "") -> Decisions:
        """Apply the rule, forward what escalates (within the budget), and answer per row."""
        assert stage.rule is not None
        rule = stage.rule
        outcome = evaluate(rule, output)
        if rule.scores == "probabilities" and rule.confidence_below is not None and not stage.scores_warned \
                and len(outcome.top_prob) and float(outcome.top_prob.max()) > 1.0001:
            stage.scores_warned = True
            log.warning("stage %s: rule output '%s' gives values above 1 (%.3g): they are not probabilities, so "
                        "confidence_below compares the wrong thing; set the rule's scores to 'logits' or 'raw'",
                        stage.stage_id, rule.output, float(outcome.top_prob.max()))
        stats.record_scores(outcome.score)
        decisions = Decisions.settled(rule, outcome, stage.stage_id)
        stats.add("dropped_total", int((outcome.action == DROPPED).sum()))
        escalate = np.flatnonzero(outcome.action == ESCALATE)
        stats.add("escalated_total", len(escalate))
        sampler = stage.stats.shadow
        if sampler is not None and sampler.rate > 0.0 and not smoke and not mode:  # shadow sample (runners/_shadow)
            sampler.sample(stage.forwarder, stage.bucket, feeds, outcome, decisions, output, stage.version,
                           rule.labels)
        send = escalate[:0]
        if mode == "shadow":  # a shadow row escalates in shadow mode, or settles here when the link cannot take it
            if len(escalate) and stage.forwarder is not None:
                answers = await shadow_call(stage.forwarder, {n: np.ascontiguousarray(a[escalate])
                                                              for n, a in feeds.items()})
                if answers is not None:
                    decisions.assign(escalate, answers)
        elif len(escalate) and stage.forwarder is not None:
            if smoke:
                send = escalate
            else:
                granted = stage.bucket.take(len(escalate)) if stage.bucket else len(escalate)
                stats.add("shed_total", len(escalate) - granted)
                send = escalate[:granted]
            if len(send):
                rows = {n: np.ascontiguousarray(a[send]) for n, a in feeds.items()}
                forwarder = stage.forwarder
                own = decisions.take(send) if not smoke else None
                arrived_as = [origin_row_ids[i] for i in send] if origin_row_ids else None
                sent_ids = forwarder.upcoming_row_ids(len(send), arrived_as)
                answers = await (forwarder.async_smoke(rows) if smoke
                                 else forwarder.async_escalate(rows, request_id, arrived_as))
                if own is not None:  # the ledger copies `own` before assign() below changes `decisions`
                    self.agent.ledger.record_escalated(
                        stage.stage_id, stage.version, sent_ids, rows, output[send], rule.labels, own, answers,
                        origin_row_ids=arrived_as)
                if answers is not None:
                    decisions.assign(send, answers)
                    if sampler is not None and sampler.rate > 0.0 and not smoke:
                        sampler.note_escalated(rule.labels, rule.class_in, outcome, send, answers)
        if origin_row_ids and not smoke:
            self._record_arrived(stage, feeds, output, decisions, send, origin_row_ids)
        stats.add("provisional_total", int((~decisions.final).sum()))
        return decisions

    def _record_arrived(self, stage: Stage, feeds: dict[str, np.ndarray], output: np.ndarray, decisions: Decisions,
                        sent: np.ndarray, origin_row_ids: list[str]) -> None:
        """Ledger: rows escalated to this stage from below that it answered itself (what it saw, its scores), so
        that the console can join a row's entries across nodes by row id."""
        if len(sent):
            here = np.setdiff1d(np.arange(len(decisions)), sent)
            if not len(here):
                return
            inputs, scores, answered = {n: a[here] for n, a in feeds.items()}, output[here], decisions.take(here)
            origins = [origin_row_ids[i] for i in here]
        else:  # the usual case: every row answered here, handed over as it is (no copy on the request path)
            inputs, scores, answered, origins = feeds, output, decisions, origin_row_ids
        self.agent.ledger.record_escalated(
            stage.stage_id, stage.version, [""] * len(origins), inputs, scores,
            stage.rule.labels if stage.rule else (), answered, None, final=answered, origin_row_ids=origins)


class ControlService(ctl_grpc.NodeControlServicer):
    """tierdeck.v1.NodeControl: deploy, roll back, change policy, watch telemetry."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def GetNodeInfo(self, request: ctl.GetNodeInfoRequest, context: grpc.aio.ServicerContext) -> ctl.NodeInfo:
        await self.agent.allow(context, "info")
        return self.agent.node_info()

    async def Deploy(self, request_iterator: AsyncIterator[ctl.DeployRequest],
                     context: grpc.aio.ServicerContext) -> ctl.DeployResponse:
        await self.agent.allow(context, "console")
        agent = self.agent
        upload: Path | None = None
        step = "receive"
        try:
            first = await anext(request_iterator, None)
            if first is None or first.WhichOneof("part") != "manifest":
                raise ModelRejected("receive", "the first message of a deploy must be the manifest")
            manifest = first.manifest
            check_name("stage id", manifest.stage_id)
            check_name("version", manifest.version)
            if not 0 < manifest.size_bytes < 2**31:
                raise ModelRejected("receive", f"declared size {manifest.size_bytes} bytes is out of range")
            if agent.memory_cap_bytes and manifest.size_bytes * 2 > agent.memory_cap_bytes:
                raise ModelRejected("receive", f"model of {manifest.size_bytes / 2**20:.1f} MiB is too large for "
                                    f"this node's memory cap of {agent.memory_cap_bytes / 2**20:.1f} MiB")
            async with agent.lock_for(manifest.stage_id):
                existing = await agent._in_io(agent.store.has_version, manifest.stage_id, manifest.version)
                upload = agent.store.new_upload()
                digest, received = await self._receive(request_iterator, upload, manifest.size_bytes)
                step = "verify"
                if received != manifest.size_bytes:
                    raise ModelRejected("verify", f"received {received} bytes, the manifest declares "
                                        f"{manifest.size_bytes} (upload truncated?)")
                if digest != manifest.sha256.lower():
                    raise ModelRejected("verify", f"sha256 mismatch: received {digest}, manifest says "
                                        f"{manifest.sha256}")
                if existing is not None:
                    if existing.sha256 != manifest.sha256.lower():
                        raise ModelRejected("verify", f"version '{manifest.version}' of '{manifest.stage_id}' is "
                                            "already deployed with different content; use a new version")
                step = "validate"
                await agent._in_io(check_model_file, upload, agent.memory_cap_bytes)
                stage = await agent.build_stage(manifest, upload)
                step = "activate"
                stored = await agent._in_io(agent.store.install, upload, manifest)
                upload = None
                stage.model_path = stored.model_path
                stage.previous_version = stored.previous_version
                await agent.swap_in(stage)
                await agent.config_changed()
                log.info("deployed %s version %s", manifest.stage_id, manifest.version)
                return ctl.DeployResponse(ok=True, stage=stage.info())
        except ResourceRefused as exc:
            # A proper status for any OIP/gRPC client; the step travels in the trailers for ours.
            log.warning("deploy refused at %s: %s", exc.step, exc.message)
            context.set_trailing_metadata(((FAILED_STEP_KEY, exc.step),))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"refused at {exc.step}: {exc.message}")
            raise
        except ModelRejected as exc:
            log.warning("deploy refused at %s: %s", exc.step, exc.message)
            return ctl.DeployResponse(ok=False, failed_step=exc.step, error=exc.message)
        except ValueError as exc:
            return ctl.DeployResponse(ok=False, failed_step=step, error=str(exc))
        finally:
            if upload is not None:
                await agent._in_io(lambda p: p.unlink(missing_ok=True), upload)

    async def _receive(self, request_iterator: AsyncIterator[ctl.DeployRequest], upload: Path,
                       declared: int) -> tuple[str, int]:
        digest = hashlib.sha256()
        received = 0
        handle = await self.agent._in_io(open, upload, "wb")
        try:
            async for message in request_iterator:
                if message.WhichOneof("part") != "chunk":
                    raise ModelRejected("receive", "only model chunks may follow the manifest")
                chunk = message.chunk
                received += len(chunk)
                if received > declared:
                    raise ModelRejected("receive", f"upload exceeds the declared size of {declared} bytes")
                digest.update(chunk)
                await self.agent._in_io(handle.write, chunk)
        finally:
            await self.agent._in_io(handle.close)
        return digest.hexdigest(), received

    async def Rollback(self, request: ctl.RollbackRequest, context: grpc.aio.ServicerContext) -> ctl.StageInfo:
        await self.agent.allow(context, "console")
        agent = self.agent
        async with agent.lock_for(request.stage_id):
            if request.stage_id not in agent.stages:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"stage '{request.stage_id}' is not deployed")
            try:
                stored = await agent._in_io(agent.store.rollback, request.stage_id)
            except LookupError as exc:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
                raise
            try:
                stage = await agent.build_stage(stored.manifest, stored.model_path, stored.previous_version)
            except ModelRejected as exc:
                await agent._in_io(agent.store.rollback, request.stage_id)  # swap back: keep what serves
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"previous version could not be loaded ({exc.step}): {exc.message}")
                raise
            await agent.swap_in(stage)
            await agent.config_changed()
            return stage.info()

    async def Undeploy(self, request: ctl.UndeployRequest,
                       context: grpc.aio.ServicerContext) -> ctl.UndeployResponse:
        await self.agent.allow(context, "console")
        agent = self.agent
        async with agent.lock_for(request.stage_id):
            stage = agent.stages.pop(request.stage_id, None)
            if stage is not None and stage.forwarder is not None:
                await stage.forwarder.async_stop()
            removed = await agent._in_io(agent.store.remove, request.stage_id)
            await agent._in_io(agent.queue.drop_stage, request.stage_id)
            await agent.health.set(f"stage/{request.stage_id}", health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
            if stage is not None or removed:
                await agent.config_changed()
            return ctl.UndeployResponse(removed=stage is not None or removed)

    async def ListStages(self, request: ctl.ListStagesRequest,
                         context: grpc.aio.ServicerContext) -> ctl.ListStagesResponse:
        await self.agent.allow(context, "fleet")
        return ctl.ListStagesResponse(stages=[s.info() for s in self.agent.stages.values()])

    async def UpdatePolicy(self, request: ctl.UpdatePolicyRequest,
                           context: grpc.aio.ServicerContext) -> ctl.StageInfo:
        await self.agent.allow(context, "console")
        agent = self.agent
        async with agent.lock_for(request.stage_id):
            stage = agent.stages.get(request.stage_id)
            if stage is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"stage '{request.stage_id}' is not deployed")
                raise AssertionError("unreachable")
            manifest = ctl.StageManifest()
            manifest.CopyFrom(stage.manifest)
            if request.HasField("rule"):
                manifest.rule.CopyFrom(request.rule)
            if request.HasField("budget"):
                manifest.budget.CopyFrom(request.budget)
            if request.clear_next_hop:
                manifest.ClearField("next_hop")
            elif request.HasField("next_hop"):
                manifest.next_hop.CopyFrom(request.next_hop)
            updated = Stage(manifest=stage.manifest, session=stage.session, model_path=stage.model_path,
                            stats=stage.stats, previous_version=stage.previous_version,
                            activated_unix_ms=stage.activated_unix_ms, placement=stage.placement)
            updated.manifest = manifest
            try:
                updated.apply_policy()
                await asyncio.get_running_loop().run_in_executor(agent.compute, updated.warm_up)
            except ModelRejected as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
                raise
            if stage.manifest.version != "local":
                await agent._in_io(agent.store.save_manifest, manifest)
            await agent.swap_in(updated)
            await agent.config_changed()
            return updated.info()

    async def BeginEnrollment(self, request: ctl.BeginEnrollmentRequest,
                              context: grpc.aio.ServicerContext) -> ctl.BeginEnrollmentResponse:
        await self.agent.allow(context, "enrol")
        try:
            public, nonce, node_proof = self.agent.identity.begin(request.console_nonce, peer_address(context.peer()))
        except AccessDenied as exc:
            await context.abort(exc.code, exc.message)
            raise
        return ctl.BeginEnrollmentResponse(node_id=self.agent.node_id, name=self.agent.config.name,
                                           tier=self.agent.config.tier, public_key_pem=public, node_nonce=nonce,
                                           node_proof=node_proof)

    async def CompleteEnrollment(self, request: ctl.CompleteEnrollmentRequest,
                                 context: grpc.aio.ServicerContext) -> ctl.CompleteEnrollmentResponse:
        await self.agent.allow(context, "enrol")
        agent = self.agent
        try:
            revoked = [int(s) for s in request.revoked_serials]
            fp = await agent._in_io(agent.identity.complete, request.console_nonce, request.node_nonce,
                                    request.ca_pem, request.certificate_pem, request.console_proof, revoked,
                                    peer_address(context.peer()))
        except AccessDenied as exc:
            log.warning("enrolment refused: %s", exc.message)
            await context.abort(exc.code, exc.message)
            raise
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad revoked serial: {exc}")
            raise
        agent._tasks.append(asyncio.create_task(agent.switch_to_fleet_tls(), name="switch-to-fleet-tls"))
        return ctl.CompleteEnrollmentResponse(fingerprint=fp)

    async def UpdateRevocations(self, request: ctl.UpdateRevocationsRequest,
                                context: grpc.aio.ServicerContext) -> ctl.UpdateRevocationsResponse:
        await self.agent.allow(context, "console")
        try:
            serials = [int(s) for s in request.revoked_serials]
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad serial: {exc}")
            raise
        await self.agent._in_io(self.agent.identity.set_revoked, serials)
        log.info("revocation list updated: %d serials", len(serials))
        return ctl.UpdateRevocationsResponse(revoked=len(serials))

    async def ListDeadLetters(self, request: ctl.ListDeadLettersRequest,
                              context: grpc.aio.ServicerContext) -> ctl.ListDeadLettersResponse:
        await self.agent.allow(context, "fleet")
        rows, total = await self.agent._in_io(self.agent.queue.dead_letters, request.stage_id,
                                              min(request.limit or 100, 1000), request.after_seq)
        return ctl.ListDeadLettersResponse(total=total, letters=[
            ctl.DeadLetter(seq=seq, stage_id=sid, request_id=rid, error=error, dead_unix_ms=dead_ms,
                           payload_bytes=size) for seq, sid, rid, error, dead_ms, size in rows])

    async def RetryDeadLetters(self, request: ctl.DeadLetterSelection,
                               context: grpc.aio.ServicerContext) -> ctl.DeadLetterResult:
        await self.agent.allow(context, "console")
        stage = await self._dead_letter_stage(request, context, need_hop=True)
        count = await self.agent._in_io(self.agent.queue.retry_dead, request.stage_id, list(request.seqs))
        stage.stats.dead_letters = max(0, stage.stats.dead_letters - count)
        if stage.forwarder is not None:
            stage.forwarder.requeued(count)
        log.info("stage %s: %d dead letters put back in the queue", request.stage_id, count)
        return ctl.DeadLetterResult(count=count)

    async def DiscardDeadLetters(self, request: ctl.DeadLetterSelection,
                                 context: grpc.aio.ServicerContext) -> ctl.DeadLetterResult:
        await self.agent.allow(context, "console")
        stage = await self._dead_letter_stage(request, context, need_hop=False)
        count = await self.agent._in_io(self.agent.queue.discard_dead, request.stage_id, list(request.seqs))
        stage.stats.dead_letters = max(0, stage.stats.dead_letters - count)
        log.info("stage %s: %d dead letters discarded", request.stage_id, count)
        return ctl.DeadLetterResult(count=count)

    async def _dead_letter_stage(self, request: ctl.DeadLetterSelection, context: grpc.aio.ServicerContext,
                                 need_hop: bool) -> Stage:
        stage = self.agent.stages.get(request.stage_id)
        if stage is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"stage '{request.stage_id}' is not deployed here")
            raise AssertionError("unreachable")
        if need_hop and stage.forwarder is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"stage '{request.stage_id}' has no next hop to retry to")
        return stage

    async def ListHardExamples(self, request: ctl.ListHardExamplesRequest,
                               context: grpc.aio.ServicerContext) -> ctl.ListHardExamplesResponse:
        # The operator's console only: entries carry the sensor's inputs (thumbnails here, tensors below).
        await self.agent.allow(context, "console")
        if request.kind and request.kind not in KINDS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"kind must be one of {', '.join(KINDS)}, got {request.kind!r}")
        read = functools.partial(
            self.agent.ledger.list, stage_id=request.stage_id, kind=request.kind, label=request.label,
            disagreed_only=request.disagreed_only, since_ms=request.since_unix_ms, until_ms=request.until_unix_ms,
            before_seq=request.before_seq, limit=min(request.limit or 100, 1000))
        # The counters first: a write landing during the read then shows in the entries, never only in the
        # counters (a client that waits for a count and then reads the entries gets them all).
        stats = self.agent.ledger.stats()
        entries, total = await asyncio.get_running_loop().run_in_executor(self.agent.ledger_reads, read)
        return ctl.ListHardExamplesResponse(examples=[example_pb(e) for e in entries], total=total,
                                            ledger=ledger_pb(stats))

    async def GetHardExample(self, request: ctl.GetHardExampleRequest,
                             context: grpc.aio.ServicerContext) -> ctl.GetHardExampleResponse:
        await self.agent.allow(context, "console")
        if len(request.seqs) > 256:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "at most 256 entries per GetHardExample")
        ledger = self.agent.ledger
        entries = await asyncio.get_running_loop().run_in_executor(
            self.agent.ledger_reads, lambda: [ledger.get(seq) for seq in request.seqs])
        return ctl.GetHardExampleResponse(examples=[example_pb(e) for e in entries if e is not None])

    async def WatchTelemetry(self, request: ctl.WatchTelemetryRequest,
                             context: grpc.aio.ServicerContext) -> AsyncIterator[ctl.TelemetrySample]:
        await self.agent.allow(context, "fleet")
        interval = request.interval_s or 1.0
        if not 0.1 <= interval <= 10.0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"interval_s must be between 0.1 and 10 seconds, got {interval}")
        window = TelemetryWindow()
        agent = self.agent
        window.sample(ctl.TelemetrySample(interval_s=interval), list(agent.stats.values()))  # baseline
        agent.active_streams += 1
        try:
            while not agent._stopping.is_set():
                await asyncio.sleep(interval)
                sample = ctl.TelemetrySample()
                sample.CopyFrom(agent.node_sample)
                sample.node_id, sample.boot_id = agent.node_id, agent.boot_id
                sample.timestamp_ms = int(time.time() * 1000)
                sample.interval_s = interval
                agent.telemetry_seq += 1
                sample.seq = agent.telemetry_seq
                yield window.sample(sample, list(agent.stats.values()))
        finally:  # also on cancel or deadline: the window dies with the stream
            agent.active_streams -= 1


# -- command line ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The `tierdeck-node` argument parser."""
    parser = argparse.ArgumentParser(
        prog="tierdeck-node",
        description="tierdeck node agent: serves ONNX stages over the Open Inference Protocol (gRPC), escalates "
                    "what a stage cannot settle to its next hop, streams telemetry. Prints one JSON line "
                    '{"event": "listening", "address": ..., "node_id": ...} on stdout once serving; logs go to '
                    "stderr. SIGTERM/SIGINT shut down gracefully.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--name", default=socket.gethostname(), help="node name shown to operators")
    parser.add_argument("--tier", choices=TIERS, default="edge", help="the tier this node serves")
    parser.add_argument("--listen", default="127.0.0.1:50051", metavar="HOST:PORT",
                        help="address to serve on; port 0 picks a free one (default 127.0.0.1:50051)")
    parser.add_argument("--data-dir", type=Path, required=True, metavar="DIR",
                        help="node id, deployed stages and the store-and-forward queue live here")
    parser.add_argument("--stage", action="append", default=[], metavar="[ID=]MODEL.onnx",
                        help="serve a local model as a plain OIP model (repeatable)")
    parser.add_argument("--insecure", action="store_true",
                        help="serve without TLS or enrolment (local development; loopback only). Without it the "
                             "node serves TLS: unenrolled it prints a pairing code and accepts only enrolment, "
                             "enrolled it requires fleet certificates (mutual TLS)")
    parser.add_argument("--allow-insecure-network", action="store_true",
                        help="with --insecure, also allow a non-loopback listen address")
    parser.add_argument("--no-mdns", action="store_true", help="do not advertise over mDNS")
    parser.add_argument("--mdns-interface", action="append", default=[], metavar="IP",
                        help="advertise on this interface address (repeatable; default: the listen address)")
    parser.add_argument("--fleet-id", default="", metavar="ID",
                        help="the fleet this node belongs to, advertised over mDNS (TXT `fleet`); a console run "
                             "with `--fleet-id ID` shows only the nodes of that fleet")
    parser.add_argument("--pairing-rotate-after", type=int, default=1000, help=argparse.SUPPRESS)  # tests
    parser.add_argument("--metrics-port", type=int, metavar="N", help="serve Prometheus metrics on this port")
    parser.add_argument("--idle-watts", type=float, default=5.0, help="power model: watts at idle (estimate)")
    parser.add_argument("--max-watts", type=float, default=25.0, help="power model: watts at full CPU (estimate)")
    parser.add_argument("--power-budget-watts", type=float, default=0.0, help="advertised power budget (0 = none)")
    parser.add_argument("--memory-cap-mb", type=float, default=0.0,
                        help="refuse models that would need more memory than this (0 = no cap)")
    parser.add_argument("--queue-limit", type=int, default=100_000,
                        help="store-and-forward bound, escalations per stage (default 100000)")
    parser.add_argument("--ledger-max-mb", type=float, default=DEFAULT_MAX_MB, metavar="MB",
                        help="hard-example ledger (escalated rows and disagreeing shadow rows, with their inputs, "
                             "under DATA_DIR/ledger.sqlite): the oldest rows go past this size on disk, MiB "
                             f"(default {DEFAULT_MAX_MB:g}; 0 = record nothing); evictions are counted")
    parser.add_argument("--ledger-max-age-h", type=float, default=DEFAULT_MAX_AGE_H, metavar="HOURS",
                        help=f"hard-example ledger: rows older than this are deleted (default {DEFAULT_MAX_AGE_H:g}, "
                             "a week); counted as expired")
    parser.add_argument("--ledger-max-rows-per-s", type=float, default=DEFAULT_MAX_ROWS_PER_S, metavar="N",
                        help=f"hard-example ledger: rows recorded per second at most (default "
                             f"{DEFAULT_MAX_ROWS_PER_S:g}; 0 = every row); the rest are counted as dropped, so "
                             "recording never costs the request path much")
    parser.add_argument("--ort-threads", type=int, default=1,
                        help="onnxruntime intra-op threads per session (also OpenVINO's thread count)")
    parser.add_argument("--no-ort-arena", dest="ort_arena", action="store_false",
                        help="give onnxruntime's working memory back after every run (flat RSS on memory-tight "
                             "boxes, at a CPU cost: each run faults its pages in again); by default it is kept "
                             "for the next run")
    parser.add_argument("--max-message-mb", type=int, default=256, help="largest gRPC message accepted, MiB")
    parser.add_argument("--providers", default="", metavar="LIST",
                        help="execution providers in order of preference, comma-separated (tensorrt, cuda, openvino, "
                             "cpu or full onnxruntime names); default: the best the installed onnxruntime build "
                             "offers (TensorRT, CUDA, OpenVINO, then CPU). The CPU provider always closes the list")
    parser.add_argument("--device-id", type=int, default=0, help="GPU index for CUDA and TensorRT (default 0)")
    parser.add_argument("--openvino-device", default="CPU", metavar="TYPE",
                        help="OpenVINO device type: CPU, GPU, NPU, AUTO:GPU,CPU, ... (default CPU)")
    parser.add_argument("--trt-fp16", action="store_true",
                        help="let TensorRT build FP16 engines (faster; answers differ from FP32 in the 3rd decimal). "
                             "Engines are cached under DATA_DIR/provider-cache")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """Validate the command line into an AgentConfig; SystemExit with a clear message on misuse."""
    host, _ = split_address(args.listen)
    if args.insecure and not _is_loopback(host) and not args.allow_insecure_network:
        raise SystemExit(f"tierdeck-node: refusing to serve without TLS on non-loopback address {host}; "
                         "pass --allow-insecure-network if you really mean it")
    if args.fleet_id:
        from discovery import check_fleet_id

        try:
            check_fleet_id(args.fleet_id)
        except ValueError as exc:
            raise SystemExit(f"tierdeck-node: --fleet-id: {exc}") from None
    preload = []
    for item in args.stage:
        stage_id, _, path = item.rpartition("=")
        model = Path(path)
        if not model.is_file():
            raise SystemExit(f"tierdeck-node: --stage {item}: no such model file")
        preload.append((stage_id or model.stem, model))
    if args.ledger_max_mb < 0 or args.ledger_max_age_h <= 0 or args.ledger_max_rows_per_s < 0:
        raise SystemExit("tierdeck-node: --ledger-max-mb and --ledger-max-rows-per-s must be 0 or more, "
                         "--ledger-max-age-h more than 0")
    try:
        providers = ProviderSettings.parse_order(args.providers) if args.providers else ()
    except ValueError as exc:
        raise SystemExit(f"tierdeck-node: {exc}") from exc
    return AgentConfig(
        name=args.name, tier=args.tier, data_dir=args.data_dir, listen=args.listen, preload=preload,
        insecure=bool(args.insecure), allow_insecure_network=args.allow_insecure_network, mdns=not args.no_mdns,
        mdns_interfaces=args.mdns_interface, metrics_port=args.metrics_port, idle_watts=args.idle_watts,
        max_watts=args.max_watts, memory_cap_mb=args.memory_cap_mb, power_budget_watts=args.power_budget_watts,
        queue_limit=args.queue_limit, ort_threads=args.ort_threads, ort_arena=args.ort_arena,
        max_message_mb=args.max_message_mb,
        fleet_id=args.fleet_id, pairing_rotate_after=args.pairing_rotate_after,
        providers=providers, device_id=args.device_id, openvino_device=args.openvino_device, trt_fp16=args.trt_fp16,
        ledger_max_mb=args.ledger_max_mb, ledger_max_age_h=args.ledger_max_age_h,
        ledger_max_rows_per_s=args.ledger_max_rows_per_s,
    )


async def async_run(config: AgentConfig) -> None:
    """Run an agent until SIGTERM/SIGINT."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    # Handlers first: a supervisor may send SIGTERM the moment it reads the listening line.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(config)
    address = await agent.async_start()
    line: dict[str, object] = {"event": "listening", "address": address, "node_id": agent.node_id,
                               "tls": not config.insecure, "enrolled": agent.identity.enrolled}
    if agent.identity.pairing_code:
        line["pairing_code"] = agent.identity.pairing_code
        log.warning("node is not enrolled; pairing code: %s", agent.identity.pairing_code)
    if agent.metrics_port is not None:
        line["metrics_port"] = agent.metrics_port
    line["providers"] = list(agent.provider_order)
    if agent.runtime_problems:
        line["runtime_problems"] = agent.runtime_problems
    print(json.dumps(line), flush=True)
    log.info("node %s (%s, %s tier) serving on %s", agent.node_id, config.name, config.tier, address)
    await stop.wait()
    log.info("shutting down")
    await agent.async_stop()


MALLOC_KEEP_BYTES = 4 << 20  # see _limit_malloc_arenas


def _limit_malloc_arenas(arenas: int = 2, keep: int = MALLOC_KEEP_BYTES) -> None:
    """glibc gives each thread (gRPC, onnxruntime) its own malloc arena, and RSS creeps up with bursts; cap them.

    And let freed blocks of up to `keep` bytes be reused instead of handed back to the kernel at once: a batch of
    32 image rows is a 512 KiB message, and with glibc's start-up thresholds every message's buffers were unmapped
    (or the heap trimmed) when freed and page-faulted in again for the next one — measured, more than half of the
    agent's CPU per batch-32 message (940 -> 430 µs per ModelInfer, 480 -> 210 µs per StreamInfer message).
    glibc raises its mmap threshold to the size of a mapped block when one is freed, and its trim threshold to
    twice that; freeing one `keep`-sized block starts both there and keeps that adjustment going (fixing them
    with mallopt instead stops it, and a large model's activations were then mapped afresh on every run)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        libc.free(libc.malloc(keep))  # a mapped block (above the 128 KiB start threshold), freed: thresholds rise
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point of `tierdeck-node`."""
    arm_from_env()  # first: a supervisor's child dies with it (runners/_lifeline.py)
    _limit_malloc_arenas()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_args(args)
    try:
        asyncio.run(async_run(config))
    except (OSError, ValueError, ModelRejected) as exc:
        print(f"tierdeck-node: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
