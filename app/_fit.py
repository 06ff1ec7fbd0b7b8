"""Fit check: does a stage's model fit on a node (memory, execution providers, power budget)?

Memory estimate. onnxruntime holds the parsed model while it builds the session, copies the
initializers (weights) into its own tensors, and allocates an arena for the intermediate
activations; for the small CNN/MLP stages tierdeck deploys that comes to about 2–3× the model
file. The console takes the conservative end, `MEMORY_FACTOR` = 3 × file size + `SESSION_OVERHEAD`
(16 MiB), and compares it with the node's free RAM. Against the node's memory cap (if set) it uses
the agent's own rule, 2 × file size (runners/_stage.check_model_file), so the console never accepts
what the agent would refuse, nor refuses what it would accept.

Providers. A model needs the execution providers listed in its ONNX metadata under
`tierdeck.providers` (comma-separated, e.g. "CUDAExecutionProvider"); without that key it needs
only "CPUExecutionProvider", which every onnxruntime build has. A pipeline stage adds its own
`providers.require` to that, and may `prefer` some. A node whose onnxruntime build lacks a required
provider does not fit. Where it fits, `FitResult.provider` is the provider the stage will run on
there, chosen the way the agent orders its session (runners/_providers.plan_for): required first,
then preferred, then the node's own order — the agent reports what really runs after warm-up.

Power. When a node advertises a power budget, the node's present draw (latest telemetry, else
unknown) plus the model's declared draw (`tierdeck.watts` in its metadata, else 0 W) must stay
within the budget.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from app._model_inspect import RuleSuggestion, suggest_rule
from app._records import NodeInfoSummary, NodeSnapshot, NodeState
from runners._providers import CPU, DEFAULT_ORDER, canonical, short_name
from runners.protocol import ONNX_DATATYPES

MEMORY_FACTOR = 3.0
AGENT_CAP_FACTOR = 2.0
SESSION_OVERHEAD = 16 << 20
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output: name, OIP datatype, shape (-1 = free)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelCard:
    """What the console knows about a model file without running it."""

    path: Path
    size_bytes: int
    sha256: str
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()
    opset: int = 0
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    watts: float = 0.0
    metadata: tuple[tuple[str, str], ...] = ()
    suggestion: RuleSuggestion | None = None   # the rule a new stage of this model starts with

    @property
    def memory_estimate_bytes(self) -> int:
        """Estimated resident memory once loaded (see the module docstring)."""
        return memory_estimate(self.size_bytes)


def memory_estimate(size_bytes: int) -> int:
    """MEMORY_FACTOR × file size + SESSION_OVERHEAD."""
    return int(size_bytes * MEMORY_FACTOR) + SESSION_OVERHEAD


def read_model_card(path: Path | str) -> ModelCard:
    """Read a model file's size, sha256, inputs, outputs, opset and tierdeck metadata (blocking: disk)."""
    import onnx

    p = Path(path)
    data = p.read_bytes()
    model = onnx.load_model_from_string(data)
    initializers = {i.name for i in model.graph.initializer}

    def tensors(values: object) -> tuple[TensorInfo, ...]:
        out = []
        for v in values:  # type: ignore[attr-defined]
            if v.name in initializers:
                continue
            if v.type.WhichOneof("value") != "tensor_type":
                continue  # a sequence or map (skl2onnx's ZipMap): not a tensor a stage can declare
            tt = v.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
            out.append(TensorInfo(v.name, ONNX_DATATYPES.get(tt.elem_type, str(tt.elem_type)), dims))
        return tuple(out)

    meta = {m.key: m.value for m in model.metadata_props}
    providers = tuple(x.strip() for x in meta.get("tierdeck.providers", "").split(",") if x.strip())
    try:
        watts = float(meta.get("tierdeck.watts", "0") or 0)
    except ValueError:
        watts = 0.0
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return ModelCard(p, len(data), hashlib.sha256(data).hexdigest(), tensors(model.graph.input),
                     tensors(model.graph.output), opset, providers or DEFAULT_PROVIDERS, watts,
                     tuple(sorted(meta.items())), suggest_rule(model, p))


@dataclass(frozen=True)
class Requirements:
    """What a stage needs from a node."""

    memory_bytes: int
    model_bytes: int
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    watts: float = 0.0
    stage_id: str = ""
    prefer: tuple[str, ...] = ()

    @classmethod
    def from_card(cls, card: ModelCard, stage_id: str = "") -> Requirements:
        """Requirements of a model card."""
        return cls(card.memory_estimate_bytes, card.size_bytes, card.providers, card.watts, stage_id)

    def with_choice(self, require: Sequence[str] = (), prefer: Sequence[str] = ()) -> Requirements:
        """These requirements plus a pipeline stage's provider choice (its `providers` key)."""
        providers = tuple(dict.fromkeys([*self.providers, *(canonical(p) for p in require)]))
        return replace(self, providers=providers, prefer=tuple(canonical(p) for p in prefer))


def expected_provider(req: Requirements, info: NodeInfoSummary) -> str:
    """The provider the stage would run on at that node: required, preferred, then the node's order (CPU last)."""
    offered = set(info.provider_preference or info.execution_providers) | {CPU}
    order = info.provider_preference or tuple(p for p in DEFAULT_ORDER if p in offered)
    for provider in (*[p for p in req.providers if p != CPU], *req.prefer, *order, CPU):
        if provider in offered:
            return provider
    return CPU


@dataclass(frozen=True)
class FitResult:
    """Whether a stage fits on a node; when it does not, `reasons` say why (one sentence each)."""

    fits: bool
    node_key: str
    reasons: tuple[str, ...] = ()
    memory_needed_bytes: int = 0
    memory_available_bytes: int = 0
    provider: str = ""        # where it fits: the provider the stage will run on there
    node_name: str = ""

    @property
    def hint(self) -> str:
        """'fits on edge-2: OpenVINO' (the drag hint), or the reasons when it does not fit."""
        if not self.fits:
            return self.reason
        return f"fits on {self.node_name or self.node_key}: {short_name(self.provider or CPU)}"

    @property
    def reason(self) -> str:
        """All reasons as one sentence ("" when it fits)."""
        return "; ".join(self.reasons)


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def check_fit(req: Requirements, node: NodeSnapshot, power_now_watts: float | None = None,
              already_placed: tuple[Requirements, ...] = ()) -> FitResult:
    """Check one stage against one node; `already_placed` are other new stages going to the same node."""
    reasons: list[str] = []
    name = node.name or node.key
    info = node.info
    if info is None:
        why = "its hardware is unknown until it answers" if node.state != NodeState.OFFLINE else "it is offline"
        return FitResult(False, node.key, (f"{name}: cannot check fit, {why}",), req.memory_bytes, 0)
    if node.state == NodeState.OFFLINE:
        reasons.append(f"{name} is offline")
    memory = req.memory_bytes + sum(r.memory_bytes for r in already_placed)
    free = info.ram_free_bytes
    existing = node.stage(req.stage_id) if req.stage_id else None
    if existing is not None:
        free += memory_estimate(existing.model_bytes)  # an update replaces the running version
    if memory > free:
        reasons.append(f"needs about {_mib(memory)} of memory ({MEMORY_FACTOR:g}× the model file + "
                       f"{_mib(SESSION_OVERHEAD)}), {name} has {_mib(free)} free")
    if info.memory_cap_bytes:
        capped = req.model_bytes * AGENT_CAP_FACTOR
        if capped > info.memory_cap_bytes:
            reasons.append(f"model of {_mib(req.model_bytes)} needs {_mib(capped)} under the agent's rule "
                           f"(2× the file), over {name}'s memory cap of {_mib(info.memory_cap_bytes)}")
    # An agent that orders its providers uses only those (probed at its start); an older one: what its build lists.
    usable = info.provider_preference or info.execution_providers
    missing = [p for p in req.providers if p not in usable]
    if missing:
        offered = ", ".join(short_name(p) for p in usable)
        reasons.append(f"needs execution provider {', '.join(missing)}, which {name} lacks: its onnxruntime "
                       f"build ({info.onnxruntime_build or info.onnxruntime_version or 'unknown'}) offers "
                       f"{offered or 'none'}")
    budget = info.power_budget_watts
    if budget > 0:
        draw = (power_now_watts or 0.0) + req.watts + sum(r.watts for r in already_placed)
        if draw > budget:
            now = f"{power_now_watts:.1f} W now" if power_now_watts is not None else "unknown draw now"
            reasons.append(f"would draw about {draw:.1f} W ({now} + {req.watts:.1f} W for the model), "
                           f"over {name}'s power budget of {budget:.1f} W")
    provider = expected_provider(req, info) if not missing else ""
    return FitResult(not reasons, node.key, tuple(reasons), memory, free, provider, name)
