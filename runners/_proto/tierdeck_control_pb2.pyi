from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BeginEnrollmentRequest(_message.Message):
    __slots__ = ("console_nonce",)
    CONSOLE_NONCE_FIELD_NUMBER: _ClassVar[int]
    console_nonce: bytes
    def __init__(self, console_nonce: _Optional[bytes] = ...) -> None: ...

class BeginEnrollmentResponse(_message.Message):
    __slots__ = ("node_id", "name", "tier", "public_key_pem", "node_nonce", "node_proof")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    NODE_NONCE_FIELD_NUMBER: _ClassVar[int]
    NODE_PROOF_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    name: str
    tier: str
    public_key_pem: bytes
    node_nonce: bytes
    node_proof: bytes
    def __init__(self, node_id: _Optional[str] = ..., name: _Optional[str] = ..., tier: _Optional[str] = ..., public_key_pem: _Optional[bytes] = ..., node_nonce: _Optional[bytes] = ..., node_proof: _Optional[bytes] = ...) -> None: ...

class CompleteEnrollmentRequest(_message.Message):
    __slots__ = ("console_nonce", "node_nonce", "ca_pem", "certificate_pem", "console_proof", "revoked_serials")
    CONSOLE_NONCE_FIELD_NUMBER: _ClassVar[int]
    NODE_NONCE_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CONSOLE_PROOF_FIELD_NUMBER: _ClassVar[int]
    REVOKED_SERIALS_FIELD_NUMBER: _ClassVar[int]
    console_nonce: bytes
    node_nonce: bytes
    ca_pem: bytes
    certificate_pem: bytes
    console_proof: bytes
    revoked_serials: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, console_nonce: _Optional[bytes] = ..., node_nonce: _Optional[bytes] = ..., ca_pem: _Optional[bytes] = ..., certificate_pem: _Optional[bytes] = ..., console_proof: _Optional[bytes] = ..., revoked_serials: _Optional[_Iterable[str]] = ...) -> None: ...

class CompleteEnrollmentResponse(_message.Message):
    __slots__ = ("fingerprint",)
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    def __init__(self, fingerprint: _Optional[str] = ...) -> None: ...

class UpdateRevocationsRequest(_message.Message):
    __slots__ = ("revoked_serials",)
    REVOKED_SERIALS_FIELD_NUMBER: _ClassVar[int]
    revoked_serials: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, revoked_serials: _Optional[_Iterable[str]] = ...) -> None: ...

class UpdateRevocationsResponse(_message.Message):
    __slots__ = ("revoked",)
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    revoked: int
    def __init__(self, revoked: _Optional[int] = ...) -> None: ...

class GetNodeInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "name", "tier", "agent_version", "cpu_cores", "ram_total_bytes", "ram_free_bytes", "execution_providers", "power_source", "power_measured", "hostname", "platform", "onnxruntime_version", "memory_cap_bytes", "power_budget_watts", "config_counter", "started_unix_ms", "boot_id", "insecure", "enrolled", "fingerprint", "active_streams", "provider_preference", "onnxruntime_build", "runtime_problems", "hard_example_ledger")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    RAM_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    RAM_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    POWER_SOURCE_FIELD_NUMBER: _ClassVar[int]
    POWER_MEASURED_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_CAP_BYTES_FIELD_NUMBER: _ClassVar[int]
    POWER_BUDGET_WATTS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_COUNTER_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    INSECURE_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_STREAMS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_BUILD_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    HARD_EXAMPLE_LEDGER_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    name: str
    tier: str
    agent_version: str
    cpu_cores: int
    ram_total_bytes: int
    ram_free_bytes: int
    execution_providers: _containers.RepeatedScalarFieldContainer[str]
    power_source: str
    power_measured: bool
    hostname: str
    platform: str
    onnxruntime_version: str
    memory_cap_bytes: int
    power_budget_watts: float
    config_counter: int
    started_unix_ms: int
    boot_id: str
    insecure: bool
    enrolled: bool
    fingerprint: str
    active_streams: int
    provider_preference: _containers.RepeatedScalarFieldContainer[str]
    onnxruntime_build: str
    runtime_problems: _containers.RepeatedScalarFieldContainer[str]
    hard_example_ledger: HardExampleLedger
    def __init__(self, node_id: _Optional[str] = ..., name: _Optional[str] = ..., tier: _Optional[str] = ..., agent_version: _Optional[str] = ..., cpu_cores: _Optional[int] = ..., ram_total_bytes: _Optional[int] = ..., ram_free_bytes: _Optional[int] = ..., execution_providers: _Optional[_Iterable[str]] = ..., power_source: _Optional[str] = ..., power_measured: _Optional[bool] = ..., hostname: _Optional[str] = ..., platform: _Optional[str] = ..., onnxruntime_version: _Optional[str] = ..., memory_cap_bytes: _Optional[int] = ..., power_budget_watts: _Optional[float] = ..., config_counter: _Optional[int] = ..., started_unix_ms: _Optional[int] = ..., boot_id: _Optional[str] = ..., insecure: _Optional[bool] = ..., enrolled: _Optional[bool] = ..., fingerprint: _Optional[str] = ..., active_streams: _Optional[int] = ..., provider_preference: _Optional[_Iterable[str]] = ..., onnxruntime_build: _Optional[str] = ..., runtime_problems: _Optional[_Iterable[str]] = ..., hard_example_ledger: _Optional[_Union[HardExampleLedger, _Mapping]] = ...) -> None: ...

class EscalationRule(_message.Message):
    __slots__ = ("output", "labels", "confidence_below", "class_in", "score_above", "drop_class", "scores")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_BELOW_FIELD_NUMBER: _ClassVar[int]
    CLASS_IN_FIELD_NUMBER: _ClassVar[int]
    SCORE_ABOVE_FIELD_NUMBER: _ClassVar[int]
    DROP_CLASS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    output: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    confidence_below: float
    class_in: _containers.RepeatedScalarFieldContainer[str]
    score_above: float
    drop_class: _containers.RepeatedScalarFieldContainer[str]
    scores: str
    def __init__(self, output: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., confidence_below: _Optional[float] = ..., class_in: _Optional[_Iterable[str]] = ..., score_above: _Optional[float] = ..., drop_class: _Optional[_Iterable[str]] = ..., scores: _Optional[str] = ...) -> None: ...

class NextHop(_message.Message):
    __slots__ = ("address", "model", "model_version", "labels", "timeout_s", "node_id", "external", "tls_ca", "tls_cert", "tls_key", "output", "input_names")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_FIELD_NUMBER: _ClassVar[int]
    TLS_CA_FIELD_NUMBER: _ClassVar[int]
    TLS_CERT_FIELD_NUMBER: _ClassVar[int]
    TLS_KEY_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    INPUT_NAMES_FIELD_NUMBER: _ClassVar[int]
    address: str
    model: str
    model_version: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    timeout_s: float
    node_id: str
    external: bool
    tls_ca: bytes
    tls_cert: bytes
    tls_key: bytes
    output: str
    input_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, address: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., timeout_s: _Optional[float] = ..., node_id: _Optional[str] = ..., external: _Optional[bool] = ..., tls_ca: _Optional[bytes] = ..., tls_cert: _Optional[bytes] = ..., tls_key: _Optional[bytes] = ..., output: _Optional[str] = ..., input_names: _Optional[_Iterable[str]] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("max_escalations_per_s", "priority", "shadow_rate")
    MAX_ESCALATIONS_PER_S_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    SHADOW_RATE_FIELD_NUMBER: _ClassVar[int]
    max_escalations_per_s: float
    priority: str
    shadow_rate: float
    def __init__(self, max_escalations_per_s: _Optional[float] = ..., priority: _Optional[str] = ..., shadow_rate: _Optional[float] = ...) -> None: ...

class StageManifest(_message.Message):
    __slots__ = ("stage_id", "version", "sha256", "size_bytes", "input_names", "output_names", "rule", "next_hop", "budget", "max_batch", "providers")
    STAGE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    INPUT_NAMES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NAMES_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    NEXT_HOP_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    stage_id: str
    version: str
    sha256: str
    size_bytes: int
    input_names: _containers.RepeatedScalarFieldContainer[str]
    output_names: _containers.RepeatedScalarFieldContainer[str]
    rule: EscalationRule
    next_hop: NextHop
    budget: Budget
    max_batch: int
    providers: ProviderChoice
    def __init__(self, stage_id: _Optional[str] = ..., version: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., input_names: _Optional[_Iterable[str]] = ..., output_names: _Optional[_Iterable[str]] = ..., rule: _Optional[_Union[EscalationRule, _Mapping]] = ..., next_hop: _Optional[_Union[NextHop, _Mapping]] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., max_batch: _Optional[int] = ..., providers: _Optional[_Union[ProviderChoice, _Mapping]] = ...) -> None: ...

class ProviderChoice(_message.Message):
    __slots__ = ("require", "prefer")
    REQUIRE_FIELD_NUMBER: _ClassVar[int]
    PREFER_FIELD_NUMBER: _ClassVar[int]
    require: _containers.RepeatedScalarFieldContainer[str]
    prefer: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, require: _Optional[_Iterable[str]] = ..., prefer: _Optional[_Iterable[str]] = ...) -> None: ...

class ProviderNodes(_message.Message):
    __slots__ = ("provider", "nodes")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    provider: str
    nodes: int
    def __init__(self, provider: _Optional[str] = ..., nodes: _Optional[int] = ...) -> None: ...

class DeployRequest(_message.Message):
    __slots__ = ("manifest", "chunk")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    manifest: StageManifest
    chunk: bytes
    def __init__(self, manifest: _Optional[_Union[StageManifest, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class DeployResponse(_message.Message):
    __slots__ = ("ok", "failed_step", "error", "stage")
    OK_FIELD_NUMBER: _ClassVar[int]
    FAILED_STEP_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    failed_step: str
    error: str
    stage: StageInfo
    def __init__(self, ok: _Optional[bool] = ..., failed_step: _Optional[str] = ..., error: _Optional[str] = ..., stage: _Optional[_Union[StageInfo, _Mapping]] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("stage_id",)
    STAGE_ID_FIELD_NUMBER: _ClassVar[int]
    stage_id: str
    def __init__(self, stage_id: _Optional[str] = ...) -> None: ...

class UndeployRequest(_message.Message):
    __slots__ = ("stage_id",)
    STAGE_ID_FIELD_NUMBER: _ClassVar[int]
    stage_id: str
    def __init__(self, stage_id: _Optional[str] = ...) -> None: ...

class UndeployResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class ListStagesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListStagesResponse(_message.Message):
    __slots__ = ("stages",)
    STAGES_FIELD_NUMBER: _ClassVar[int]
    stages: _containers.RepeatedCompositeFieldContainer[StageInfo]
    def __init__(self, stages: _Optional[_Iterable[_Union[StageInfo, _Mapping]]] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "datatype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class StageInfo(_message.Message):
    __slots__ = ("manifest", "state", "previous_version", "activated_unix_ms", "inputs", "outputs", "model_bytes", "session_providers", "runs_on", "cpu_fallback_nodes", "placement", "placement_source", "warmup_first_ms", "warmup_ms", "placement_notes")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SESSION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    RUNS_ON_FIELD_NUMBER: _ClassVar[int]
    CPU_FALLBACK_NODES_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_SOURCE_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIRST_MS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_MS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_NOTES_FIELD_NUMBER: _ClassVar[int]
    manifest: StageManifest
    state: str
    previous_version: str
    activated_unix_ms: int
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    model_bytes: int
    session_providers: _containers.RepeatedScalarFieldContainer[str]
    runs_on: str
    cpu_fallback_nodes: int
    placement: _containers.RepeatedCompositeFieldContainer[ProviderNodes]
    placement_source: str
    warmup_first_ms: float
    warmup_ms: float
    placement_notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, manifest: _Optional[_Union[StageManifest, _Mapping]] = ..., state: _Optional[str] = ..., previous_version: _Optional[str] = ..., activated_unix_ms: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., model_bytes: _Optional[int] = ..., session_providers: _Optional[_Iterable[str]] = ..., runs_on: _Optional[str] = ..., cpu_fallback_nodes: _Optional[int] = ..., placement: _Optional[_Iterable[_Union[ProviderNodes, _Mapping]]] = ..., placement_source: _Optional[str] = ..., warmup_first_ms: _Optional[float] = ..., warmup_ms: _Optional[float] = ..., placement_notes: _Optional[_Iterable[str]] = ...) -> None: ...

class UpdatePolicyRequest(_message.Message):
    __slots__ = ("stage_id", "rule", "budget", "next_hop", "clear_next_hop")
    STAGE_ID_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    NEXT_HOP_FIELD_NUMBER: _ClassVar[int]
    CLEAR_NEXT_HOP_FIELD_NUMBER: _ClassVar[int]
    stage_id: str
    rule: EscalationRule
    budget: Budget
    next_hop: NextHop
    clear_next_hop: bool
    def __init__(self, stage_id: _Optional[str] = ..., rule: _Optional[_Union[EscalationRule, _Mapping]] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., next_hop: _Optional[_Union[NextHop, _Mapping]] = ..., clear_next_hop: _Optional[bool] = ...) -> None: ...

class WatchTelemetryRequest(_message.Message):
    __slots__ = ("interval_s",)
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    interval_s: float
    def __init__(self, interval_s: _Optional[float] = ...) -> None: ...

class StageTelemetry(_message.Message):
    __slots__ = ("stage_id", "requests_total", "inferences_total", "escalated_total", "forwarded_total", "dropped_total", "shed_total", "queued_total", "delivered_total", "overflow_total", "provisional_total", "errors_total", "compute_seconds_total", "compute_cpu_seconds_total", "duplicates_total", "inferences_per_s", "escalated_per_s", "escalation_rate", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "queue_depth", "link_state", "energy_joules_total", "energy_per_inference_j", "score_kind", "score_histogram", "runs_on", "cpu_fallback_nodes", "energy_source", "energy_measured", "dead_letter_total", "dead_letters", "hop_latency_p95_ms", "hop_errors_total", "hop_calls_total", "shadow_sent_total", "shadow_answered_total", "shadow_agreed_total", "shadow_shed_total", "shadow")
    STAGE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    INFERENCES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ESCALATED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FORWARDED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DROPPED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SHED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    QUEUED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    OVERFLOW_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PROVISIONAL_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERRORS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_CPU_SECONDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    INFERENCES_PER_S_FIELD_NUMBER: _ClassVar[int]
    ESCALATED_PER_S_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_RATE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    LINK_STATE_FIELD_NUMBER: _ClassVar[int]
    ENERGY_JOULES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ENERGY_PER_INFERENCE_J_FIELD_NUMBER: _ClassVar[int]
    SCORE_KIND_FIELD_NUMBER: _ClassVar[int]
    SCORE_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    RUNS_ON_FIELD_NUMBER: _ClassVar[int]
    CPU_FALLBACK_NODES_FIELD_NUMBER: _ClassVar[int]
    ENERGY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    ENERGY_MEASURED_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    HOP_LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    HOP_ERRORS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    HOP_CALLS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SHADOW_SENT_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SHADOW_ANSWERED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SHADOW_AGREED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SHADOW_SHED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
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
    compute_seconds_total: float
    compute_cpu_seconds_total: float
    duplicates_total: int
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
    score_histogram: _containers.RepeatedScalarFieldContainer[int]
    runs_on: str
    cpu_fallback_nodes: int
    energy_source: str
    energy_measured: bool
    dead_letter_total: int
    dead_letters: int
    hop_latency_p95_ms: float
    hop_errors_total: int
    hop_calls_total: int
    shadow_sent_total: int
    shadow_answered_total: int
    shadow_agreed_total: int
    shadow_shed_total: int
    shadow: ShadowTelemetry
    def __init__(self, stage_id: _Optional[str] = ..., requests_total: _Optional[int] = ..., inferences_total: _Optional[int] = ..., escalated_total: _Optional[int] = ..., forwarded_total: _Optional[int] = ..., dropped_total: _Optional[int] = ..., shed_total: _Optional[int] = ..., queued_total: _Optional[int] = ..., delivered_total: _Optional[int] = ..., overflow_total: _Optional[int] = ..., provisional_total: _Optional[int] = ..., errors_total: _Optional[int] = ..., compute_seconds_total: _Optional[float] = ..., compute_cpu_seconds_total: _Optional[float] = ..., duplicates_total: _Optional[int] = ..., inferences_per_s: _Optional[float] = ..., escalated_per_s: _Optional[float] = ..., escalation_rate: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., queue_depth: _Optional[int] = ..., link_state: _Optional[str] = ..., energy_joules_total: _Optional[float] = ..., energy_per_inference_j: _Optional[float] = ..., score_kind: _Optional[str] = ..., score_histogram: _Optional[_Iterable[int]] = ..., runs_on: _Optional[str] = ..., cpu_fallback_nodes: _Optional[int] = ..., energy_source: _Optional[str] = ..., energy_measured: _Optional[bool] = ..., dead_letter_total: _Optional[int] = ..., dead_letters: _Optional[int] = ..., hop_latency_p95_ms: _Optional[float] = ..., hop_errors_total: _Optional[int] = ..., hop_calls_total: _Optional[int] = ..., shadow_sent_total: _Optional[int] = ..., shadow_answered_total: _Optional[int] = ..., shadow_agreed_total: _Optional[int] = ..., shadow_shed_total: _Optional[int] = ..., shadow: _Optional[_Union[ShadowTelemetry, _Mapping]] = ...) -> None: ...

class ShadowTelemetry(_message.Message):
    __slots__ = ("rate", "disagreements", "bins", "answered", "disagreed", "escalated_answered", "escalated_disagreed")
    RATE_FIELD_NUMBER: _ClassVar[int]
    DISAGREEMENTS_FIELD_NUMBER: _ClassVar[int]
    BINS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    DISAGREED_FIELD_NUMBER: _ClassVar[int]
    ESCALATED_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    ESCALATED_DISAGREED_FIELD_NUMBER: _ClassVar[int]
    rate: float
    disagreements: _containers.RepeatedCompositeFieldContainer[ShadowPair]
    bins: int
    answered: _containers.RepeatedScalarFieldContainer[int]
    disagreed: _containers.RepeatedScalarFieldContainer[int]
    escalated_answered: _containers.RepeatedScalarFieldContainer[int]
    escalated_disagreed: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, rate: _Optional[float] = ..., disagreements: _Optional[_Iterable[_Union[ShadowPair, _Mapping]]] = ..., bins: _Optional[int] = ..., answered: _Optional[_Iterable[int]] = ..., disagreed: _Optional[_Iterable[int]] = ..., escalated_answered: _Optional[_Iterable[int]] = ..., escalated_disagreed: _Optional[_Iterable[int]] = ...) -> None: ...

class ShadowPair(_message.Message):
    __slots__ = ("settled", "answered", "count")
    SETTLED_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    settled: str
    answered: str
    count: int
    def __init__(self, settled: _Optional[str] = ..., answered: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class TelemetrySample(_message.Message):
    __slots__ = ("node_id", "boot_id", "seq", "timestamp_ms", "interval_s", "cpu_percent", "rss_bytes", "power_watts", "power_source", "power_measured", "energy_joules_total", "stages", "backlog")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    POWER_WATTS_FIELD_NUMBER: _ClassVar[int]
    POWER_SOURCE_FIELD_NUMBER: _ClassVar[int]
    POWER_MEASURED_FIELD_NUMBER: _ClassVar[int]
    ENERGY_JOULES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    boot_id: str
    seq: int
    timestamp_ms: int
    interval_s: float
    cpu_percent: float
    rss_bytes: int
    power_watts: float
    power_source: str
    power_measured: bool
    energy_joules_total: float
    stages: _containers.RepeatedCompositeFieldContainer[StageTelemetry]
    backlog: int
    def __init__(self, node_id: _Optional[str] = ..., boot_id: _Optional[str] = ..., seq: _Optional[int] = ..., timestamp_ms: _Optional[int] = ..., interval_s: _Optional[float] = ..., cpu_percent: _Optional[float] = ..., rss_bytes: _Optional[int] = ..., power_watts: _Optional[float] = ..., power_source: _Optional[str] = ..., power_measured: _Optional[bool] = ..., energy_joules_total: _Optional[float] = ..., stages: _Optional[_Iterable[_Union[StageTelemetry, _Mapping]]] = ..., backlog: _Optional[int] = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("stage_id", "limit", "after_seq")
    STAGE_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    stage_id: str
    limit: int
    after_seq: int
    def __init__(self, stage_id: _Optional[str] = ..., limit: _Optional[int] = ..., after_seq: _Optional[int] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("seq", "stage_id", "request_id", "error", "dead_unix_ms", "payload_bytes")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STAGE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DEAD_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    seq: int
    stage_id: str
    request_id: str
    error: str
    dead_unix_ms: int
    payload_bytes: int
    def __init__(self, seq: _Optional[int] = ..., stage_id: _Optional[str] = ..., request_id: _Optional[str] = ..., error: _Optional[str] = ..., dead_unix_ms: _Optional[int] = ..., payload_bytes: _Optional[int] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("letters", "total")
    LETTERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    letters: _containers.RepeatedCompositeFieldContainer[DeadLetter]
    total: int
    def __init__(self, letters: _Optional[_Iterable[_Union[DeadLetter, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class DeadLetterSelection(_message.Message):
    __slots__ = ("stage_id", "seqs")
    STAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQS_FIELD_NUMBER: _ClassVar[int]
    stage_id: str
    seqs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, stage_id: _Optional[str] = ..., seqs: _Optional[_Iterable[int]] = ...) -> None: ...

class DeadLetterResult(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class HardExampleLedger(_message.Message):
    __slots__ = ("rows", "bytes", "max_bytes", "max_age_s", "recorded_total", "evicted_total", "expired_total", "dropped_total")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_S_FIELD_NUMBER: _ClassVar[int]
    RECORDED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EVICTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DROPPED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    rows: int
    bytes: int
    max_bytes: int
    max_age_s: float
    recorded_total: int
    evicted_total: int
    expired_total: int
    dropped_total: int
    def __init__(self, rows: _Optional[int] = ..., bytes: _Optional[int] = ..., max_bytes: _Optional[int] = ..., max_age_s: _Optional[float] = ..., recorded_total: _Optional[int] = ..., evicted_total: _Optional[int] = ..., expired_total: _Optional[int] = ..., dropped_total: _Optional[int] = ...) -> None: ...

class ListHardExamplesRequest(_message.Message):
    __slots__ = ("stage_id", "kind", "label", "disagreed_only", "since_unix_ms", "until_unix_ms", "before_seq", "limit")
    STAGE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DISAGREED_ONLY_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    BEFORE_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    stage_id: str
    kind: str
    label: str
    disagreed_only: bool
    since_unix_ms: int
    until_unix_ms: int
    before_seq: int
    limit: int
    def __init__(self, stage_id: _Optional[str] = ..., kind: _Optional[str] = ..., label: _Optional[str] = ..., disagreed_only: _Optional[bool] = ..., since_unix_ms: _Optional[int] = ..., until_unix_ms: _Optional[int] = ..., before_seq: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class HardExampleTensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class HardExample(_message.Message):
    __slots__ = ("seq", "created_unix_ms", "kind", "stage_id", "stage_version", "row_id", "origin_row_id", "score_labels", "scores", "stage_label", "stage_confidence", "hop_label", "hop_stage", "hop_confidence", "final_label", "final_stage", "final_confidence", "final", "inputs", "input_bytes", "preview", "preview_shape")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROW_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_ROW_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_LABELS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    STAGE_LABEL_FIELD_NUMBER: _ClassVar[int]
    STAGE_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    HOP_LABEL_FIELD_NUMBER: _ClassVar[int]
    HOP_STAGE_FIELD_NUMBER: _ClassVar[int]
    HOP_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    FINAL_LABEL_FIELD_NUMBER: _ClassVar[int]
    FINAL_STAGE_FIELD_NUMBER: _ClassVar[int]
    FINAL_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_SHAPE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    created_unix_ms: int
    kind: str
    stage_id: str
    stage_version: str
    row_id: str
    origin_row_id: str
    score_labels: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.RepeatedScalarFieldContainer[float]
    stage_label: str
    stage_confidence: float
    hop_label: str
    hop_stage: str
    hop_confidence: float
    final_label: str
    final_stage: str
    final_confidence: float
    final: bool
    inputs: _containers.RepeatedCompositeFieldContainer[HardExampleTensor]
    input_bytes: int
    preview: bytes
    preview_shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seq: _Optional[int] = ..., created_unix_ms: _Optional[int] = ..., kind: _Optional[str] = ..., stage_id: _Optional[str] = ..., stage_version: _Optional[str] = ..., row_id: _Optional[str] = ..., origin_row_id: _Optional[str] = ..., score_labels: _Optional[_Iterable[str]] = ..., scores: _Optional[_Iterable[float]] = ..., stage_label: _Optional[str] = ..., stage_confidence: _Optional[float] = ..., hop_label: _Optional[str] = ..., hop_stage: _Optional[str] = ..., hop_confidence: _Optional[float] = ..., final_label: _Optional[str] = ..., final_stage: _Optional[str] = ..., final_confidence: _Optional[float] = ..., final: _Optional[bool] = ..., inputs: _Optional[_Iterable[_Union[HardExampleTensor, _Mapping]]] = ..., input_bytes: _Optional[int] = ..., preview: _Optional[bytes] = ..., preview_shape: _Optional[_Iterable[int]] = ...) -> None: ...

class ListHardExamplesResponse(_message.Message):
    __slots__ = ("examples", "total", "ledger")
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    examples: _containers.RepeatedCompositeFieldContainer[HardExample]
    total: int
    ledger: HardExampleLedger
    def __init__(self, examples: _Optional[_Iterable[_Union[HardExample, _Mapping]]] = ..., total: _Optional[int] = ..., ledger: _Optional[_Union[HardExampleLedger, _Mapping]] = ...) -> None: ...

class GetHardExampleRequest(_message.Message):
    __slots__ = ("seqs",)
    SEQS_FIELD_NUMBER: _ClassVar[int]
    seqs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seqs: _Optional[_Iterable[int]] = ...) -> None: ...

class GetHardExampleResponse(_message.Message):
    __slots__ = ("examples",)
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    examples: _containers.RepeatedCompositeFieldContainer[HardExample]
    def __init__(self, examples: _Optional[_Iterable[_Union[HardExample, _Mapping]]] = ...) -> None: ...
