"""Words and numbers for operators: durations, sizes, power with its source, node summaries."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from app.core import NodeSample, NodeSnapshot


def now_ms() -> int:
    """Wall-clock time in Unix milliseconds."""
    return int(time.time() * 1000)


def duration(ms: float) -> str:
    """A short duration: '42 s', '3 min 12 s', '2 h 05 min', '3 d 4 h'."""
    s = max(0, int(ms // 1000))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h} h {m:02d} min"
    d, h = divmod(h, 24)
    return f"{d} d {h} h"


def size(n: float) -> str:
    """Bytes in KiB/MiB/GiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def rate(value: float) -> str:
    """A per-second rate with thousands separators."""
    if value >= 100:
        return f"{value:,.0f}/s"
    return f"{value:.1f}/s"


def percent(fraction: float) -> str:
    """A fraction as a percentage."""
    return f"{fraction * 100:.1f} %"


def clock(ts_s: float) -> str:
    """Local wall-clock time HH:MM:SS."""
    return datetime.fromtimestamp(ts_s).strftime("%H:%M:%S")


def power(sample: NodeSample | None) -> str:
    """Power now with its source, e.g. '6.2 W (RAPL, measured)' or '6.2 W (estimate)'; '—' when unknown."""
    if sample is None:
        return "— W"
    source = sample.power_source or "unknown source"
    kind = "measured" if sample.power_measured else "estimate"
    if source in ("estimate", kind):
        return f"{sample.power_watts:.1f} W ({kind})"
    return f"{sample.power_watts:.1f} W ({source}, {kind})"


def providers(names: tuple[str, ...]) -> str:
    """Execution providers without the 'ExecutionProvider' suffix."""
    return ", ".join(n.removesuffix("ExecutionProvider") for n in names) or "—"


def accelerators(node: NodeSnapshot) -> str:
    """The node's accelerators in its agent's order ('OpenVINO', 'TensorRT, CUDA'), 'CPU only', or '' if unknown."""
    if node.info is None:
        return ""
    names = node.info.accelerators
    text = providers(names) if names else "CPU only"
    if node.info.runtime_problems:
        text += " ⚠ onnxruntime install broken"
    return text


def stage_placements(node: NodeSnapshot) -> str:
    """'detector on OpenVINO, heavy on CPU (2 fall back)' — what each deployed stage really runs on."""
    parts = []
    for s in node.stages:
        if not s.runs_on:
            parts.append(s.stage_id)
            continue
        fallback = f" ({s.cpu_fallback_nodes} fall back)" if s.cpu_fallback_nodes else ""
        parts.append(f"{s.stage_id} on {providers((s.runs_on,))}{fallback}")
    return ", ".join(parts) or "no stages"


def runtime_lines(node: NodeSnapshot) -> list[str]:
    """Tooltip lines: accelerators, the onnxruntime build, install problems, what each stage runs on."""
    info = node.info
    if info is None:
        return []
    lines = [f"accelerators: {accelerators(node)} (onnxruntime {info.onnxruntime_build or info.onnxruntime_version})"]
    lines += [f"⚠ {problem}" for problem in info.runtime_problems]
    lines += [f"{s.stage_id}: {s.runs_on_text}" for s in node.stages if s.runs_on]
    return lines


def hardware(node: NodeSnapshot) -> str:
    """'4 cores · 6.1/8.0 GiB free · OpenVINO' (its accelerators, or 'CPU only'), or 'hardware unknown'."""
    info = node.info
    if info is None:
        return "hardware unknown until it answers"
    if node.source == "endpoint":  # a serving engine tierdeck does not run: it says what it is, nothing more
        return info.platform or "external engine"
    parts = []
    if info.cpu_cores:
        parts.append(f"{info.cpu_cores} cores")
    if info.ram_total_bytes:
        parts.append(f"{size(info.ram_free_bytes)} free of {size(info.ram_total_bytes)}")
    parts.append(accelerators(node))
    if info.memory_cap_bytes:
        parts.append(f"cap {size(info.memory_cap_bytes)}")
    if info.power_budget_watts:
        parts.append(f"budget {info.power_budget_watts:g} W")
    return " · ".join(parts)


def state_text(node: NodeSnapshot, now: int | None = None) -> str:
    """'online for 3 min 12 s', 'offline for 42 s: connection refused', ..."""
    now = now_ms() if now is None else now
    text = str(node.state)
    if node.state_since_ms:
        text += f" for {duration(now - node.state_since_ms)}"
    if node.reason:
        text += f": {node.reason}"
    return text


def security(node: NodeSnapshot) -> tuple[str, str]:
    """(icon name, words) for the node's transport security: insecure, mutual TLS, or not enrolled."""
    info = node.info
    if info is None:
        return "", ""
    if info.insecure:
        return "insecure", "INSECURE"
    if not getattr(info, "enrolled", True):
        return "unenrolled", "NOT ENROLLED"
    return "secure", "mTLS"


def stages(node: NodeSnapshot) -> str:
    """Deployed stage ids with the provider each runs on where the agent said, or 'no stages'."""
    return stage_placements(node)


def callers_view(engine: NodeSnapshot, nodes: list[NodeSnapshot], latest: Callable[[str], Any]) -> str:
    """What the stages escalating to an engine see of it: 'callers see p95 4.2 ms · 0 errors of 120 calls'."""
    p95 = 0.0
    calls = errors = 0
    for node in nodes:
        sample = latest(node.node_id) if node.node_id else None
        escalating = {s.stage_id for s in node.stages if s.next_hop == engine.address}
        for stage in (sample.stages if sample is not None else ()):
            if stage.stage_id in escalating:
                p95 = max(p95, stage.hop_latency_p95_ms)
                calls += stage.hop_calls_total
                errors += stage.hop_errors_total
    if not calls:
        return "no calls from its callers yet"
    return f"callers see p95 {p95:.1f} ms · {errors} errors of {calls} calls"
