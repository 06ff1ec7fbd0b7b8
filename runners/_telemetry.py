"""Per-stage counters, latency and score windows, and the TelemetrySample built from them."""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from runners._proto import tierdeck_control_pb2 as ctl
from runners.protocol import STAGE_COUNTERS

HISTOGRAM_BINS = 20
# Prometheus latency buckets, seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_WINDOW_S = 15.0  # longest telemetry interval (10 s) plus slack
_WINDOW_MAX = 200_000
_CPU_LOCK = threading.Lock()  # StageStats.add_compute_cpu: runs end on several threads

COUNTERS = STAGE_COUNTERS  # from the control-plane descriptor (runners/protocol.py)

if TYPE_CHECKING:
    from runners._shadow import ShadowSampler


@dataclass
class StageStats:
    """Live counters of one stage; touched only on the agent's event loop."""

    stage_id: str
    score_kind: str = ""
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    compute_seconds_total: float = 0.0
    compute_cpu_seconds_total: float = 0.0  # added by Stage.run from the compute threads (add_compute_cpu)
    energy_joules_total: float = 0.0
    latency_bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_seconds_sum: float = 0.0
    queue_depth: int = 0
    link_state: str = "none"
    runs_on: str = ""  # the provider its session runs on (runners/_providers.Placement)
    cpu_fallback_nodes: int = 0
    energy_source: str = "estimate"  # where energy_joules_total comes from
    energy_measured: bool = False
    # (monotonic time, value) pairs for the interval figures.
    latencies: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=_WINDOW_MAX))
    score_counts: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS, np.int64))  # since start
    hop_latencies: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=_WINDOW_MAX))
    dead_letters: int = 0  # escalations kept aside now (the queue's dead-letter table)
    shadow: ShadowSampler | None = None  # shadow sampling of settled rows (runners/_shadow.py), once it has a hop

    def add_compute_cpu(self, seconds: float) -> None:
        """Add a run's CPU seconds (any thread: the compute pool's or the event loop's)."""
        with _CPU_LOCK:
            self.compute_cpu_seconds_total += seconds

    def add(self, name: str, amount: int = 1) -> None:
        """Increase one counter."""
        self.counters[name] += amount

    def record_latency(self, seconds: float, now: float) -> None:
        """Record one request's end-to-end latency."""
        self.latencies.append((now, seconds * 1000.0))
        self.latency_bucket_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_seconds_sum += seconds

    def record_hop_call(self, seconds: float, ok: bool, now: float) -> None:
        """Record one forwarded call to the next hop (what this stage, as its caller, sees of it)."""
        self.counters["hop_calls_total"] += 1
        if ok:
            self.hop_latencies.append((now, seconds * 1000.0))
        else:
            self.counters["hop_errors_total"] += 1

    def record_scores(self, scores: np.ndarray) -> None:
        """Count the rule's per-row scores into the what-if histogram (HISTOGRAM_BINS bins over [0, 1], values
        outside clipped to the end bins, NaN not counted)."""
        values = np.asarray(scores, dtype=np.float64).reshape(-1)
        values = values[~np.isnan(values)]
        bins = np.minimum((np.clip(values, 0.0, 1.0) * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1)
        self.score_counts += np.bincount(bins, minlength=HISTOGRAM_BINS)


@dataclass
class _Snapshot:
    time: float
    counters: dict[str, int]
    energy: float
    score_counts: np.ndarray


class TelemetryWindow:
    """One subscriber's view: turns cumulative stage counters into per-interval samples."""

    def __init__(self) -> None:
        self._last: dict[str, _Snapshot] = {}

    def sample(self, node: ctl.TelemetrySample, stages: list[StageStats],
               now: float | None = None) -> ctl.TelemetrySample:
        """Fill `node` (node-level fields already set) with per-stage figures since this window's last sample."""
        now = time.monotonic() if now is None else now
        for stats in stages:
            last = self._last.get(stats.stage_id) or _Snapshot(now - max(node.interval_s, 1e-3),
                                                               dict.fromkeys(COUNTERS, 0), 0.0,
                                                               np.zeros(HISTOGRAM_BINS, np.int64))
            dt = max(now - last.time, 1e-6)
            out = node.stages.add(stage_id=stats.stage_id, compute_seconds_total=stats.compute_seconds_total,
                                  compute_cpu_seconds_total=stats.compute_cpu_seconds_total,
                                  queue_depth=stats.queue_depth, link_state=stats.link_state,
                                  energy_joules_total=stats.energy_joules_total, score_kind=stats.score_kind,
                                  dead_letters=stats.dead_letters,
                                  runs_on=stats.runs_on, cpu_fallback_nodes=stats.cpu_fallback_nodes,
                                  energy_source=stats.energy_source, energy_measured=stats.energy_measured)
            for name in COUNTERS:
                setattr(out, name, stats.counters[name])
            if stats.shadow is not None and stats.link_state != "none":
                stats.shadow.book.fill(out.shadow)
            inferred = stats.counters["inferences_total"] - last.counters["inferences_total"]
            escalated = stats.counters["escalated_total"] - last.counters["escalated_total"]
            out.inferences_per_s = inferred / dt
            out.escalated_per_s = escalated / dt
            out.escalation_rate = escalated / inferred if inferred else 0.0
            if inferred:
                out.energy_per_inference_j = (stats.energy_joules_total - last.energy) / inferred
            window = [v for t, v in stats.latencies if t > last.time]
            if window:
                p50, p95, p99 = np.percentile(np.asarray(window), [50, 95, 99])
                out.latency_p50_ms, out.latency_p95_ms, out.latency_p99_ms = float(p50), float(p95), float(p99)
            hop = [v for t, v in stats.hop_latencies if t > last.time]
            if hop:
                out.hop_latency_p95_ms = float(np.percentile(np.asarray(hop), 95))
            out.score_histogram.extend((stats.score_counts - last.score_counts).tolist())
            self._last[stats.stage_id] = _Snapshot(now, dict(stats.counters), stats.energy_joules_total,
                                                   stats.score_counts.copy())
        return node


def attribute_energy(stats: dict[str, StageStats], compute_deltas: dict[str, float], node_joules: float,
                     node_source: str, node_measured: bool, gpu_joules: float | None = None,
                     gpu_stages: frozenset[str] = frozenset()) -> None:
    """Share one interval's dynamic energy among stages by their compute time, and label where it came from.

    Stages in `gpu_stages` share `gpu_joules` (NVML, measured) when it is known; the others share
    `node_joules` from the node's source. Without a GPU reading, GPU stages share the node's energy too.
    """
    on_gpu = {sid for sid in stats if sid in gpu_stages} if gpu_joules is not None else set()
    for group, joules, source, measured in ((on_gpu, gpu_joules or 0.0, "nvml", True),
                                            (set(stats) - on_gpu, node_joules, node_source, node_measured)):
        busy = sum(compute_deltas.get(sid, 0.0) for sid in group)
        for sid in group:
            if busy > 0:
                stats[sid].energy_joules_total += joules * compute_deltas.get(sid, 0.0) / busy
            stats[sid].energy_source, stats[sid].energy_measured = source, measured


def prune(stats: StageStats, now: float) -> None:
    """Forget window entries older than the longest telemetry interval."""
    for window in (stats.latencies, stats.hop_latencies):
        while window and window[0][0] < now - _WINDOW_S:
            window.popleft()
