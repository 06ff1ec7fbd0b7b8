"""The dashboard's incremental per-tier / per-link aggregation against a brute-force recomputation from the
ring buffers, after random sample streams (jitter, gaps longer than the carry-forward, NaNs, ring overflow)."""

from __future__ import annotations

import numpy as np
import pytest

from app._telemetry import NODE_COLUMNS, STAGE_COLUMNS, RingBuffer
from widgets._series import FILL_BINS, Aggregator, TierRollup, carry_forward, merge

Array = np.ndarray


def brute_bins(t: Array, v: Array, width: float, first: int, count: int) -> Array:
    """One series' per-bin means on bins first..first+count-1 (absolute), carried forward like the dashboard."""
    keep = np.isfinite(v)
    t, v = t[keep], v[keep]
    k = np.floor(t / width).astype(np.int64)
    in_order = k >= np.maximum.accumulate(k) if len(k) else np.zeros(0, dtype=bool)
    k, v = k[in_order], v[in_order]
    lo = min(first, int(k.min())) if len(k) else first     # bin from the series' start: carry may cross `first`
    span = first + count - lo
    rel = k - lo
    rel, v = rel[rel < span], v[rel < span]     # bins after the last one asked for
    sums = np.bincount(rel, v, span) if len(rel) else np.zeros(span)
    counts = np.bincount(rel, None, span) if len(rel) else np.zeros(span)
    out = np.full(span, np.nan)
    out[counts > 0] = sums[counts > 0] / counts[counts > 0]
    return carry_forward(out, FILL_BINS)[first - lo:][:count]


def brute_combine(rows: list[Array], how: str) -> Array:
    stack = np.vstack(rows)
    valid = np.isfinite(stack)
    with np.errstate(all="ignore"):
        if how == "max":
            out = np.where(valid, stack, -np.inf).max(axis=0)
        elif how == "mean":
            out = np.where(valid, stack, 0).sum(axis=0) / np.maximum(valid.sum(axis=0), 1)
        else:
            out = np.where(valid, stack, 0).sum(axis=0)
    out[~valid.any(axis=0)] = np.nan
    return out


def random_stream(rng: np.random.Generator, start: float, n: int, interval: float) -> tuple[Array, Array]:
    """Times in order with jitter, bursts in one bin, and now and then a gap longer than the carry-forward."""
    steps = rng.exponential(interval, n)
    steps[rng.random(n) < 0.05] *= 12          # gaps of several bins
    steps[rng.random(n) < 0.1] = 0.0           # two samples at the same instant
    t = start + np.cumsum(steps)
    v = rng.gamma(2.0, 3.0, n)
    v[rng.random(n) < 0.03] = np.nan
    return t, v


@pytest.mark.parametrize("seed", range(6))
def test_aggregator_groups_equal_brute_force_after_random_streams(seed: int) -> None:
    rng = np.random.default_rng(seed)
    width, bins = 0.2, 150
    agg = Aggregator(width, bins)
    sources = []
    for i in range(12):
        how = ("sum", "max", "mean")[i % 3]
        groups = [(("g", i % 3, how), how)]
        if i % 4 == 0:
            groups.append((("all", "sum"), "sum"))    # one source feeding two groups
        sources.append((agg.source(i, groups), groups, *random_stream(rng, 1000.0, 500, 0.1)))
    fed = [0] * len(sources)
    while any(f < len(s[2]) for f, s in zip(fed, sources, strict=True)):
        i = int(rng.integers(len(sources)))
        source, _groups, t, v = sources[i]
        if fed[i] >= len(t):
            continue
        take = int(rng.integers(1, 6))
        agg.add(source, t[fed[i]:fed[i] + take], v[fed[i]:fed[i] + take])
        fed[i] += take
        if rng.random() < 0.02:
            assert_matches(agg, sources, fed, width, bins)
    assert_matches(agg, sources, fed, width, bins)


def assert_matches(agg: Aggregator, sources: list, fed: list[int], width: float, bins: int) -> None:
    assert agg.head is not None
    first = agg.head - bins + 1
    members: dict[object, list[Array]] = {}
    hows: dict[object, str] = {}
    for (_source, groups, t, v), n in zip(sources, fed, strict=True):
        binned = brute_bins(t[:n], v[:n], width, first, bins)
        for key, how in groups:
            members.setdefault(key, []).append(binned)
            hows[key] = how
    for key, rows in members.items():
        expected = brute_combine(rows, hows[key])
        assert np.allclose(agg.values(key), expected, equal_nan=True), key
    assert np.allclose(agg.centers(), (first + np.arange(bins) + 0.5) * width)


def test_a_bulk_load_then_samples_equals_samples_one_by_one() -> None:
    rng = np.random.default_rng(7)
    width, bins = 0.5, 80
    t, v = random_stream(rng, 5000.0, 400, 0.3)
    one, bulk = Aggregator(width, bins), Aggregator(width, bins)
    a, b = one.source("s", [("g", "sum")]), bulk.source("s", [("g", "sum")])
    for i in range(len(t)):
        one.add(a, t[i:i + 1], v[i:i + 1])
    bulk.load(b, t[:250], v[:250])
    bulk.add(b, t[250:], v[250:])
    assert one.head == bulk.head
    assert np.allclose(one.values("g"), bulk.values("g"), equal_nan=True)
    assert np.isfinite(one.values("g")).sum() > bins // 2


@pytest.mark.parametrize("seed", range(4))
def test_rows_of_a_ring_in_one_pass_equal_its_columns_one_by_one(seed: int) -> None:
    """`add_rows` (the live path: a ring's new rows, every column at once) gives exactly what `add` gives column by
    column: the same head, the same per-group bins, through NaNs, bursts in one bin, gaps past the carry-forward and
    bins that fall out of the window."""
    rng = np.random.default_rng(seed)
    width, bins, columns = 0.2, 60, 4
    t, _ = random_stream(rng, 3000.0, 600, 0.1)
    rows = rng.gamma(2.0, 3.0, (len(t), columns))
    rows[rng.random(rows.shape) < 0.05] = np.nan
    rows[rng.random(rows.shape) < 0.01] = np.inf
    by_column, by_row = Aggregator(width, bins), Aggregator(width, bins)

    def feeds(agg: Aggregator) -> list:
        return [(c, agg.source(c, [(("g", c % 2), ("sum", "max")[c % 2]), (("all",), "mean")])) for c in range(columns)]

    column_feeds, row_feeds = feeds(by_column), feeds(by_row)
    fed = 0
    while fed < len(t):
        take = int(rng.integers(1, 4))
        chunk_t, chunk = t[fed:fed + take], rows[fed:fed + take]
        for c, source in column_feeds:
            by_column.add(source, chunk_t, chunk[:, c])
        by_row.add_rows([c for c, _ in row_feeds], [source for _, source in row_feeds], chunk_t, chunk)
        fed += take
        assert by_row.head == by_column.head and by_row.newest == by_column.newest
    for key in (("g", 0), ("g", 1), ("all",)):
        assert np.array_equal(by_row.values(key), by_column.values(key), equal_nan=True), key
        assert np.isfinite(by_row.values(key)).sum() > bins // 2


def test_the_window_moves_on_without_samples_and_old_bins_are_forgotten() -> None:
    agg = Aggregator(1.0, 10)
    s = agg.source("s", [("g", "sum")])
    agg.add(s, np.array([100.2, 101.5]), np.array([2.0, 4.0]))
    assert agg.values("g")[-2:].tolist() == [2.0, 4.0]
    agg.advance(105.0)          # four empty bins since: the last value is not carried past the newest sample
    assert agg.values("g")[-6:-4].tolist() == [2.0, 4.0] and np.isnan(agg.values("g")[-4:]).all()
    agg.advance(200.0)          # far past the window: nothing of it is left, not even in recycled slots
    assert np.isnan(agg.values("g")).all()
    agg.add(s, np.array([200.5]), np.array([7.0]))
    assert agg.values("g")[-1] == 7.0 and np.isnan(agg.values("g")[:-1]).all()


def test_a_sample_older_than_the_newest_bin_is_ignored() -> None:
    agg = Aggregator(1.0, 5)
    s = agg.source("s", [("g", "max")])
    agg.add(s, np.array([10.1, 11.1, 10.5]), np.array([1.0, 2.0, 50.0]))
    assert agg.values("g")[-2:].tolist() == [1.0, 2.0]


def test_a_lag_hides_the_bins_still_filling() -> None:
    agg = Aggregator(1.0, 4, lag=1)
    a, b = agg.source("a", [("g", "sum")]), agg.source("b", [("g", "sum")])
    agg.add(a, np.array([10.1, 11.1]), np.array([1.0, 1.0]))
    agg.add(b, np.array([10.2]), np.array([2.0]))
    # bin 11 has only a's sample so far: it is not shown; bin 10 (both) is the newest shown
    assert agg.shown == 10 and agg.values("g").tolist()[-1] == 3.0
    assert np.allclose(agg.centers(), [7.5, 8.5, 9.5, 10.5])
    agg.add(b, np.array([11.3]), np.array([2.0]))
    agg.advance(12.0)
    assert agg.shown == 11 and agg.values("g").tolist()[-2:] == [3.0, 3.0]


def ring_of(columns: tuple[str, ...], capacity: int) -> RingBuffer:
    return RingBuffer(columns, capacity)


@pytest.mark.parametrize("seed", range(3))
def test_per_tier_and_per_link_sums_equal_a_recomputation_from_the_rings(seed: int) -> None:
    """The dashboard's rollup, fed from real ring buffers batch by batch (rings overflowing on the way)."""
    rng = np.random.default_rng(100 + seed)
    width, bins, capacity = 0.2, 300, 60
    tiers = {f"n{i}": ("device", "edge", "cloud")[i % 3] for i in range(9)}
    stages = {n: (["detect"] if tiers[n] == "device" else ["classify", "heavy"][: 1 + i % 2])
              for i, n in enumerate(tiers)}
    history = {("n0", ""): {"power_watts": (np.arange(900.0, 990.0, 0.5), np.full(180, 3.0))}}
    node_rings = {n: ring_of(NODE_COLUMNS, capacity) for n in tiers}
    stage_rings = {(n, s): ring_of(STAGE_COLUMNS, capacity) for n in tiers for s in stages[n]}
    kept: dict[tuple[str, str], list[tuple[float, tuple[float, ...]]]] = {k: [] for k in
                                                                         [*((n, "") for n in tiers), *stage_rings]}
    rollup = TierRollup(width, bins)
    clock = {n: 1000.0 + rng.random() for n in tiers}
    for step in range(900):
        node = f"n{int(rng.integers(len(tiers)))}"
        clock[node] += float(rng.exponential(0.1)) * (15 if rng.random() < 0.03 else 1)
        t = clock[node]
        row = tuple(float(x) for x in rng.gamma(2.0, 2.0, len(NODE_COLUMNS)))
        node_rings[node].append(t, row)
        kept[(node, "")].append((t, row))
        for s in stages[node]:
            srow = tuple(float(x) if rng.random() > 0.02 else float("nan") for x in rng.gamma(2.0, 2.0,
                                                                                              len(STAGE_COLUMNS)))
            stage_rings[(node, s)].append(t, srow)
            kept[(node, s)].append((t, srow))
        if step == 50:
            for n in tiers:   # the first ingest of every ring: a bulk load (history first for n0)
                rollup.ingest(n, tiers[n], "", node_rings[n], history.get((n, "")))
                for s in stages[n]:
                    rollup.ingest(n, tiers[n], s, stage_rings[(n, s)])
        elif step > 50 and rng.random() < 0.3:
            rollup.ingest(node, tiers[node], "", node_rings[node])
            for s in stages[node]:
                rollup.ingest(node, tiers[node], s, stage_rings[(node, s)])
    for n in tiers:
        rollup.ingest(n, tiers[n], "", node_rings[n])
        for s in stages[n]:
            rollup.ingest(n, tiers[n], s, stage_rings[(n, s)])

    agg = rollup.aggregator
    assert agg.shown is not None and agg.shown == agg.head - 1    # the curves end with the last complete bin
    first = agg.shown - bins + 1

    def binned(key: tuple[str, str], column: str) -> Array:
        columns = STAGE_COLUMNS if key[1] else NODE_COLUMNS
        rows = kept[key]
        t = np.array([r[0] for r in rows])
        v = np.array([r[1][columns.index(column)] for r in rows])
        t, v = merge(history.get(key, {}).get(column), t, v)
        return brute_bins(t, v, width, first, bins)

    for tier in ("device", "edge", "cloud"):
        members = [n for n in tiers if tiers[n] == tier]
        expected = brute_combine([binned((n, ""), "power_watts") for n in members], "sum")
        assert np.allclose(rollup.values("power", tier), expected, equal_nan=True), tier
        expected = brute_combine([binned((n, s), "inferences_per_s") for n in members for s in stages[n]], "sum")
        assert np.allclose(rollup.values("throughput", tier), expected, equal_nan=True), tier
        expected = brute_combine([binned((n, s), "latency_p95_ms") for n in members for s in stages[n]], "max")
        assert np.allclose(rollup.values("latency", tier), expected, equal_nan=True), tier
    for link in ("detect", "classify", "heavy"):
        keys = [(n, s) for (n, s) in stage_rings if s == link]
        inferred = brute_combine([binned(k, "inferences_per_s") for k in keys], "sum")
        escalated = brute_combine([binned(k, "escalated_per_s") for k in keys], "sum")
        with np.errstate(all="ignore"):
            rate = np.where(inferred > 0, escalated / inferred, np.where(np.isfinite(inferred), 0.0, np.nan))
        assert np.allclose(rollup.escalation_rate(link), rate, equal_nan=True), link
        energy = brute_combine([binned(k, "energy_per_inference_j") for k in keys], "mean")
        assert np.allclose(rollup.values("energy", link), energy, equal_nan=True), link
    # the rings overflowed (capacity 60) and the window is still whole: the rollup kept what the rings dropped
    assert max(len(kept[k]) for k in kept) > capacity
    assert np.isfinite(rollup.values("power", "device")).sum() > bins // 2


def test_the_newest_bin_with_data_stops_when_the_samples_stop() -> None:
    agg = Aggregator(1.0, 5, lag=1)
    s = agg.source("s", [("g", "sum")])
    agg.add(s, np.array([10.1, 11.2, 12.3]), np.array([1.0, 1.0, 1.0]))
    agg.advance(13.5)
    assert agg.shown == 12 and agg.shown_data == 12
    agg.advance(20.0)           # the clock moves on, no sample: the curves' newest data stays where it was
    assert agg.shown == 19 and agg.shown_data == 12
    agg.add(s, np.array([20.4]), np.array([1.0]))
    agg.advance(21.1)
    assert agg.shown_data == 20
