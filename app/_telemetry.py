"""Telemetry on the console side: de-duplication, deltas, and numpy ring buffers for the live plots.

De-duplication. A sample is identified by (boot_id, seq) per node. A sample whose seq is not after
the last one accepted for its boot is a duplicate (a stream that replays after a reconnect) and is
dropped. The agent numbers samples once per boot across all its streams, so a new stream of the
same boot continues above the last seq; a gap means a sample the console never received.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from app._miss import ShadowCounts
from app._records import NodeSample, StageSample
from runners._proto import tierdeck_control_pb2 as ctl
from runners.protocol import STAGE_COUNTERS

# StageSample's counter fields are these, in this order (tests/test_app_telemetry.py checks it).
_COUNTERS = STAGE_COUNTERS
# Counters whose increments are stored with each sample (indexes into _COUNTERS).
_DELTA_INDEXES = tuple(_COUNTERS.index(name) for name in (
    "inferences_total", "escalated_total", "dropped_total", "errors_total", "shed_total", "overflow_total"))


@dataclass
class _BootPosition:
    boot_id: str
    last_seq: int
    last_ts_ms: int
    energy_total: float = 0.0
    stage_totals: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Position:
    """Where a node's accepted telemetry stands: its boot, last seq and last totals (seeded from the database)."""

    boot_id: str
    seq: int
    ts_ms: int
    energy_joules_total: float = 0.0
    stage_totals: dict[str, tuple[int, ...]] = field(default_factory=dict)


class SampleAcceptor:
    """Turns raw TelemetrySample messages into NodeSample records, dropping duplicates; one per console."""

    def __init__(self) -> None:
        self._positions: dict[str, _BootPosition] = {}
        self.duplicates = 0

    def seed(self, node_id: str, position: Position) -> None:
        """Start from a position remembered in the database (console restart)."""
        self._positions[node_id] = _BootPosition(position.boot_id, position.seq, position.ts_ms,
                                                 energy_total=position.energy_joules_total,
                                                 stage_totals=dict(position.stage_totals))

    def forget(self, node_id: str) -> None:
        """Drop what is known about a node."""
        self._positions.pop(node_id, None)

    def rename(self, old: str, new: str) -> None:
        """Carry a position over when a node is re-keyed."""
        pos = self._positions.pop(old, None)
        if pos is not None and new not in self._positions:
            self._positions[new] = pos

    def position(self, node_id: str) -> Position | None:
        """The last accepted position of a node."""
        pos = self._positions.get(node_id)
        if pos is None:
            return None
        return Position(pos.boot_id, pos.last_seq, pos.last_ts_ms, pos.energy_total, dict(pos.stage_totals))

    def accept(self, node_id: str, msg: ctl.TelemetrySample) -> NodeSample | None:
        """The sample as a record, or None for a duplicate."""
        pos = self._positions.get(node_id)
        if pos is None or pos.boot_id != msg.boot_id:
            pos = _BootPosition(msg.boot_id, 0, 0)
            self._positions[node_id] = pos
        seq = msg.seq
        if seq <= pos.last_seq:
            self.duplicates += 1
            return None
        stages = []
        for st in msg.stages:
            totals = tuple(getattr(st, name) for name in _COUNTERS)
            before = pos.stage_totals.get(st.stage_id)
            pos.stage_totals[st.stage_id] = totals
            # Counters start at 0 on each boot: the first sample seen of a boot carries everything so far.
            if before is None:
                deltas = [totals[i] for i in _DELTA_INDEXES]
            else:
                deltas = [max(0, totals[i] - before[i]) for i in _DELTA_INDEXES]
            stages.append(StageSample(  # type: ignore[call-arg]  # mypy cannot count the starred tuples
                st.stage_id, *totals, *deltas,
                st.inferences_per_s, st.escalated_per_s, st.escalation_rate, st.latency_p50_ms,
                st.latency_p95_ms, st.latency_p99_ms, st.queue_depth, st.link_state, st.energy_joules_total,
                st.energy_per_inference_j, st.score_kind, tuple(st.score_histogram), st.dead_letters,
                st.hop_latency_p95_ms, shadow_counts(st),
            ))
        energy_delta = max(0.0, msg.energy_joules_total - pos.energy_total)
        pos.energy_total = msg.energy_joules_total
        pos.last_seq = seq
        pos.last_ts_ms = msg.timestamp_ms
        return NodeSample(
            node_id, msg.boot_id, seq, msg.timestamp_ms, msg.interval_s, msg.cpu_percent, msg.rss_bytes,
            msg.power_watts, msg.power_source, msg.power_measured, msg.energy_joules_total, energy_delta,
            msg.backlog, tuple(stages),
        )


def shadow_counts(st: ctl.StageTelemetry) -> ShadowCounts | None:
    """A stage's shadow figures from its telemetry (None when it reports none: no next hop)."""
    if not st.HasField("shadow"):
        return None
    sh = st.shadow
    return ShadowCounts(st.shadow_sent_total, st.shadow_answered_total, st.shadow_agreed_total, st.shadow_shed_total,
                        sh.rate, {(p.settled, p.answered): p.count for p in sh.disagreements},
                        tuple(sh.answered), tuple(sh.disagreed), tuple(sh.escalated_answered),
                        tuple(sh.escalated_disagreed))


class RingBuffer:
    """A fixed-capacity numpy ring of (time, columns...) rows; appending never allocates."""

    def __init__(self, columns: tuple[str, ...], capacity: int = 1200) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.columns = columns
        self.capacity = capacity
        self._index = {name: i for i, name in enumerate(columns)}
        self._t = np.zeros(capacity, dtype=np.float64)
        self._data = np.zeros((capacity, len(columns)), dtype=np.float64)
        self._next = 0
        self._count = 0
        self.appended = 0

    def __len__(self) -> int:
        return self._count

    def append(self, t: float, values: tuple[float, ...]) -> None:
        """Add one row (time in seconds, one value per column)."""
        i = self._next
        self._t[i] = t
        self._data[i] = values
        self._next = (i + 1) % self.capacity
        if self._count < self.capacity:
            self._count += 1
        self.appended += 1

    def extend(self, t: npt.NDArray[np.float64], rows: npt.NDArray[np.float64]) -> None:
        """Add many rows at once (times, one row of columns each), oldest first: as `append` row by row."""
        n = len(t)
        if n == 0:
            return
        if n > self.capacity:   # only the newest `capacity` rows stay, as appending them one by one would leave
            skipped = n - self.capacity
            self._next = (self._next + skipped) % self.capacity
            self.appended += skipped
            t, rows, n = t[skipped:], rows[skipped:], self.capacity
        idx = (self._next + np.arange(n)) % self.capacity
        self._t[idx] = t
        self._data[idx] = rows
        self._next = int((self._next + n) % self.capacity)
        self._count = min(self.capacity, self._count + n)
        self.appended += n

    def _order(self) -> slice | npt.NDArray[np.intp]:
        if self._count < self.capacity:
            return slice(0, self._count)
        return np.r_[self._next:self.capacity, 0:self._next]

    def times(self) -> npt.NDArray[np.float64]:
        """Times of the rows held, oldest first (a copy)."""
        return self._t[self._order()].copy()

    def column(self, name: str) -> npt.NDArray[np.float64]:
        """One column, oldest first (a copy)."""
        return self._data[self._order(), self._index[name]].copy()

    def tail(self, count: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """The newest `count` rows held, oldest first: (times, values with one column per column name).

        Views into the ring where the rows are contiguous: read them before the next `append`.
        """
        count = max(0, min(count, self._count))
        first = self._next - count
        if first >= 0:
            return self._t[first:self._next], self._data[first:self._next]
        rows = np.r_[self.capacity + first:self.capacity, 0:self._next]
        return self._t[rows], self._data[rows]

    def series(self, name: str, since: float | None = None) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(times, values) of one column, oldest first, optionally only rows at or after `since`."""
        t, v = self.times(), self.column(name)
        if since is not None:
            keep = t >= since
            t, v = t[keep], v[keep]
        return t, v

    def last(self, name: str) -> float | None:
        """The newest value of a column, or None when empty."""
        if not self._count:
            return None
        return float(self._data[(self._next - 1) % self.capacity, self._index[name]])


NODE_COLUMNS = ("cpu_percent", "power_watts", "rss_bytes", "energy_joules_total", "backlog")
STAGE_COLUMNS = ("inferences_per_s", "escalated_per_s", "escalation_rate", "latency_p50_ms", "latency_p95_ms",
                 "latency_p99_ms", "queue_depth", "energy_per_inference_j", "inferences_total", "errors_total",
                 "shadow_answered_total", "shadow_agreed_total")
HISTOGRAM_BINS = 20


class LiveTelemetry:
    """Ring buffers per node and per (node, stage), plus the latest sample of each node.

    Not thread-safe: owned by one thread (the GUI thread in the Qt model, the loop thread headless).
    """

    def __init__(self, capacity: int = 1200) -> None:
        self.capacity = capacity
        self.nodes: dict[str, RingBuffer] = {}
        self.stages: dict[tuple[str, str], RingBuffer] = {}
        self.histograms: dict[tuple[str, str], RingBuffer] = {}
        self.latest: dict[str, NodeSample] = {}
        self.samples = 0
        self.shadow: dict[tuple[str, str], dict[str, ShadowCounts]] = {}

    def add(self, sample: NodeSample) -> None:
        """Append one sample to its buffers."""
        t = sample.ts_ms / 1000.0
        ring = self.nodes.get(sample.node_id)
        if ring is None:
            ring = self.nodes[sample.node_id] = RingBuffer(NODE_COLUMNS, self.capacity)
        ring.append(t, (sample.cpu_percent, sample.power_watts, sample.rss_bytes, sample.energy_joules_total,
                        sample.backlog))
        for st in sample.stages:
            key = (sample.node_id, st.stage_id)
            sring = self.stages.get(key)
            if sring is None:
                sring = self.stages[key] = RingBuffer(STAGE_COLUMNS, self.capacity)
                self.histograms[key] = RingBuffer(tuple(f"bin{i}" for i in range(HISTOGRAM_BINS)), self.capacity)
            sring.append(t, (st.inferences_per_s, st.escalated_per_s, st.escalation_rate, st.latency_p50_ms,
                             st.latency_p95_ms, st.latency_p99_ms, st.queue_depth, st.energy_per_inference_j,
                             st.inferences_total, st.errors_total, st.shadow_answered_total, st.shadow_agreed_total))
            if st.shadow is not None:  # latest per boot: counters restart with each boot
                boots = self.shadow.setdefault(key, {})
                boots[sample.boot_id] = st.shadow
                while len(boots) > 8:
                    boots.pop(next(iter(boots)))
            if len(st.score_histogram) == HISTOGRAM_BINS:
                self.histograms[key].append(t, st.score_histogram)
        self.latest[sample.node_id] = sample
        self.samples += 1

    def forget(self, node_id: str) -> None:
        """Drop a node's buffers."""
        self.nodes.pop(node_id, None)
        self.latest.pop(node_id, None)
        for key in [k for k in self.stages if k[0] == node_id]:
            self.stages.pop(key, None)
            self.histograms.pop(key, None)
            self.shadow.pop(key, None)

    def rename(self, old: str, new: str) -> None:
        """Move a node's buffers to its new key."""
        if old in self.nodes:
            self.nodes[new] = self.nodes.pop(old)
        if old in self.latest:
            self.latest[new] = self.latest.pop(old)
        for key in [k for k in self.stages if k[0] == old]:
            self.stages[(new, key[1])] = self.stages.pop(key)
            self.histograms[(new, key[1])] = self.histograms.pop(key)
            if key in self.shadow:
                self.shadow[(new, key[1])] = self.shadow.pop(key)

    def shadow_counts(self, stage_id: str) -> ShadowCounts:
        """The link's shadow figures summed over the nodes running the stage and their boots seen."""
        total = ShadowCounts()
        for (_, sid), boots in self.shadow.items():
            if sid == stage_id:
                for counts in boots.values():
                    total = total + counts
        return total

    def score_histogram(self, node_id: str, stage_id: str, since: float | None = None) -> npt.NDArray[np.float64]:
        """Sum of the stage's score histograms (20 bins over [0, 1]) since `since` (seconds), for the what-if plot."""
        ring = self.histograms.get((node_id, stage_id))
        if ring is None or not len(ring):
            return np.zeros(HISTOGRAM_BINS)
        t = ring.times()
        keep = slice(None) if since is None else t >= since
        return np.array([ring.column(f"bin{i}")[keep].sum() for i in range(HISTOGRAM_BINS)])
