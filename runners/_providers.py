"""Execution providers: which onnxruntime build is installed, which providers a stage's session gets, and what runs.

onnxruntime falls back silently: a provider that cannot take a node of the graph leaves it to the next
provider in the list (finally the CPU), and a provider whose libraries are missing is dropped with a
log line. So the agent never reports what is merely installed. After load it asks the session which
providers it registered (`session.get_providers()`), and the warm-up runs with onnxruntime's profiler
on: every executed graph node appears there with the provider that ran it. The counts are of the graph
*as onnxruntime runs it* — after its own fusions, and with everything an accelerator took fused into
one node per subgraph (e.g. `OpenVINO-EP-subgraph_1`) — so "CPU fallback for 2 nodes" counts nodes of
the optimised graph that ran on the CPU provider while an accelerator was in the list. When the profile
cannot be read (`placement_source` "session"), only the registered providers are known.

This module imports onnxruntime lazily: the console uses its names and the build table without it.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger("tierdeck.providers")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
# The agent's default order: the best the installed build offers first; the CPU provider always closes it.
DEFAULT_ORDER: tuple[str, ...] = (TENSORRT, CUDA, OPENVINO, CPU)
ALIASES = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "openvino": OPENVINO, "ov": OPENVINO, "cpu": CPU}
SHORT = {TENSORRT: "TensorRT", CUDA: "CUDA", OPENVINO: "OpenVINO", CPU: "CPU"}
GPU_PROVIDERS = frozenset({TENSORRT, CUDA})

# The onnxruntime builds on PyPI and elsewhere; each installs the same `onnxruntime` package, so two of
# them in one environment overwrite each other's files (a "broken mix").
BUILDS: tuple[str, ...] = (
    "onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml", "onnxruntime-qnn",
    "onnxruntime-silicon", "onnxruntime-rocm", "onnxruntime-training", "onnxruntime-cann",
)
# Which build to install per kind of hardware (README table; `python -m runners.builds`).
HARDWARE_BUILDS: dict[str, str] = {
    "cpu": "onnxruntime",
    "openvino": "onnxruntime-openvino",
    "gpu": "onnxruntime-gpu",
}


def canonical(name: str) -> str:
    """The full provider name for a short alias ('cuda' → 'CUDAExecutionProvider'); full names pass through."""
    stripped = name.strip()
    return ALIASES.get(stripped.lower(), stripped)


def short_name(provider: str) -> str:
    """'OpenVINOExecutionProvider' → 'OpenVINO' (the words operators read)."""
    return SHORT.get(provider, provider.removesuffix("ExecutionProvider"))


def accelerators(providers: Iterable[str]) -> list[str]:
    """The providers that are not the CPU one and not remote/placeholder providers (Azure), in order."""
    return [p for p in providers if p != CPU and p != "AzureExecutionProvider"]


# -- installed builds --------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildCheck:
    """Which onnxruntime builds are installed (distribution name → version) and what is wrong with that."""

    builds: tuple[tuple[str, str], ...]
    problems: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        """'onnxruntime-openvino 1.24.1' (or several, comma-separated; 'none')."""
        return ", ".join(f"{name} {version}" for name, version in self.builds) or "none"


def check_builds(path: Sequence[str] | None = None, imported_version: str | None = None) -> BuildCheck:
    """Find the installed onnxruntime builds (in `path`, default sys.path) and report a broken mix."""
    found: dict[str, str] = {}
    dists = metadata.distributions(path=list(path)) if path is not None else metadata.distributions()
    for dist in dists:
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name in BUILDS and name not in found:
            found[name] = dist.version
    builds = tuple(sorted(found.items()))
    problems: list[str] = []
    if len(builds) > 1:
        names = [name for name, _ in builds]
        problems.append(
            f"several onnxruntime builds are installed ({', '.join(f'{n} {v}' for n, v in builds)}); they share one "
            f"'onnxruntime' package and overwrite each other's files, so the providers on offer are whichever "
            f"installed last. Keep one: pip uninstall -y {' '.join(names)} && pip install <the one for this box> "
            f"(see `python -m runners.builds`)")
    elif not builds:
        problems.append("no onnxruntime build is installed (pip install onnxruntime, onnxruntime-openvino or "
                        "onnxruntime-gpu)")
    if imported_version is not None and len(builds) == 1 and builds[0][1].split("+")[0] != imported_version:
        problems.append(f"{builds[0][0]} {builds[0][1]} is installed but the imported onnxruntime says "
                        f"{imported_version} (a half-removed build?)")
    return BuildCheck(builds, tuple(problems))


# -- the agent's preference and a stage's plan -------------------------------------------------------
@dataclass(frozen=True)
class ProviderSettings:
    """The node's provider preference and options (from the command line)."""

    order: tuple[str, ...] = ()  # empty: DEFAULT_ORDER filtered by what the build offers
    device_id: int = 0
    openvino_device: str = "CPU"
    trt_fp16: bool = False
    cache_dir: Path | None = None  # TensorRT engines and OpenVINO blobs live here (under the data dir)
    threads: int = 0  # OpenVINO's own thread pool gets the CPU provider's budget (--ort-threads); 0 = its default

    @staticmethod
    def parse_order(text: str) -> tuple[str, ...]:
        """'tensorrt,cuda,cpu' → full names; ValueError on an empty item."""
        names = [canonical(item) for item in text.split(",")]
        if any(not n for n in names):
            raise ValueError(f"--providers {text!r}: empty item")
        return tuple(dict.fromkeys(names))


class ProviderRefused(Exception):
    """A stage requires a provider this node cannot give it."""


@dataclass(frozen=True)
class ProviderPlan:
    """The providers a session is opened with, in priority order, with their options."""

    providers: tuple[str, ...]
    options: tuple[dict[str, str], ...]
    required: tuple[str, ...] = ()

    def next_fallback(self) -> ProviderPlan | None:
        """This plan without its first accelerator that is not required (None when none is left to drop)."""
        droppable = [i for i, p in enumerate(self.providers) if p != CPU and p not in self.required]
        if not droppable:
            return None
        keep = [i for i in range(len(self.providers)) if i != droppable[0]]
        return ProviderPlan(tuple(self.providers[i] for i in keep), tuple(self.options[i] for i in keep),
                            self.required)


def node_order(settings: ProviderSettings, available: Sequence[str]) -> tuple[str, ...]:
    """The node's effective order, CPU last: its --providers restricted to `available`; by default DEFAULT_ORDER's
    providers the build offers, then any other accelerator it offers (ROCm, DirectML, ...; never Azure).

    Only these providers are used on the node: a stage that requires another one is refused.
    """
    if settings.order:
        order = [p for p in settings.order if p in available and p != CPU]
    else:
        order = [p for p in DEFAULT_ORDER if p in available and p != CPU]
        order += [p for p in accelerators(available) if p not in order]
    return (*order, CPU)


def unknown_preferences(settings: ProviderSettings, available: Sequence[str]) -> list[str]:
    """Providers named in --providers that this build does not offer (reported at start)."""
    return [p for p in settings.order if p not in available]


def _probe_model() -> bytes:
    """A two-node ONNX graph (y = x + x, then Relu) small enough to open on any provider in milliseconds."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Add", ["x", "x"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def probe(settings: ProviderSettings, order: Sequence[str]) -> tuple[tuple[str, ...], list[str]]:
    """Open a tiny session on each accelerator of `order` (blocking); returns those that start, and why others don't.

    A build lists a provider whose libraries or device are missing (onnxruntime-gpu without CUDA, OpenVINO
    asked for an NPU the box lacks); onnxruntime then drops it from the session without an error, so the
    node would advertise what it cannot run. The CPU provider is never probed and always kept.
    """
    import numpy as np
    import onnxruntime as ort

    model = _probe_model()
    working: list[str] = []
    problems: list[str] = []
    for provider in order:
        if provider == CPU:
            continue
        options = ort.SessionOptions()
        options.log_severity_level = 4  # the failure is reported below, in one line
        try:
            session = ort.InferenceSession(model, sess_options=options, providers=[provider, CPU],
                                           provider_options=[provider_options(provider, settings), {}])
            session.run(None, {"x": np.ones((1, 4), dtype=np.float32)})
            started = provider in session.get_providers()
            why = "onnxruntime dropped it from the session (libraries or device missing?)"
        except Exception as exc:  # onnxruntime's Fail / EP errors
            started, why = False, str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        if started:
            working.append(provider)
        else:
            detail = f" with device type {settings.openvino_device}" if provider == OPENVINO else ""
            problems.append(f"{short_name(provider)} is in the onnxruntime build but did not start{detail}: {why}; "
                            "stages run without it")
    return (*working, CPU), problems


def plan_for(settings: ProviderSettings, available: Sequence[str], require: Sequence[str] = (),
             prefer: Sequence[str] = ()) -> ProviderPlan:
    """Order: the stage's required providers, its preferred ones, then the node's order; CPU closes it.

    ProviderRefused when a required provider is not offered by this node's onnxruntime build.
    """
    require = [canonical(p) for p in require]
    missing = [p for p in require if p not in available]
    if missing:
        offered = ", ".join(short_name(p) for p in available if p != "AzureExecutionProvider")
        raise ProviderRefused(f"the stage requires {', '.join(short_name(p) for p in missing)}, which this "
                              f"node does not offer (its onnxruntime runs {offered or 'none'})")
    preferred = [canonical(p) for p in prefer if canonical(p) in available]
    order = list(dict.fromkeys([*require, *preferred, *node_order(settings, available)]))
    order = [p for p in order if p != CPU] + [CPU]
    return ProviderPlan(tuple(order), tuple(provider_options(p, settings) for p in order), tuple(require))


def provider_options(provider: str, settings: ProviderSettings) -> dict[str, str]:
    """onnxruntime provider options for one provider (strings, as every build accepts them)."""
    if provider == CUDA:
        return {"device_id": str(settings.device_id)}
    if provider == TENSORRT:
        options = {"device_id": str(settings.device_id), "trt_fp16_enable": "True" if settings.trt_fp16 else "False"}
        if settings.cache_dir is not None:
            engines = settings.cache_dir / "tensorrt"
            engines.mkdir(parents=True, exist_ok=True)
            options |= {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(engines),
                        "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(engines)}
        return options
    if provider == OPENVINO:
        options = {"device_type": settings.openvino_device}
        if settings.threads > 0:
            options["num_of_threads"] = str(settings.threads)
        if settings.cache_dir is not None:
            blobs = settings.cache_dir / "openvino"
            blobs.mkdir(parents=True, exist_ok=True)
            options["cache_dir"] = str(blobs)
        return options
    return {}


# -- what runs ---------------------------------------------------------------------------------------
@dataclass
class Placement:
    """What a stage's session really uses, seen after load and warm-up."""

    session_providers: tuple[str, ...]
    nodes: dict[str, int] = field(default_factory=dict)  # provider → distinct executed graph nodes
    source: str = "session"  # "profile" when `nodes` comes from the warm-up profile
    warmup_first_ms: float = 0.0
    warmup_ms: float = 0.0
    notes: tuple[str, ...] = ()

    @property
    def runs_on(self) -> str:
        """The first provider (in session order) that ran any node; the first registered one without a profile."""
        if self.nodes:
            for provider in self.session_providers:
                if self.nodes.get(provider):
                    return provider
            return max(self.nodes, key=lambda p: self.nodes[p])
        return self.session_providers[0] if self.session_providers else CPU

    @property
    def cpu_fallback_nodes(self) -> int:
        """Graph nodes run on the CPU provider although an accelerator was chosen (0 on a CPU-only session)."""
        if self.runs_on == CPU:
            return 0
        return self.nodes.get(CPU, 0)

    def fill(self, info: Any) -> None:
        """Write the placement into a StageInfo message."""
        info.session_providers.extend(self.session_providers)
        info.runs_on = self.runs_on
        info.cpu_fallback_nodes = self.cpu_fallback_nodes
        for provider, count in self.nodes.items():
            info.placement.add(provider=provider, nodes=count)
        info.placement_source = self.source
        info.warmup_first_ms = self.warmup_first_ms
        info.warmup_ms = self.warmup_ms
        info.placement_notes.extend(self.notes)

    def describe(self) -> str:
        """'runs on OpenVINO (CPU fallback for 2 nodes)' — what the node card says."""
        return describe(self.runs_on, self.cpu_fallback_nodes)


def describe(runs_on: str, cpu_fallback_nodes: int) -> str:
    """'runs on OpenVINO (CPU fallback for 2 nodes)'; '' when nothing is known."""
    if not runs_on:
        return ""
    text = f"runs on {short_name(runs_on)}"
    if cpu_fallback_nodes:
        text += f" (CPU fallback for {cpu_fallback_nodes} node{'s' if cpu_fallback_nodes != 1 else ''})"
    return text


def open_session(path: Path, options: ort.SessionOptions, plan: ProviderPlan,
                 profile_dir: Path | None = None) -> ort.InferenceSession:
    """An InferenceSession with the plan's providers and the profiler on (ended by `measure_placement`)."""
    import onnxruntime as ort

    options.enable_profiling = True
    # onnxruntime names the file prefix + a millisecond timestamp: sessions opened together (the compute
    # pool loads in parallel) could share one file without a prefix of their own.
    folder = Path(profile_dir or tempfile.gettempdir())
    options.profile_file_prefix = str(folder / f"tierdeck-warmup-{uuid.uuid4().hex}")
    return ort.InferenceSession(str(path), sess_options=options, providers=list(plan.providers),
                                provider_options=[dict(o) for o in plan.options])


def measure_placement(session: ort.InferenceSession, warm_up: Callable[[], Any], runs: int = 2) -> Placement:
    """Run `warm_up` `runs` times (the first pays for setup), end profiling, count executed nodes per provider."""
    times = []
    try:
        for _ in range(max(1, runs)):
            start = time.perf_counter()
            warm_up()
            times.append((time.perf_counter() - start) * 1000.0)
    except BaseException:
        _discard_profile(session)
        raise
    placement = Placement(tuple(session.get_providers()), warmup_first_ms=times[0], warmup_ms=min(times[1:] or times))
    try:
        name = session.end_profiling()
    except Exception as exc:  # the build cannot end profiling
        name, placement.notes = "", (f"no profile: {exc}",)
    if not name:  # profiling was not on for this session
        return placement
    profile = Path(name)
    try:
        nodes = count_nodes(json.loads(profile.read_text()))
    except (OSError, ValueError) as exc:
        placement.notes = (f"profile unreadable: {exc}",)
        nodes = {}
    finally:
        profile.unlink(missing_ok=True)
    if nodes:
        placement.nodes, placement.source = nodes, "profile"
    return placement


def _discard_profile(session: ort.InferenceSession) -> None:
    """End profiling and delete the file (a failed warm-up must not leave profiles behind)."""
    try:
        name = session.end_profiling()
        if name:
            Path(name).unlink(missing_ok=True)
    except Exception as exc:  # nothing was profiled, or the file is gone already
        log.debug("no profile to discard: %s", exc)


def count_nodes(events: list[dict[str, Any]]) -> dict[str, int]:
    """Distinct executed graph nodes per provider from an onnxruntime profile (chrome trace events)."""
    seen: dict[str, set[str]] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        provider = (event.get("args") or {}).get("provider")
        if provider:
            seen.setdefault(provider, set()).add(event["name"])
    return dict(Counter({p: len(names) for p, names in seen.items()}))


def check_required(placement: Placement, required: Sequence[str]) -> None:
    """ProviderRefused unless every required provider is registered and (with a profile) ran a node."""
    for provider in required:
        if provider not in placement.session_providers:
            used = ", ".join(map(short_name, placement.session_providers))
            raise ProviderRefused(f"the stage requires {short_name(provider)}, but onnxruntime did not register it "
                                  f"for this model (session uses {used}; its libraries may be missing)")
        if placement.source == "profile" and not placement.nodes.get(provider):
            raise ProviderRefused(f"the stage requires {short_name(provider)}, but it took none of the model's nodes "
                                  f"(all ran on {', '.join(map(short_name, placement.nodes))})")
