"""Time-series arithmetic for the dashboard: binning, summing across nodes, merging history with live rings.

Nodes sample at their own instants, so per-tier figures are computed on a common grid: each
node's series is averaged per bin (rates stay rates), a bin a node missed is carried forward for
up to `FILL_BINS` bins (sampling jitter must not read as a dip), then the nodes are summed (or
maxed). Empty grid bins stay NaN, which pyqtgraph draws as a gap.
"""

from __future__ import annotations

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
