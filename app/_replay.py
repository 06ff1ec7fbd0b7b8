"""After-action replay (no Qt): a past window of the console database, played back as it was recorded.

`load_history(db, since_ms, until_ms, ...)` reads a window on the database's reader thread and
returns a `ReplayHistory`: per node and per (node, stage) the recorded figures as numpy tracks,
the link state of every stage sample, the node state changes (the audit log's `node_state`
events, and the last one before the window), and the events of the window.

Raw samples are played where the database still holds them. Where retention has already
deleted them (raw telemetry is kept 24 h by default), and for windows longer than
RAW_MAX_WINDOW_S, the one-minute rollups are played instead — one row per minute, placed at the
minute's middle — and `ReplayHistory.note` says so in words. Rollups carry no link states and
no cumulative counters: those read as unknown (NaN / "") there.

A window is clipped to what was recorded: one that begins in a gap of the record — nothing
recorded before it, or no telemetry for over STALE_MS across its start (a young fleet: "Last 1 h"
on a console that has recorded for three minutes; the console not running) — begins at its first
recorded sample, so the slider spans data, and the replay opens a minute into it (`open_ms`);
`asked_since_ms` keeps where the window asked for began. A window with nothing recorded at all is `empty`, and
`empty_note` says so in words and where the record is.

`ReplayTelemetry` is the history seen from one replayed instant: ring buffers holding every row
up to that instant (the same `RingBuffer` the live plots read, so the dashboard draws a replay
exactly as it draws live data), the latest sample of each node at that instant, the node states
and link states then. `seek` moves forward by appending the rows in between (the rings only
grow, as they do live) and backward by rebuilding them.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt
import sqlite_utils

from app._records import ConsoleEvent, NodeSample, NodeSnapshot, NodeState, Severity, StageSample
from app._telemetry import NODE_COLUMNS, STAGE_COLUMNS, RingBuffer
from runners.protocol import STAGE_COUNTERS

Array = npt.NDArray[np.float64]
MINUTE_MS = 60_000
RAW_MAX_WINDOW_S = 3600.0       # longer windows play the one-minute rollups (bench/replay_load.py: cost of raw)
SPEEDS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
MIN_SPEED, MAX_SPEED = 1.0, 60.0
FRAME_MS = 100                  # one replay frame: the clock advances speed × FRAME_MS of recorded time
LINK_STATES = ("", "none", "up", "down")   # codes of a stage track's "link" column ("" = not recorded)
STALE_MS = 5 * MINUTE_MS        # an online node with no telemetry recorded for this long: its state is not known
OPEN_INTO_RECORD_MS = MINUTE_MS  # a window clipped to the record opens this far into it (see ReplayHistory.open_ms)

NODE_TRACK = (*NODE_COLUMNS, "power_measured")
STAGE_TRACK = (*STAGE_COLUMNS, "link")

_RAW_NODE = ("cpu_percent", "power_watts", "rss_bytes", "energy_joules_total", "backlog", "power_measured")
# STAGE_TRACK's columns from a raw row (escalated/s is not stored: the agent's rate × escalation rate, both over
# its interval); the link state as its LINK_STATES code.
# (one expression per STAGE_TRACK column, in its order)
_RAW_STAGE_SQL = (
    "inferences_per_s, inferences_per_s * escalation_rate, escalation_rate, latency_p50_ms, latency_p95_ms, "
    "latency_p99_ms, queue_depth, energy_per_inference_j, inferences_total, errors_total, "
    "shadow_answered_total, shadow_agreed_total, "
    "CASE link_state " + " ".join(f"WHEN '{v}' THEN {i}" for i, v in enumerate(LINK_STATES) if v) + " ELSE 0 END")


@dataclass(frozen=True)
class Track:
    """Recorded rows of one node or one stage on a node: times (Unix s, ascending) and one row per time."""

    columns: tuple[str, ...]
    t: Array
    data: Array
    sources: tuple[str, ...] = ()     # node tracks: the power source of each row ("" where not recorded)

    def __len__(self) -> int:
        return len(self.t)

    def count_until(self, t_s: float) -> int:
        """How many rows are at or before `t_s`."""
        return int(np.searchsorted(self.t, t_s, side="right"))

    def value(self, i: int, column: str) -> float:
        """Row i's value of a column."""
        return float(self.data[i, self.columns.index(column)])


@dataclass(frozen=True)
class StateChange:
    """A node's connection state from `ts_ms` on, as the audit log recorded it."""

    ts_ms: int
    state: str
    reason: str = ""


@dataclass(frozen=True)
class NodeAt:
    """What the history says about one node at one instant."""

    node_id: str
    name: str
    tier: str
    state: str                    # online / degraded / offline / ... ; "" when nothing was recorded yet
    state_since_ms: int
    reason: str
    links: dict[str, str]         # stage id -> link state of its next hop ("up", "down", "none"; "" unknown)
    sample_ms: int                # time of the node's latest sample at or before the instant (0: none)


@dataclass(frozen=True)
class ReplayHistory:
    """A window of recorded history (see the module docstring); built by `load_history`."""

    since_ms: int
    until_ms: int
    nodes: dict[str, tuple[str, str]]                       # node id -> (name, tier)
    node_tracks: dict[str, Track]
    stage_tracks: dict[tuple[str, str], Track]
    events: tuple[ConsoleEvent, ...]                         # oldest first, within the window
    states: dict[str, tuple[StateChange, ...]]               # per node, oldest first (one may predate the window)
    rollup_until_ms: int         # rows before this instant come from the one-minute rollups (== since_ms: none)
    raw_retention_s: float
    raw_gone: bool               # True when rollups stand in because retention deleted the raw samples
    seen_before: dict[str, int] = field(default_factory=dict)   # per node, its last row before the window (ms)
    event_t: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    asked_since_ms: int = 0      # where the window asked for began (since_ms is later when it was clipped); 0: same
    recorded: tuple[int, int] | None = None   # an empty window only: the database's first and last record (ms)

    @property
    def clipped(self) -> bool:
        """True when the asked window began in a gap of the record and this one begins later, at its first
        recorded sample."""
        return bool(self.asked_since_ms) and self.asked_since_ms < self.since_ms

    @property
    def open_ms(self) -> int:
        """Where a replay of this window opens: its start; a minute into the record when it was clipped to it (the
        record's first sample alone is a fleet starting: nodes not yet online, empty plots; a minute in, the
        dashboard's default minute is full and the nodes' states and first events are known)."""
        return min(self.since_ms + OPEN_INTO_RECORD_MS, self.until_ms) if self.clipped else self.since_ms

    @property
    def empty(self) -> bool:
        """True when the window holds no recorded sample and no event."""
        return not self.node_tracks and not self.stage_tracks and not self.events

    @property
    def empty_note(self) -> str:
        """In words, that nothing was recorded in the window, and where the record is."""
        since = self.asked_since_ms or self.since_ms
        text = f"Nothing was recorded from {_when(since)} to {_when(self.until_ms, since)}"
        if self.recorded is None:
            return text + ": the console database holds no telemetry and no events yet."
        first, last = self.recorded
        return text + f"; the record runs from {_when(first)} to {_when(last, first)}."

    @property
    def resolution(self) -> str:
        """'raw', '1m' (rollups only) or 'mixed' (rollups, then raw samples)."""
        if self.rollup_until_ms <= self.since_ms:
            return "raw"
        return "1m" if self.rollup_until_ms > self.until_ms else "mixed"

    @property
    def note(self) -> str:
        """In words, what is played: 'raw samples', or which part comes from the rollups and why."""
        if self.resolution == "raw":
            return "playing raw samples"
        kept = _hours(self.raw_retention_s)
        if self.raw_gone:
            until = "" if self.resolution == "1m" else \
                f" until {datetime.fromtimestamp(self.rollup_until_ms / 1000):%H:%M}"
            return f"playing 1-minute rollups{until}: raw samples kept only for the last {kept}"
        return (f"playing 1-minute rollups: windows over {_hours(RAW_MAX_WINDOW_S)} play per minute "
                f"(raw samples kept for the last {kept})")

    def events_until(self, t_ms: int) -> tuple[ConsoleEvent, ...]:
        """The window's events at or before `t_ms`, oldest first."""
        n = int(np.searchsorted(self.event_t, t_ms, side="right"))
        return self.events[:n]

    def state_at(self, node_id: str, t_ms: int) -> StateChange | None:
        """The node's last recorded state change at or before `t_ms` (None: none recorded)."""
        last = None
        for change in self.states.get(node_id, ()):
            if change.ts_ms > t_ms:
                break
            last = change
        return last


def _when(t_ms: int, near_ms: int | None = None) -> str:
    """'21:05' when on the day of `near_ms` (default: today), else 'Wed 02 Dec 21:05'."""
    at = datetime.fromtimestamp(t_ms / 1000)
    near = datetime.now() if near_ms is None else datetime.fromtimestamp(near_ms / 1000)
    return f"{at:%H:%M}" if at.date() == near.date() else f"{at:%a %d %b %H:%M}"


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    if hours >= 48 and hours % 24 == 0:
        return f"{hours / 24:g} d"
    return f"{hours:g} h" if hours >= 1 else f"{seconds / 60:g} min"


def _num(value: object) -> float:
    return math.nan if value is None else float(value)  # type: ignore[arg-type]


def _fetch(cursor: sqlite3.Cursor, width: int, chunk: int = 20_000) -> tuple[list[str], Array]:
    """(first column of every row, the `width` others as a float array, NULL as NaN), a chunk at a time."""
    labels: list[str] = []
    parts = []
    while rows := cursor.fetchmany(chunk):
        labels += [r[0] for r in rows]
        parts.append(np.array([r[1:] for r in rows], dtype=np.float64).reshape(len(rows), width))
    return labels, np.concatenate(parts) if parts else np.zeros((0, width))


def load_history(db: sqlite_utils.Database, since_ms: int, until_ms: int, raw_retention_s: float = 24 * 3600.0,
                 now_ms: int | None = None) -> ReplayHistory:
    """Read the window [since_ms, until_ms] (see the module docstring); run it on the database's reader thread."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if until_ms <= since_ms:
        raise ValueError("the replay window must end after it starts")
    nodes: dict[str, tuple[str, str]] = {}
    refs: dict[int, str] = {}
    measured: dict[str, float] = {}   # rollups keep no power source: whether the node's power is measured
    for ref, node_id, name, tier, info in db.execute("SELECT ref, node_id, name, tier, info_json FROM nodes"
                                                     ).fetchall():
        refs[int(ref)] = node_id
        nodes[node_id] = (name or node_id[:12], tier or "")
        about = json.loads(info) if info else {}
        measured[node_id] = 1.0 if about.get("power_measured") else 0.0
    # A window that begins in a gap of the record (a young fleet; the console not running) begins at its first
    # recorded row, and which rows play (raw or rollups, by the window's length) is decided on what was recorded.
    # A gap: nothing before the window, or no telemetry for longer than STALE_MS across its start.
    asked_since = since_ms
    seen_before: dict[str, int] = {}
    for ref, node_id in refs.items():   # the last sign of life before the window (index lookups)
        raw = db.execute("SELECT max(ts_ms) FROM telemetry WHERE node = ? AND ts_ms < ?", [ref, since_ms]).fetchone()[0]
        rolled = db.execute("SELECT max(minute_ms) FROM telemetry_rollup_1m WHERE node = ? AND minute_ms < ?",
                            [ref, since_ms]).fetchone()[0]
        seen_before[node_id] = max(int(raw or 0), int(rolled or 0) + MINUTE_MS // 2 if rolled is not None else 0)
    start = _record_start(db, list(refs), since_ms, until_ms)
    last = max(seen_before.values(), default=0)
    gap = not last or (until_ms if start is None else start) - last > STALE_MS
    if gap and start is not None and start > since_ms:
        since_ms = start
    # Where the raw samples begin (index range scans per node), and how far the rollups reach.
    firsts = [first for ref in refs
              if (first := db.execute("SELECT min(ts_ms) FROM telemetry WHERE node = ?", [ref]).fetchone()[0])
              is not None]
    raw_first = min(firsts) if firsts else None
    row = db.execute("SELECT value FROM meta WHERE key = 'rollup_watermark'").fetchone() \
        if db.table("meta").exists() else None
    watermark = int(row[0]) if row else None
    # rollups stand in for deleted raw samples when the window reaches back past the raw retention
    raw_gone = (raw_first is None or raw_first > since_ms) and since_ms < now_ms - raw_retention_s * 1000
    if raw_first is None:
        split = until_ms + 1
    elif raw_first <= since_ms:
        split = since_ms
    else:
        # Raw samples begin inside the window. Rollups before their minute mean retention deleted the raw samples
        # there: play the rollups up to that minute (and that minute's own rollup, if rolled: part of its raw rows
        # is gone), the raw samples after. No rollups before it: the database simply begins there.
        first_minute = raw_first // MINUTE_MS * MINUTE_MS
        rolled = {int(m) for (m,) in db.execute(
            "SELECT DISTINCT minute_ms FROM telemetry_rollup_1m WHERE minute_ms >= ? AND minute_ms <= ? "
            "ORDER BY minute_ms DESC LIMIT 2", [since_ms // MINUTE_MS * MINUTE_MS, first_minute]).fetchall()}
        if not rolled - {first_minute}:
            split = since_ms
        else:
            split = first_minute + MINUTE_MS if first_minute in rolled else first_minute
    if raw_first is not None and (until_ms - since_ms) / 1000 > RAW_MAX_WINDOW_S and watermark is not None:
        split = max(split, watermark)
    split = min(max(split, since_ms), until_ms + 1)

    node_rows: dict[str, list[list[float]]] = {}
    stage_rows: dict[tuple[str, str], list[list[float]]] = {}
    node_t: dict[str, list[float]] = {}
    node_sources: dict[str, list[str]] = {}
    stage_t: dict[tuple[str, str], list[float]] = {}
    rollups = 0
    if split > since_ms:
        for ref, node_id in refs.items():
            for r in db.execute(
                    "SELECT minute_ms, stage, inferences, escalated, escalation_rate, latency_p95_ms_avg, "
                    "latency_p99_ms_max, queue_depth_max, cpu_percent_avg, power_watts_avg, backlog_max "
                    "FROM telemetry_rollup_1m WHERE node = ? AND minute_ms >= ? AND minute_ms + 60000 <= ? "
                    "ORDER BY minute_ms", [ref, since_ms // MINUTE_MS * MINUTE_MS, split]).fetchall():
                t = (r[0] + MINUTE_MS / 2) / 1000
                if not since_ms <= t * 1000 <= until_ms:
                    continue
                rollups += 1
                if r[1] == "":
                    node_t.setdefault(node_id, []).append(t)
                    node_sources.setdefault(node_id, []).append("1-min avg")
                    node_rows.setdefault(node_id, []).append(
                        [_num(r[8]), _num(r[9]), math.nan, math.nan, _num(r[10]), measured[node_id]])
                else:
                    inferences, escalated = _num(r[2]), _num(r[3])
                    key = (node_id, r[1])
                    stage_t.setdefault(key, []).append(t)
                    stage_rows.setdefault(key, []).append(
                        [inferences / 60, escalated / 60, _num(r[4]), math.nan, _num(r[5]), _num(r[6]),
                         _num(r[7]), math.nan, math.nan, math.nan, math.nan, math.nan, 0.0])
    # Raw rows straight into numpy, a chunk at a time (no Python float per value: a 1 h window of 50 nodes is
    # 360,000 rows).
    raw_nodes: dict[str, tuple[Array, list[str]]] = {}
    raw_stages: dict[tuple[str, str], Array] = {}
    if split <= until_ms:
        where = "WHERE node = ? AND ts_ms >= ? AND ts_ms <= ?"
        for ref, node_id in refs.items():
            sources, data = _fetch(db.execute(
                f"SELECT power_source, ts_ms, {', '.join(_RAW_NODE)} FROM telemetry {where} AND stage = '' "
                "ORDER BY ts_ms, seq", [ref, split, until_ms]), 1 + len(_RAW_NODE))
            if len(data):
                raw_nodes[node_id] = (data, [x or "" for x in sources])
            stages, data = _fetch(db.execute(
                f"SELECT stage, ts_ms, {_RAW_STAGE_SQL} FROM telemetry {where} AND stage != '' ORDER BY ts_ms, seq",
                [ref, split, until_ms]), 1 + len(STAGE_TRACK))
            if len(data):
                labels = np.asarray(stages)
                for stage_id in dict.fromkeys(stages):
                    raw_stages[(node_id, stage_id)] = data[labels == stage_id]

    def track(columns: tuple[str, ...], t: list[float], rows: list[list[float]], raw: Array | None,
              sources: list[str] | None = None) -> Track:
        old = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(columns))
        times = np.asarray(t, dtype=np.float64)
        if raw is not None:
            times = np.concatenate([times, raw[:, 0] / 1000])
            old = np.concatenate([old, raw[:, 1:]])
        return Track(columns, times, old, tuple(sources or ()))

    node_tracks = {n: track(NODE_TRACK, node_t.get(n, []), node_rows.get(n, []),
                            raw_nodes[n][0] if n in raw_nodes else None,
                            node_sources.get(n, []) + (raw_nodes[n][1] if n in raw_nodes else []))
                   for n in {*node_t, *raw_nodes}}
    stage_tracks = {k: track(STAGE_TRACK, stage_t.get(k, []), stage_rows.get(k, []), raw_stages.get(k))
                    for k in {*stage_t, *raw_stages}}
    # The events, the states and the last signs of life are those of the window asked for (the events before its
    # first sample were recorded in it: the node coming online, say).
    since_ms = asked_since
    events = []
    for r in db.execute("SELECT ts_ms, kind, severity, node_id, message, detail_json FROM events "
                        "WHERE ts_ms >= ? AND ts_ms <= ? ORDER BY ts_ms, id", [since_ms, until_ms]).fetchall():
        events.append(ConsoleEvent(r[1], r[4], Severity(r[2]) if r[2] in Severity._value2member_map_ else
                                   Severity.INFO, r[3] or "", json.loads(r[5]) if r[5] else {}, int(r[0])))
    states: dict[str, list[StateChange]] = {}
    # The state each node was in when the window starts: its last state change before it (SQLite takes the bare
    # columns from the row of max(ts_ms)).
    for node_id, ts, detail, message in db.execute(
            "SELECT node_id, max(ts_ms), detail_json, message FROM events WHERE kind = 'node_state' AND ts_ms < ? "
            "AND node_id IS NOT NULL GROUP BY node_id", [since_ms]).fetchall():
        states.setdefault(node_id, []).append(_state_change(int(ts), detail, message))
    for ev in events:
        if ev.kind == "node_state" and ev.node_id:
            states.setdefault(ev.node_id, []).append(_state_change(ev.ts_ms, json.dumps(ev.detail), ev.message))
    # In a gap, the window begins at its first played row exactly (the first frame shows it), or at its first event
    # when it holds events only.
    begin = since_ms
    if gap:
        firsts_t = [float(tr.t[0]) for tr in (*node_tracks.values(), *stage_tracks.values()) if len(tr)]
        begin = round(min(firsts_t) * 1000) if firsts_t else (events[0].ts_ms if events else since_ms)
        begin = min(max(begin, since_ms), until_ms)
    empty = not node_tracks and not stage_tracks and not events
    return ReplayHistory(
        begin, until_ms, nodes, node_tracks, stage_tracks,
        tuple(events), {n: tuple(c) for n, c in states.items()}, split if rollups else begin, raw_retention_s,
        raw_gone and rollups > 0, seen_before, np.asarray([e.ts_ms for e in events], dtype=np.int64),
        asked_since if begin > asked_since else 0, _record_span(db, list(refs)) if empty else None)


def _record_start(db: sqlite_utils.Database, refs: list[int], since_ms: int, until_ms: int) -> int | None:
    """About where the recorded telemetry in [since_ms, until_ms] begins: its first raw sample or its first one-minute
    rollup (at the minute's middle, where a rollup plays); None when there is none (index lookups)."""
    firsts = [int(first) for ref in refs if (first := db.execute(
        "SELECT min(ts_ms) FROM telemetry WHERE node = ? AND ts_ms >= ? AND ts_ms <= ?", [ref, since_ms, until_ms]
    ).fetchone()[0]) is not None]
    minute = db.execute("SELECT min(minute_ms) FROM telemetry_rollup_1m WHERE minute_ms >= ? AND minute_ms <= ?",
                        [since_ms - MINUTE_MS // 2, until_ms - MINUTE_MS // 2]).fetchone()[0]
    if minute is not None:
        firsts.append(int(minute) + MINUTE_MS // 2)
    return min(firsts) if firsts else None


def _record_span(db: sqlite_utils.Database, refs: list[int]) -> tuple[int, int] | None:
    """The first and last instant of anything recorded (raw samples, rollups, events); None: nothing (index
    lookups)."""
    times: list[int] = []
    for ref in refs:
        times += [int(t) for t in db.execute("SELECT min(ts_ms), max(ts_ms) FROM telemetry WHERE node = ?",
                                             [ref]).fetchone() if t is not None]
    for sql in ("SELECT min(minute_ms) + 30000, max(minute_ms) + 30000 FROM telemetry_rollup_1m",
                "SELECT min(ts_ms), max(ts_ms) FROM events"):
        times += [int(t) for t in db.execute(sql).fetchone() if t is not None]
    return (min(times), max(times)) if times else None


def _state_change(ts_ms: int, detail_json: str | None, message: str) -> StateChange:
    detail = json.loads(detail_json) if detail_json else {}
    state = str(detail.get("to", ""))
    _, _, reason = message.partition(": ")
    return StateChange(ts_ms, state, reason)


class ReplayTelemetry:
    """The history as seen from one replayed instant: the read side of the live telemetry model, and the fleet's.

    Rings hold every row of the window up to the instant; `latest` is each node's last sample then.
    """

    def __init__(self, history: ReplayHistory) -> None:
        self.history = history
        self.position_ms = history.since_ms
        self.rebuilds = 0
        self._nodes: dict[str, RingBuffer] = {}
        self._stages: dict[tuple[str, str], RingBuffer] = {}
        self._counts: dict[object, int] = {}
        self._stages_of: dict[str, list[str]] = {}
        for node_id, stage_id in history.stage_tracks:
            self._stages_of.setdefault(node_id, []).append(stage_id)
        self._snapshots: dict[str, NodeSnapshot] = {}   # at position_ms (the dashboard asks many times a frame)
        self._rebuild()

    # ----- moving ------------------------------------------------------------------------------------------------
    def seek(self, t_ms: int) -> tuple[list[str], bool]:
        """Move to `t_ms` (clamped to the window); returns (node ids whose rings gained rows, rebuilt)."""
        t_ms = min(max(int(t_ms), self.history.since_ms), self.history.until_ms)
        back = t_ms < self.position_ms
        if t_ms != self.position_ms:
            self._snapshots.clear()
        self.position_ms = t_ms
        if back:
            self._rebuild()
            return sorted(self.history.nodes), True
        changed: set[str] = set()
        for key, track, ring in self._pairs():
            n = track.count_until(t_ms / 1000)
            done = self._counts[key]
            if n > done:
                ring.extend(track.t[done:n], track.data[done:n, :len(ring.columns)])
                self._counts[key] = n
                changed.add(key if isinstance(key, str) else key[0])   # type: ignore[index]
        return sorted(changed), False

    def _pairs(self) -> list[tuple[object, Track, RingBuffer]]:
        h = self.history
        pairs: list[tuple[object, Track, RingBuffer]] = [(n, h.node_tracks[n], r) for n, r in self._nodes.items()]
        pairs += [(k, h.stage_tracks[k], r) for k, r in self._stages.items()]
        return pairs

    def _rebuild(self) -> None:
        h = self.history
        self.rebuilds += 1
        self._nodes = {n: RingBuffer(NODE_COLUMNS, max(1, len(tr))) for n, tr in h.node_tracks.items()}
        self._stages = {k: RingBuffer(STAGE_COLUMNS, max(1, len(tr))) for k, tr in h.stage_tracks.items()}
        self._counts = dict.fromkeys([*self._nodes, *self._stages], 0)
        position, self.position_ms = self.position_ms, h.since_ms - 1
        self.seek(position)

    # ----- the telemetry model's read side ------------------------------------------------------------------------
    @property
    def samples(self) -> int:
        """Node rows played so far."""
        return sum(len(r) for r in self._nodes.values())

    def node_series(self, node_id: str) -> RingBuffer | None:
        """Ring of a node's figures up to the instant (columns: NODE_COLUMNS); None when it has no rows yet."""
        ring = self._nodes.get(node_id)
        return ring if ring is not None and len(ring) else None

    def stage_series(self, node_id: str, stage_id: str) -> RingBuffer | None:
        """Ring of a stage's figures on a node up to the instant (columns: STAGE_COLUMNS)."""
        ring = self._stages.get((node_id, stage_id))
        return ring if ring is not None and len(ring) else None

    def stage_keys(self) -> list[tuple[str, str]]:
        """(node id, stage id) pairs with rows up to the instant."""
        return [k for k, r in self._stages.items() if len(r)]

    def score_histogram(self, node_id: str, stage_id: str, since: float | None = None) -> Array:
        """Score histograms are not recorded: zeros."""
        return np.zeros(20)

    def latest(self, node_id: str) -> NodeSample | None:
        """The node's last recorded sample at or before the instant (None: none yet in the window)."""
        n = self._counts.get(node_id, 0)
        if not n:
            return None
        h = self.history
        node = h.node_tracks[node_id]
        i = n - 1
        ts_ms = round(node.t[i] * 1000)
        stages = []
        for stage_id in self._stages_of.get(node_id, ()):
            k = self._counts.get((node_id, stage_id), 0)
            if k:
                stages.append(_stage_sample(stage_id, h.stage_tracks[(node_id, stage_id)], k - 1))
        source = node.sources[i] if node.sources else ""
        return NodeSample(node_id, "", 0, ts_ms, 0.0, node.value(i, "cpu_percent"), _int(node.value(i, "rss_bytes")),
                          node.value(i, "power_watts"), source, bool(node.value(i, "power_measured") == 1.0),
                          node.value(i, "energy_joules_total"), 0.0, _int(node.value(i, "backlog")), tuple(stages))

    def link_state(self, node_id: str, stage_id: str) -> str:
        """The stage's link state in its last row at or before the instant ("" when not recorded)."""
        k = self._counts.get((node_id, stage_id), 0)
        if not k:
            return ""
        return LINK_STATES[int(self.history.stage_tracks[(node_id, stage_id)].value(k - 1, "link"))]

    # ----- the fleet as it was -----------------------------------------------------------------------------------
    def node_at(self, node_id: str) -> NodeAt:
        """State, link states and sample time of one node at the instant."""
        name, tier = self.history.nodes.get(node_id, (node_id[:12], ""))
        change = self.history.state_at(node_id, self.position_ms)
        links = {sid: self.link_state(node_id, sid) for sid in self._stages_of.get(node_id, ())}
        n = self._counts.get(node_id, 0)
        sample_ms = round(self.history.node_tracks[node_id].t[n - 1] * 1000) if n else 0
        return NodeAt(node_id, name, tier, change.state if change else "", change.ts_ms if change else 0,
                      change.reason if change else "", links, sample_ms)

    def nodes(self) -> list[NodeSnapshot]:
        """Every recorded node as a snapshot with its state at the instant (key = node id)."""
        return [self._snapshot(n) for n in self.history.nodes]

    def node(self, key: str) -> NodeSnapshot | None:
        """One node's snapshot at the instant (key = node id), or None."""
        return self._snapshot(key) if key in self.history.nodes else None

    def by_tier(self, tier: str) -> list[NodeSnapshot]:
        """Snapshots of the nodes of one tier."""
        return [s for s in self.nodes() if s.tier == tier]

    def _snapshot(self, node_id: str) -> NodeSnapshot:
        cached = self._snapshots.get(node_id)
        if cached is not None:
            return cached
        at = self.node_at(node_id)
        state = NodeState(at.state) if at.state in NodeState._value2member_map_ else NodeState.DISCOVERED
        reasons = [at.reason] if at.reason else []
        if not at.state:
            reasons.append("no state recorded by then")
        elif state in (NodeState.ONLINE, NodeState.DEGRADED) and self.position_ms - max(
                seen := at.sample_ms or self.history.seen_before.get(node_id, 0), at.state_since_ms) > STALE_MS:
            # the audit log's last word is old and no telemetry backs it (the console was not running, say)
            when = datetime.fromtimestamp((seen or at.state_since_ms) / 1000).strftime("%d %b %H:%M:%S")
            reasons = [f"not known: no telemetry recorded since {when}" if seen else
                       f"not known: recorded {state} at {when}, no telemetry since"]
            state = NodeState.DISCOVERED
        down = sorted(sid for sid, link in at.links.items() if link == "down")
        if down:
            reasons.append(f"link down: {', '.join(down)}")
        since = at.state_since_ms if str(state) == at.state else 0   # "for 25 h" of a state not known: no
        snapshot = NodeSnapshot(node_id, node_id, at.name, at.tier, "", "history", state, since,
                                tuple(reasons), last_sample_ms=at.sample_ms)
        self._snapshots[node_id] = snapshot
        return snapshot


def _int(value: float) -> int:
    return int(value) if math.isfinite(value) else 0


def _stage_sample(stage_id: str, track: Track, i: int) -> StageSample:
    """A StageSample holding what a track row recorded (of the counters, inferences, errors and shadow ones)."""
    v = dict(zip(track.columns, (float(x) for x in track.data[i]), strict=True))
    counters = dict.fromkeys(STAGE_COUNTERS, 0)
    counters["inferences_total"] = _int(v["inferences_total"])
    counters["errors_total"] = _int(v["errors_total"])
    counters["shadow_answered_total"] = _int(v["shadow_answered_total"])
    counters["shadow_agreed_total"] = _int(v["shadow_agreed_total"])
    return StageSample._make([
        stage_id, *counters.values(), 0, 0, 0, 0, 0, 0,
        v["inferences_per_s"], v["escalated_per_s"], v["escalation_rate"], v["latency_p50_ms"], v["latency_p95_ms"],
        v["latency_p99_ms"], _int(v["queue_depth"]), LINK_STATES[int(v["link"])], 0.0, v["energy_per_inference_j"],
        "", (), 0, 0.0, None])
