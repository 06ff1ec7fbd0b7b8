"""Frozen records that cross threads: node snapshots, telemetry samples, console events.

Everything the core hands to a listener (the Qt models, the headless commands, tests) is one of
these: immutable, so the loop thread can publish it and any other thread can read it.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from app._miss import ShadowCounts
from runners._proto import tierdeck_control_pb2 as ctl
from runners._providers import accelerators, describe
from runners._shadow import shadow_rate


def now_ms() -> int:
    """Wall-clock time in Unix milliseconds."""
    return int(time.time() * 1000)


class NodeState(enum.StrEnum):
    """Connection state of a node, driven by gRPC health and the telemetry stream (not by mDNS)."""

    DISCOVERED = "discovered"   # known (mDNS, fleet file, manual add), not contacted yet
    CONNECTING = "connecting"   # first contact in progress
    ONLINE = "online"           # health SERVING and telemetry flowing
    DEGRADED = "degraded"       # reachable, but something is wrong (see NodeSnapshot.reasons)
    OFFLINE = "offline"         # unreachable; reconnecting with backoff


@dataclass(frozen=True)
class NodeInfoSummary:
    """What GetNodeInfo told about a node's hardware and software."""

    agent_version: str = ""
    cpu_cores: int = 0
    ram_total_bytes: int = 0
    ram_free_bytes: int = 0
    execution_providers: tuple[str, ...] = ()
    power_source: str = ""
    power_measured: bool = False
    hostname: str = ""
    platform: str = ""
    onnxruntime_version: str = ""
    memory_cap_bytes: int = 0
    power_budget_watts: float = 0.0
    config_counter: int = 0
    started_unix_ms: int = 0
    boot_id: str = ""
    insecure: bool = True
    enrolled: bool = False
    fingerprint: str = ""
    provider_preference: tuple[str, ...] = ()   # the agent's order (what it offers, best first; CPU last)
    onnxruntime_build: str = ""                  # e.g. "onnxruntime-openvino 1.24.1"
    runtime_problems: tuple[str, ...] = ()       # e.g. a broken mix of onnxruntime builds

    @property
    def accelerators(self) -> tuple[str, ...]:
        """Providers other than the CPU one, in the agent's order (what the node card calls its accelerators)."""
        return tuple(accelerators(self.provider_preference or self.execution_providers))

    @classmethod
    def from_proto(cls, info: ctl.NodeInfo) -> NodeInfoSummary:
        """Build from a NodeInfo message."""
        return cls(
            agent_version=info.agent_version, cpu_cores=info.cpu_cores, ram_total_bytes=info.ram_total_bytes,
            ram_free_bytes=info.ram_free_bytes, execution_providers=tuple(info.execution_providers),
            power_source=info.power_source, power_measured=info.power_measured, hostname=info.hostname,
            platform=info.platform, onnxruntime_version=info.onnxruntime_version,
            memory_cap_bytes=info.memory_cap_bytes, power_budget_watts=info.power_budget_watts,
            config_counter=info.config_counter, started_unix_ms=info.started_unix_ms, boot_id=info.boot_id,
            insecure=info.insecure, enrolled=info.enrolled, fingerprint=info.fingerprint,
            provider_preference=tuple(info.provider_preference), onnxruntime_build=info.onnxruntime_build,
            runtime_problems=tuple(info.runtime_problems),
        )

    def as_json(self) -> dict[str, Any]:
        """A plain dict for JSON output and the database."""
        return {
            "agent_version": self.agent_version, "cpu_cores": self.cpu_cores,
            "ram_total_bytes": self.ram_total_bytes, "ram_free_bytes": self.ram_free_bytes,
            "execution_providers": list(self.execution_providers), "power_source": self.power_source,
            "power_measured": self.power_measured, "hostname": self.hostname, "platform": self.platform,
            "onnxruntime_version": self.onnxruntime_version, "memory_cap_bytes": self.memory_cap_bytes,
            "power_budget_watts": self.power_budget_watts, "config_counter": self.config_counter,
            "started_unix_ms": self.started_unix_ms, "boot_id": self.boot_id, "insecure": self.insecure,
            "enrolled": self.enrolled, "fingerprint": self.fingerprint,
            "provider_preference": list(self.provider_preference), "onnxruntime_build": self.onnxruntime_build,
            "runtime_problems": list(self.runtime_problems),
        }


@dataclass(frozen=True)
class StageSnapshot:
    """One stage deployed on a node, as ListStages (and the stage's health check) reported it."""

    stage_id: str
    version: str
    sha256: str = ""
    state: str = "ready"
    serving: bool = True
    previous_version: str = ""
    activated_unix_ms: int = 0
    model_bytes: int = 0
    next_hop: str = ""            # HOST:PORT of the next tier, "" for the last tier
    next_model: str = ""
    rule: str = ""                # the escalation rule in words, e.g. "confidence < 0.6"
    max_escalations_per_s: float = 0.0
    priority: str = ""
    shadow_rate: float = 0.0      # share of settled rows sent up in shadow mode (0 on the last tier)
    runs_on: str = ""             # the provider its session really runs on ("" from an older agent)
    cpu_fallback_nodes: int = 0
    session_providers: tuple[str, ...] = ()
    warmup_ms: float = 0.0
    placement_notes: tuple[str, ...] = ()  # providers left out because they could not take the model

    @property
    def runs_on_text(self) -> str:
        """'runs on OpenVINO (CPU fallback for 2 nodes)', or '' when the agent did not say."""
        return describe(self.runs_on, self.cpu_fallback_nodes)
    # the rule's values: (output, labels, confidence_below, class_in, score_above, drop_class); () when none
    rule_values: tuple[Any, ...] = ()

    @classmethod
    def from_proto(cls, info: ctl.StageInfo, serving: bool = True) -> StageSnapshot:
        """Build from a StageInfo message."""
        m = info.manifest
        return cls(
            stage_id=m.stage_id, version=m.version, sha256=m.sha256, state=info.state, serving=serving,
            previous_version=info.previous_version, activated_unix_ms=info.activated_unix_ms,
            model_bytes=info.model_bytes,
            next_hop=m.next_hop.address if m.HasField("next_hop") else "",
            next_model=m.next_hop.model if m.HasField("next_hop") else "",
            rule=describe_rule(m.rule) if m.HasField("rule") else "",
            max_escalations_per_s=m.budget.max_escalations_per_s, priority=m.budget.priority,
            shadow_rate=shadow_rate(m.budget) if m.HasField("next_hop") else 0.0,
            runs_on=info.runs_on, cpu_fallback_nodes=info.cpu_fallback_nodes,
            session_providers=tuple(info.session_providers), warmup_ms=info.warmup_ms,
            placement_notes=tuple(info.placement_notes),
            rule_values=rule_values(m.rule) if m.HasField("rule") else (),
        )

    def as_json(self) -> dict[str, Any]:
        """A plain dict for JSON output."""
        return {
            "stage_id": self.stage_id, "version": self.version, "sha256": self.sha256, "state": self.state,
            "serving": self.serving, "previous_version": self.previous_version,
            "activated_unix_ms": self.activated_unix_ms, "model_bytes": self.model_bytes,
            "next_hop": self.next_hop, "next_model": self.next_model, "rule": self.rule,
            "max_escalations_per_s": self.max_escalations_per_s, "priority": self.priority,
            "shadow_rate": self.shadow_rate,
            "runs_on": self.runs_on, "cpu_fallback_nodes": self.cpu_fallback_nodes,
            "session_providers": list(self.session_providers), "warmup_ms": self.warmup_ms,
            "placement_notes": list(self.placement_notes),
        }


def rule_values(rule: ctl.EscalationRule) -> tuple[Any, ...]:
    """(output, labels, confidence_below, class_in, score_above, drop_class) of a rule; None where unset."""
    return (rule.output, tuple(rule.labels),
            rule.confidence_below if rule.HasField("confidence_below") else None, tuple(rule.class_in),
            rule.score_above if rule.HasField("score_above") else None, tuple(rule.drop_class))


def describe_rule(rule: ctl.EscalationRule) -> str:
    """An escalation rule in a few words for operators."""
    parts = []
    if rule.drop_class:
        parts.append(f"drop {'/'.join(rule.drop_class)}")
    if rule.class_in:
        parts.append(f"escalate {'/'.join(rule.class_in)}")
    if rule.HasField("confidence_below"):
        parts.append(f"confidence < {rule.confidence_below:g}")
    if rule.HasField("score_above"):
        parts.append(f"score > {rule.score_above:g}")
    return ", ".join(parts)


@dataclass(frozen=True)
class NodeSnapshot:
    """Everything the console knows about one node at one moment.

    `key` is the node id once the node answered GetNodeInfo; before that a fleet-file or manual
    entry is keyed `addr:HOST:PORT` (and `node_id` is "").
    """

    key: str
    node_id: str
    name: str
    tier: str
    address: str
    source: str = "manual"                      # mdns | fleet-file | manual
    state: NodeState = NodeState.DISCOVERED
    state_since_ms: int = 0
    reasons: tuple[str, ...] = ()               # why degraded/offline, in words
    info: NodeInfoSummary | None = None
    stages: tuple[StageSnapshot, ...] = ()
    last_sample_ms: int = 0
    boot_id: str = ""

    @property
    def reason(self) -> str:
        """All reasons as one sentence ("" when none)."""
        return "; ".join(self.reasons)

    def stage(self, stage_id: str) -> StageSnapshot | None:
        """The deployed stage with this id, or None."""
        return next((s for s in self.stages if s.stage_id == stage_id), None)

    def as_json(self) -> dict[str, Any]:
        """A plain dict for JSON output."""
        return {
            "key": self.key, "node_id": self.node_id, "name": self.name, "tier": self.tier,
            "address": self.address, "source": self.source, "state": str(self.state),
            "state_since_ms": self.state_since_ms, "reasons": list(self.reasons),
            "info": self.info.as_json() if self.info else None,
            "stages": [s.as_json() for s in self.stages], "last_sample_ms": self.last_sample_ms,
            "boot_id": self.boot_id,
        }


class FleetEventKind(enum.StrEnum):
    """What happened to a node."""

    ADDED = "added"
    CHANGED = "changed"            # identity, info, stages or reasons changed (state unchanged)
    STATE_CHANGED = "state_changed"
    REKEYED = "rekeyed"            # an addr: entry learned its node id; previous_key is the old key
    REMOVED = "removed"            # forgotten by the operator (or merged into an existing node)


@dataclass(frozen=True)
class FleetEvent:
    """A change of one node; `node` is the snapshot after the change."""

    kind: FleetEventKind
    node: NodeSnapshot
    previous_key: str = ""
    previous_state: NodeState | None = None


class StageSample(NamedTuple):
    """One stage's figures in one telemetry sample: cumulative counters, deltas and interval figures."""

    stage_id: str
    requests_total: int
    inferences_total: int
    escalated_total: int
    forwarded_total: int
    dropped_total: int
    shed_total: int
    queued_total: int
    delivered_total: int
    overflow_total: int
    provisional_total: int
    errors_total: int
    duplicates_total: int
    dead_letter_total: int
    hop_errors_total: int
    hop_calls_total: int
    shadow_sent_total: int
    shadow_answered_total: int
    shadow_agreed_total: int
    shadow_shed_total: int
    # Increments since the previous sample of the same boot (the console computes them).
    inferences: int
    escalated: int
    dropped: int
    errors: int
    shed: int
    overflow: int
    # Over the agent's last interval.
    inferences_per_s: float
    escalated_per_s: float
    escalation_rate: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    queue_depth: int
    link_state: str
    energy_joules_total: float
    energy_per_inference_j: float
    score_kind: str
    score_histogram: tuple[int, ...]
    # The next hop as this stage sees it: escalations kept aside now, latency p95 of its forwarded calls.
    dead_letters: int = 0
    hop_latency_p95_ms: float = 0.0
    # The link's shadow sample (app/_miss.py), cumulative for the boot; None when the stage has no next hop.
    shadow: ShadowCounts | None = None


class NodeSample(NamedTuple):
    """One telemetry sample of one node, accepted (not a duplicate) and numbered within its boot."""

    node_id: str
    boot_id: str
    seq: int
    ts_ms: int
    interval_s: float
    cpu_percent: float
    rss_bytes: int
    power_watts: float
    power_source: str
    power_measured: bool
    energy_joules_total: float
    energy_joules: float        # increment since the previous sample of the same boot
    backlog: int
    stages: tuple[StageSample, ...]

    def stage(self, stage_id: str) -> StageSample | None:
        """This sample's figures for one stage, or None."""
        return next((s for s in self.stages if s.stage_id == stage_id), None)


class Severity(enum.StrEnum):
    """How much an event matters to the operator."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class ConsoleEvent:
    """One line of the audit log: deployments, failures, node state changes, database trouble."""

    kind: str                  # e.g. node_state, deploy, deploy_step, rollback, database, discovery
    message: str
    severity: Severity = Severity.INFO
    node_id: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    ts_ms: int = field(default_factory=now_ms)

    def as_json(self) -> dict[str, Any]:
        """A plain dict for JSON output."""
        return {"ts_ms": self.ts_ms, "kind": self.kind, "severity": str(self.severity), "node_id": self.node_id,
                "message": self.message, "detail": self.detail}
