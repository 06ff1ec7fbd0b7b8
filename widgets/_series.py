"""Time-series arithmetic for the dashboard: binning, summing across nodes, merging history with live rings.

Nodes sample at their own instants, so per-tier figures are computed on a common grid: each
node's series is averaged per bin (rates stay rates), a bin a node missed is carried forward for
up to `FILL_BINS` bins (sampling jitter must not read as a dip), then the nodes are summed (or
maxed). Empty grid bins stay NaN, which pyqtgraph draws as a gap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
FILL_BINS = 3

# Rollup (one-minute) columns → the live ring's column, and how to convert (per-minute counts → per second).
ROLLUP_STAGE = {"inferences": ("inferences_per_s", 1 / 60), "escalated": ("escalated_per_s", 1 / 60),
                "latency_p95_ms_avg": ("latency_p95_ms", 1.0)}
ROLLUP_NODE = {"power_watts_avg": ("power_watts", 1.0), "backlog_max": ("backlog", 1.0)}


class Grid:
    """Bins of equal width covering [start, end)."""

    def __init__(self, start: float, end: float, width: float) -> None:
        self.start = start
        self.width = max(width, 1e-3)
        self.count = max(1, int(np.ceil((end - start) / self.width)))
        self.centers: Array = (start + (np.arange(self.count) + 0.5) * self.width).astype(np.float64)

    def bin_mean(self, t: Array, v: Array) -> Array:
        """Mean of `v` per bin (NaN where no sample), short gaps carried forward."""
        out = np.full(self.count, np.nan)
        if len(t) == 0:
            return out
        idx = np.floor((t - self.start) / self.width).astype(np.int64)
        keep = (idx >= 0) & (idx < self.count) & np.isfinite(v)
        if not keep.any():
            return out
        idx, vals = idx[keep], v[keep]
        sums = np.bincount(idx, vals, self.count)
        counts = np.bincount(idx, None, self.count)
        has = counts > 0
        out[has] = sums[has] / counts[has]
        return carry_forward(out, FILL_BINS)


    def bin_rows(self, series: Sequence[tuple[Array, Array]]) -> Array:
        """`bin_mean` of many series at once: one row per series (one bincount for all of them)."""
        n = len(series)
        if n == 0:
            return np.full((0, self.count), np.nan)
        lengths = np.fromiter((len(t) for t, _ in series), dtype=np.int64, count=n)
        if lengths.sum() == 0:
            return np.full((n, self.count), np.nan)
        t = np.concatenate([t for t, _ in series])
        v = np.concatenate([v for _, v in series])
        rows = np.repeat(np.arange(n), lengths)
        idx = np.floor((t - self.start) / self.width).astype(np.int64)
        keep = (idx >= 0) & (idx < self.count) & np.isfinite(v)
        flat = rows[keep] * self.count + idx[keep]
        size = n * self.count
        sums = np.bincount(flat, v[keep], size).reshape(n, self.count)
        counts = np.bincount(flat, None, size).reshape(n, self.count)
        out = np.full((n, self.count), np.nan)
        has = counts > 0
        out[has] = sums[has] / counts[has]
        return carry_forward_rows(out, FILL_BINS)


def carry_forward_rows(values: Array, limit: int) -> Array:
    """`carry_forward` of every row of a 2-D array."""
    valid = np.isfinite(values)
    positions = np.broadcast_to(np.arange(values.shape[1]), values.shape)
    last = np.where(valid, positions, -1)
    np.maximum.accumulate(last, axis=1, out=last)
    fill = (~valid) & (last >= 0) & (positions - last <= limit)
    out = values.copy()
    rows = np.broadcast_to(np.arange(values.shape[0])[:, None], values.shape)
    out[fill] = values[rows[fill], last[fill]]
    newest = np.where(valid.any(axis=1), values.shape[1] - 1 - np.argmax(valid[:, ::-1], axis=1), -1)
    out[positions > newest[:, None]] = np.nan
    return out


def combine_rows(rows: Array, how: str = "sum") -> Array:
    """`combine` over the rows of a 2-D array."""
    if rows.shape[0] == 0:
        return np.full(rows.shape[1], np.nan)
    return combine(list(rows), how)


def carry_forward(values: Array, limit: int) -> Array:
    """Fill NaN runs of at most `limit` bins after a value with that value."""
    valid = np.isfinite(values)
    if valid.all() or not valid.any():
        return values
    positions = np.arange(len(values))
    last = np.where(valid, positions, -1)
    np.maximum.accumulate(last, out=last)
    fill = (~valid) & (last >= 0) & (positions - last <= limit)
    out = values.copy()
    out[fill] = values[last[fill]]
    # never extend past the newest sample of the series
    newest = positions[valid][-1]
    out[positions > newest] = np.nan
    return out


def combine(rows: Sequence[Array], how: str = "sum") -> Array:
    """Sum (or max, or mean) several binned series; NaN where none has a value."""
    if not rows:
        return np.zeros(0)
    stack = np.vstack(rows)
    any_valid = np.isfinite(stack).any(axis=0)
    with np.errstate(all="ignore"):
        if how == "max":
            out = np.nanmax(np.where(np.isfinite(stack), stack, -np.inf), axis=0)
        elif how == "mean":
            counts = np.isfinite(stack).sum(axis=0)
            out = np.nansum(stack, axis=0) / np.maximum(counts, 1)
        else:
            out = np.nansum(stack, axis=0)
    out = out.astype(np.float64)
    out[~any_valid] = np.nan
    return out


def bin_width(window_s: float, intervals: Sequence[float], target_bins: int = 300) -> float:
    """Grid width: window / target bins, but never finer than the typical sampling interval."""
    typical = float(np.median(intervals)) if len(intervals) else 1.0
    return max(window_s / target_bins, typical)


def typical_interval(t: Array) -> float | None:
    """Median spacing of a series' times (None with fewer than 3 samples)."""
    if len(t) < 3:
        return None
    return float(np.median(np.diff(t[-50:])))


def merge(history: tuple[Array, Array] | None, live_t: Array, live_v: Array) -> tuple[Array, Array]:
    """History older than the first live sample, then the live samples."""
    if history is None or len(history[0]) == 0:
        return live_t, live_v
    ht, hv = history
    if len(live_t):
        keep = ht < live_t[0]
        ht, hv = ht[keep], hv[keep]
    return np.concatenate([ht, live_t]), np.concatenate([hv, live_v])


def history_series(result: dict[str, object], node: bool) -> dict[str, tuple[Array, Array]]:
    """A `history_loaded` result (one-minute rollups) as live-column series: {column: (t, v)}."""
    mapping = ROLLUP_NODE if node else ROLLUP_STAGE
    t = np.asarray(result.get("t", []), dtype=np.float64) + 30.0   # minute start → its middle
    out: dict[str, tuple[Array, Array]] = {}
    for column, (live, scale) in mapping.items():
        values = result.get(column)
        if values is None:
            continue
        v = np.asarray([np.nan if x is None else float(x) for x in values], dtype=np.float64) * scale  # type: ignore[attr-defined]
        out[live] = (t, v)
    return out


# ----- incremental aggregation -------------------------------------------------------------------------------------
#
# The per-tier and per-link curves are kept up to date sample by sample instead of re-binning every
# node's ring buffer each frame. Bins are aligned to multiples of the bin width (so a bin keeps its
# place from frame to frame) and live in fixed-size circular arrays. Each source series (one node's
# column, or one stage's column on a node) keeps its running mean for its newest bin and writes its
# per-bin value (carried forward over short gaps, exactly as `Grid.bin_mean` does) into one row of
# every group it feeds; a group recombines only the bins that changed since it was last read.

class BinnedGroup:
    """Per-bin values of several member series (one row each) and their combination (sum, max or mean)."""

    def __init__(self, how: str, capacity: int) -> None:
        if how not in ("sum", "max", "mean"):
            raise ValueError(f"unknown combination {how!r}")
        self.how = how
        self.capacity = capacity
        self.cells: Array = np.full((4, capacity), np.nan)
        self.members = 0
        self.out: Array = np.full(capacity, np.nan)
        self.dirty_from: int | None = None     # the oldest bin whose combination is stale

    def add_member(self) -> int:
        """A new row (all NaN); returns its index."""
        if self.members == self.cells.shape[0]:
            grown = np.full((2 * self.members, self.capacity), np.nan)
            grown[:self.members] = self.cells
            self.cells = grown
        self.members += 1
        return self.members - 1

    def set(self, row: int, k: int, value: float) -> None:
        """Member `row`'s value in bin `k` (an absolute bin index)."""
        slot = k % self.capacity
        if self.cells[row, slot] == value:
            return
        self.cells[row, slot] = value
        if self.dirty_from is None or k < self.dirty_from:
            self.dirty_from = k

    def set_row(self, row: int, first: int, values: Array) -> None:
        """Member `row`'s values for the bins `first`, `first + 1`, … (a bulk load)."""
        slots = (first + np.arange(len(values))) % self.capacity
        self.cells[row, slots] = values
        if self.dirty_from is None or first < self.dirty_from:
            self.dirty_from = first

    def clear(self, first: int, last: int) -> None:
        """Forget bins `first`..`last` (recycled slots of the circular arrays)."""
        if last < first:
            return
        slots = np.arange(first, last + 1) % self.capacity if last - first < self.capacity else slice(None)
        self.cells[:, slots] = np.nan
        self.out[slots] = np.nan

    def combined(self, head: int) -> Array:
        """The combination per slot, recombining the stale bins up to `head` first."""
        if self.dirty_from is not None:
            first = max(self.dirty_from, head - self.capacity + 1)
            if first <= head:
                slots = np.arange(first, head + 1) % self.capacity
                self.out[slots] = _combine_columns(self.cells[:self.members][:, slots], self.how)
            self.dirty_from = None
        return self.out


def _combine_columns(cells: Array, how: str) -> Array:
    """`combine` of the rows of `cells` (NaN where no row has a value)."""
    if cells.shape[0] == 0:
        return np.full(cells.shape[1], np.nan)
    valid = np.isfinite(cells)
    any_valid = valid.any(axis=0)
    with np.errstate(all="ignore"):
        if how == "max":
            out = np.where(valid, cells, -np.inf).max(axis=0)
        elif how == "mean":
            out = np.where(valid, cells, 0.0).sum(axis=0) / np.maximum(valid.sum(axis=0), 1)
        else:
            out = np.where(valid, cells, 0.0).sum(axis=0)
    out[~any_valid] = np.nan
    return out


class BinnedSource:
    """One series being binned as its samples arrive; it writes its per-bin mean into its groups' rows."""

    __slots__ = ("k", "n", "targets", "total")

    def __init__(self, targets: list[tuple[BinnedGroup, int]]) -> None:
        self.targets = targets
        self.k: int | None = None      # the bin of the newest sample
        self.total = 0.0               # sum and count of the samples in that bin
        self.n = 0


class Aggregator:
    """Groups of series (per tier, per link) combined per aligned bin, updated sample by sample.

    A source series feeds one or more groups; `add` takes its new samples (oldest first); `values`
    gives a group's `bins` bins that end `lag` bins before the newest (the newest bins are still
    filling: a sum over nodes that have not all reported yet would dip), oldest first, whose centres
    are `centers()`. Samples older than a source's newest bin are ignored (a node's samples arrive in
    order), as are non-finite values.
    """

    def __init__(self, width: float, bins: int, fill: int = FILL_BINS, lag: int = 0) -> None:
        self.width = max(width, 1e-3)
        self.bins = max(1, bins)
        self.fill = fill
        self.lag = max(0, lag)
        self.capacity = self.bins + self.lag + fill + 2
        self.head: int | None = None
        self.newest: int | None = None      # the newest bin any sample fell in (the head also moves with the clock)
        self.groups: dict[object, BinnedGroup] = {}
        self.sources: dict[object, BinnedSource] = {}
        self._centers: Array = np.zeros(0)
        self._centers_head: int | None = None

    def bin_of(self, t: float) -> int:
        """The absolute bin index of time `t`."""
        return math.floor(t / self.width)

    def group(self, key: object, how: str = "sum") -> BinnedGroup:
        """The group `key` (created empty on first use)."""
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = BinnedGroup(how, self.capacity)
        return group

    def source(self, key: object, groups: Sequence[tuple[object, str]]) -> BinnedSource:
        """The source `key`, feeding the groups named (with their combination) when first created."""
        source = self.sources.get(key)
        if source is None:
            targets = []
            for group_key, how in groups:
                group = self.group(group_key, how)
                targets.append((group, group.add_member()))
            source = self.sources[key] = BinnedSource(targets)
        return source

    def advance(self, now: float) -> None:
        """Move the newest bin to the one holding `now` (never back); recycled bins are emptied."""
        self._advance_to(self.bin_of(now))

    def _advance_to(self, k: int) -> None:
        if self.head is not None and k <= self.head:
            return
        if self.head is not None:
            for group in self.groups.values():
                group.clear(max(self.head + 1, k - self.capacity + 1), k)
        self.head = k

    def add(self, source: BinnedSource, t: Array, v: Array) -> None:
        """New samples of a source, oldest first."""
        self.add_rows([0], [source], t, np.asarray(v).reshape(-1, 1))

    def add_rows(self, columns: Sequence[int], sources: Sequence[BinnedSource], t: Array, rows: Array) -> None:
        """New rows of sources that share their times (`columns` of one ring's rows, the source of each), oldest
        first, in one pass over the rows (the live path: a row or two a ring). A sample that is not finite is
        skipped; a source's bins between two samples carry its last value forward for up to `fill` bins."""
        width, fill, capacity = self.width, self.fill, self.capacity
        for ti, row_values in zip(t.tolist(), rows.tolist(), strict=True):   # (numpy's rows[:, columns]: 2 µs)
            values = [row_values[column] for column in columns]
            finite = [vi == vi and vi not in (math.inf, -math.inf) for vi in values]
            if not any(finite):
                continue
            k = math.floor(ti / width)   # the same division as `load` and `bin_of`
            if self.head is None or k > self.head:
                self._advance_to(k)
            if self.newest is None or k > self.newest:
                self.newest = k
            oldest = self.head - capacity + 1   # type: ignore[operator]
            slot = k % capacity
            for source, vi, ok in zip(sources, values, finite, strict=True):
                if not ok:
                    continue
                sk = source.k
                if sk is None or k > sk:
                    if sk is not None and source.n:
                        last = source.total / source.n
                        for j in range(max(sk + 1, oldest), min(k, sk + fill + 1)):
                            for group, row in source.targets:
                                group.set(row, j, last)
                    source.k, source.total, source.n = k, vi, 1
                elif k == sk:
                    source.total += vi
                    source.n += 1
                else:
                    continue   # older than the source's newest bin
                if k >= oldest:
                    value = source.total / source.n
                    for group, row in source.targets:   # `group.set`, inlined: the hottest line of a fold
                        cells = group.cells
                        if cells[row, slot] != value:
                            cells[row, slot] = value
                            if group.dirty_from is None or k < group.dirty_from:
                                group.dirty_from = k

    def load(self, source: BinnedSource, t: Array, v: Array) -> None:
        """A new source's whole series at once (a rebuild): what `add` would give, vectorised."""
        if source.k is not None:
            self.add(source, t, v)
            return
        keep = np.isfinite(v)
        t, v = t[keep], v[keep]
        if len(t) == 0:
            return
        k = np.floor(t / self.width).astype(np.int64)
        in_order = k >= np.maximum.accumulate(k)   # `add` ignores a sample older than the newest bin
        k, v = k[in_order], v[in_order]
        self._advance_to(int(k[-1]))
        if self.newest is None or k[-1] > self.newest:
            self.newest = int(k[-1])
        assert self.head is not None
        first = self.head - self.capacity + 1
        rel = k - first
        inside = rel >= 0
        last = int(rel[-1])
        source.k = int(k[-1])
        if not inside.any():
            source.total, source.n = float(v[-1]), 1
            return
        sums = np.bincount(rel[inside], v[inside], self.capacity)
        counts = np.bincount(rel[inside], None, self.capacity)
        means = np.full(self.capacity, np.nan)
        has = counts > 0
        means[has] = sums[has] / counts[has]
        means = carry_forward(means, self.fill)
        start = int(rel[inside][0])
        for group, row in source.targets:
            group.set_row(row, first + start, means[start:])
        source.total, source.n = float(sums[last]), int(counts[last])

    @property
    def shown_data(self) -> int | None:
        """The newest bin shown that samples reached: it stops moving when the samples stop."""
        if self.shown is None or self.newest is None:
            return None
        return min(self.shown, self.newest)

    @property
    def shown(self) -> int | None:
        """The newest bin shown (`lag` bins before the newest); None before any sample or `advance`."""
        return None if self.head is None else self.head - self.lag

    def values(self, key: object) -> Array:
        """Group `key`'s `bins` bins up to `shown`, oldest first (NaN where no member had a value)."""
        group = self.groups.get(key)
        if group is None or self.head is None:
            return np.full(self.bins, np.nan)
        out = group.combined(self.head)
        slots = (self.head - self.lag - self.bins + 1 + np.arange(self.bins)) % self.capacity
        return out[slots]

    def centers(self) -> Array:
        """Centres of the bins `values` gives (Unix seconds), oldest first."""
        if self.head is None:
            return np.zeros(0)
        if self._centers_head != self.head:
            first = self.head - self.lag - self.bins + 1
            self._centers = (first + np.arange(self.bins) + 0.5) * self.width
            self._centers_head = self.head
        return self._centers


# What each live column feeds: (plot group, how members combine, grouped by "tier" or by "link" (stage id)).
NODE_FEEDS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "power_watts": (("power", "sum", "tier"),),
    "backlog": (("backlog", "sum", "tier"),),
}
STAGE_FEEDS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "inferences_per_s": (("throughput", "sum", "tier"), ("inferred", "sum", "link")),
    "escalated_per_s": (("escalated", "sum", "link"),),
    "latency_p95_ms": (("latency", "max", "tier"),),
    "energy_per_inference_j": (("energy", "mean", "link"),),
}


class TierRollup:
    """The dashboard's per-tier and per-link figures, fed from the live ring buffers as samples arrive.

    `ingest` reads only the rows a ring gained since the last call (its first call loads the whole
    ring, after any history). The curves end with the last complete bin (`lag` 1). Group keys are
    (plot, tier) for tier groups and (plot, stage id) for link groups, plots as in NODE_FEEDS /
    STAGE_FEEDS.
    """

    def __init__(self, width: float, bins: int, lag: int = 1) -> None:
        self.aggregator = Aggregator(width, bins, lag=lag)
        self._seen: dict[tuple[str, str], int] = {}
        # ring → (column indexes, their sources)
        self._feeds: dict[tuple[str, str], tuple[list[int], list[BinnedSource]]] = {}
        self.stages: dict[str, set[str]] = {}          # node id → stage ids seen
        self.tiers: dict[str, set[str]] = {}           # plot → tiers with a member
        self.links: set[str] = set()                   # stage ids with a member

    def ingest(self, node_id: str, tier: str, stage_id: str, ring: object | None,
               history: dict[str, tuple[Array, Array]] | None = None) -> bool:
        """Fold a ring's new rows (a node's when `stage_id` is '', else that stage's) in; True when any."""
        key = (node_id, stage_id)
        agg = self.aggregator
        appended = int(getattr(ring, "appended", 0))
        feeds = self._feeds.get(key)
        if feeds is None:
            return self._first_ingest(key, tier, ring, history, appended)
        new = appended - self._seen[key]
        if new <= 0:
            return False
        self._seen[key] = appended
        t, rows = ring.tail(new)   # type: ignore[union-attr]
        agg.add_rows(*feeds, t, rows)
        return True

    def _first_ingest(self, key: tuple[str, str], tier: str, ring: object | None,
                      history: dict[str, tuple[Array, Array]] | None, appended: int) -> bool:
        node_id, stage_id = key
        agg = self.aggregator
        columns = STAGE_FEEDS if stage_id else NODE_FEEDS
        if stage_id:
            self.stages.setdefault(node_id, set()).add(stage_id)
            self.links.add(stage_id)
        for targets in columns.values():
            for plot, _how, by in targets:
                if by == "tier":
                    self.tiers.setdefault(plot, set()).add(tier)
        size = len(ring) if ring is not None else 0   # type: ignore[arg-type]
        t = ring.times() if size else np.zeros(0)     # type: ignore[union-attr]
        names: tuple[str, ...] = getattr(ring, "columns", ())
        feeds: list[tuple[int, BinnedSource]] = []
        for column, targets in columns.items():
            v = ring.column(column) if size else np.zeros(0)   # type: ignore[union-attr]
            source = agg.source((node_id, stage_id, column), self._groups(targets, tier, stage_id))
            agg.load(source, *merge((history or {}).get(column), t, v))
            feeds.append((names.index(column) if column in names else -1, source))
        self._seen[key] = appended
        if all(i >= 0 for i, _ in feeds):
            self._feeds[key] = ([i for i, _ in feeds], [source for _, source in feeds])
        return bool(size) or bool(history)

    @staticmethod
    def _groups(targets: tuple[tuple[str, str, str], ...], tier: str, stage_id: str) -> list[tuple[object, str]]:
        return [((plot, tier if by == "tier" else stage_id), how) for plot, how, by in targets]

    def values(self, plot: str, member: str) -> Array:
        """The combined bins of group (plot, tier or stage id), oldest first."""
        return self.aggregator.values((plot, member))

    def escalation_rate(self, stage_id: str) -> Array:
        """Escalated / inferred per bin across the nodes running the stage (0 where nothing was inferred)."""
        inferred = self.values("inferred", stage_id)
        escalated = self.values("escalated", stage_id)
        with np.errstate(all="ignore"):
            return np.where(inferred > 0, escalated / inferred, np.where(np.isfinite(inferred), 0.0, np.nan))


def missed_rate(grid: Grid, nodes: Sequence[tuple[tuple[Array, Array], tuple[Array, Array]]]) -> Array:
    """A link's estimated miss rate per bin from its nodes' cumulative shadow counters ((answered, agreed) series
    per node): (answered − agreed) / answered summed over the nodes; NaN before any shadow row was answered."""
    if not nodes:
        return np.full(grid.count, np.nan)
    answered = combine([grid.bin_mean(*a) for a, _ in nodes])
    agreed = combine([grid.bin_mean(*g) for _, g in nodes])
    with np.errstate(all="ignore"):
        return np.where(answered > 0, (answered - agreed) / answered, np.nan)
