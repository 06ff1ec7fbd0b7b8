"""The hard-example ledger: a bounded on-disk record of the rows a stage escalated and the shadow rows that disagreed.

Each entry holds what this node saw of one row: the input tensors (bytes, dtype, shape per input), this stage's
output row (the rule's scores) and its own answer, the answer that came back from the next hop (label, deciding
stage, confidence), the final answer given to the caller, the row id (the id the forwarder sent the row up under,
and the id it arrived under when it came from below, so the console can join one row across nodes), time, stage id
and version, and the kind (`escalated` or `shadow_disagreed`).

Recording never runs on the request path: `record_*` only appends the batch to a bounded in-memory hand-off (rows
and bytes: HANDOFF_ROWS, HANDOFF_BYTES; rows over the recording rate, `max_rows_per_s`, or that do not fit are dropped
and counted: at a full escalation rate of large inputs, writing every row would cost the node more than the rows are
worth) and one background writer thread turns what gathered in WRITE_EVERY_S into rows, writes them in one
transaction (SQLite, WAL), and keeps the bounds: rows older than the age limit and, past the size limit (on the pages
in use: the disk), the oldest rows are deleted (counted as `expired` and `evicted`). Counters live in the same
database, so they survive restarts; WAL keeps the ledger intact when the agent is killed (a kill -9 loses at most the
hand-off in memory).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runners._rules import Decisions, TokenBucket

log = logging.getLogger("tierdeck.ledger")

KINDS = ("escalated", "shadow_disagreed")
DEFAULT_MAX_MB = 256.0
DEFAULT_MAX_AGE_H = 168.0  # a week
HANDOFF_ROWS = 4096        # rows waiting for the writer; more are dropped (counted), never block a request
HANDOFF_BYTES = 32 << 20   # and at most this many bytes of their inputs (an operator's large images: fewer rows)
# Rows a second that reach the disk; the rest are dropped and counted. Field rates (tens of inputs a second) stay
# under it and every escalated row is kept. Under the cascade bench's thousands of inputs a second on a busy 2-core
# box, 200 rows/s per node cost a third more of the cascade's CPU than 50 (within the noise on a quiet box), and at
# 200 rows/s the default 256 MiB holds about a minute of demo-sized rows; at 50, four.
DEFAULT_MAX_ROWS_PER_S = 50.0
WRITE_EVERY_S = 0.25
CACHE_KIB = -512  # SQLite page cache per connection (negative: KiB), instead of its 2 MB default
PREVIEW_SIDE = 64          # thumbnails: images at most this many pixels a side, other tensors this many cells
_COUNTERS = ("recorded_total", "evicted_total", "expired_total", "dropped_total")


@dataclass(frozen=True)
class TensorInfo:
    """One input tensor of an entry: name, numpy dtype string and shape of the row (without the batch axis)."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class LedgerEntry:
    """One recorded row, as listed (inputs are only loaded by `Ledger.get`)."""

    seq: int
    created_ms: int
    kind: str
    stage_id: str
    stage_version: str
    row_id: str
    origin_row_id: str
    score_labels: tuple[str, ...]
    scores: tuple[float, ...]
    stage_label: str
    stage_confidence: float
    hop_label: str          # "" when the next hop has not answered (the row was queued)
    hop_stage: str
    hop_confidence: float
    final_label: str
    final_stage: str
    final_confidence: float
    final: bool             # False: the caller got a provisional answer
    inputs: tuple[TensorInfo, ...]
    input_bytes: int
    preview: bytes          # uint8 thumbnail of the first input (see make_preview)
    preview_shape: tuple[int, ...]
    tensors: dict[str, np.ndarray] = field(default_factory=dict, compare=False)  # filled by Ledger.get

    @property
    def disagreed(self) -> bool:
        """The next hop answered a different class than this stage."""
        return bool(self.hop_label) and self.hop_label != self.stage_label


@dataclass(frozen=True)
class LedgerStats:
    """Size, limits and what the bounds and the hand-off cost."""

    rows: int
    bytes: int
    max_bytes: int
    max_age_s: float
    recorded_total: int
    evicted_total: int      # oldest rows deleted to stay under the size limit
    expired_total: int      # rows deleted for being older than the age limit
    dropped_total: int      # rows never written: over the recording rate, or the hand-off was full


@dataclass
class _Late:
    stage_id: str
    row_ids: list[str]
    answers: list[tuple[str, float, str, bool]]

    @property
    def rows(self) -> int:
        return len(self.row_ids)


@dataclass
class _Batch:
    kind: str
    created_ms: int
    stage_id: str
    stage_version: str
    row_ids: list[str]
    origin_row_ids: list[str]
    inputs: dict[str, np.ndarray]
    scores: np.ndarray
    score_labels: list[str]
    stage_answer: Decisions
    hop_answer: Decisions | None
    final: Decisions

    @property
    def rows(self) -> int:
        return len(self.row_ids)


def make_preview(row: np.ndarray) -> tuple[bytes, tuple[int, ...]]:
    """A small uint8 rendering of one input row: [H, W] grey or [H, W, 3] colour for image-like tensors
    (CHW or HWC with 1 or 3 channels, or 2-D), else a 1-D strip of at most PREVIEW_SIDE cells for a heat strip."""
    cells = make_previews(np.asarray(row)[None])
    return (cells[0].tobytes(), tuple(int(s) for s in cells.shape[1:])) if cells.size else (b"", ())


def make_previews(rows: np.ndarray) -> np.ndarray:
    """make_preview for every row of a batch at once ([rows, ...] → uint8 [rows, *preview shape]; a tensor that
    is not numeric gives [rows, 0])."""
    values = np.asarray(rows)
    if values.dtype.kind not in "fiub":
        return np.zeros((len(values), 0), np.uint8)
    values = values.astype(np.float32)
    n, shape = len(values), values.shape[1:]
    image: np.ndarray | None = None
    if len(shape) == 3 and shape[0] in (1, 3) and min(shape[1:]) >= 4:
        image = values.transpose(0, 2, 3, 1)
    elif len(shape) == 3 and shape[2] in (1, 3) and min(shape[:2]) >= 4:
        image = values
    elif len(shape) == 2 and min(shape) >= 4:
        image = values[..., None]
    if image is not None:
        step = max(1, -(-max(image.shape[1:3]) // PREVIEW_SIDE))
        image = image[:, ::step, ::step]
        cells = image[..., 0] if image.shape[3] == 1 else image
    else:
        flat = values.reshape(n, -1)
        if flat.shape[1] > PREVIEW_SIDE:  # mean over equal chunks keeps a peak visible as a warm cell
            edges = np.linspace(0, flat.shape[1], PREVIEW_SIDE + 1).astype(int)
            flat = np.add.reduceat(flat, edges[:-1], axis=1) / np.diff(edges)
        cells = flat
    per_row = np.ascontiguousarray(cells.reshape(n, -1))
    with np.errstate(over="ignore", invalid="ignore"):
        all_finite = bool(np.isfinite(per_row.sum()))  # one pass; a huge but finite sum takes the exact path
    if all_finite:  # the usual case: no masks needed
        low, high, clean = per_row.min(axis=1), per_row.max(axis=1), per_row
    else:
        finite = np.isfinite(per_row)
        low = np.where(finite, per_row, np.inf).min(axis=1)
        high = np.where(finite, per_row, -np.inf).max(axis=1)
        none = ~finite.any(axis=1)
        low, high = np.where(none, 0.0, low), np.where(none, 1.0, high)
        clean = np.where(np.isnan(per_row), low[:, None], np.clip(per_row, low[:, None], high[:, None]))
    scale = (255.0 / np.where(high > low, high - low, 1.0)).astype(np.float32)
    out = (clean - low[:, None].astype(np.float32)) * scale[:, None]
    out += 0.5
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8).reshape(cells.shape)


class Ledger:
    """Bounded hard-example ledger in DATA/ledger.sqlite; `record_*` are cheap and thread-safe, reads block."""

    def __init__(self, path: Path, max_mb: float = DEFAULT_MAX_MB, max_age_h: float = DEFAULT_MAX_AGE_H,
                 handoff_rows: int = HANDOFF_ROWS, clock: Callable[[], float] = time.time,
                 max_rows_per_s: float = DEFAULT_MAX_ROWS_PER_S, handoff_bytes: int = HANDOFF_BYTES) -> None:
        self.path = path
        self._clock = clock  # seconds since the epoch (tests age rows without waiting)
        self.max_bytes = int(max_mb * 2**20)
        self.max_age_s = max_age_h * 3600.0
        self.handoff_rows = handoff_rows
        self.handoff_bytes = handoff_bytes
        self._pending: deque[_Batch | _Late] = deque()
        self._pending_rows = 0
        self._pending_bytes = 0
        self._cond = threading.Condition()
        self._closed = False
        self._dropped = 0   # since the last write (persisted by the writer)
        self._submitted = 0  # record calls so far, and how many of them the writer has dealt with (flush)
        self._written = 0
        self._urgent = False  # flush(): write now, do not gather
        # The writer sleeps until the first rows come, then gathers for WRITE_EVERY_S on its own: a record call
        # wakes it only from that first sleep (a wake-up per request made the writer thread fight the event loop
        # for the GIL: under the cascade bench the ledger cost more in wake-ups than in writing).
        self._writer_idle = False
        self._budget = TokenBucket(max_rows_per_s) if max_rows_per_s > 0 else None
        if self._budget is not None:
            self._budget.stamp = clock()  # the bucket runs on the ledger's clock (tests move it)
        self._db_lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA journal_size_limit=8388608")  # the WAL shrinks back after checkpoints
        self._db.execute(f"PRAGMA cache_size={CACHE_KIB}")  # appends and deletes: a page cache buys little here
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS entries (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, created_ms INTEGER NOT NULL, kind TEXT NOT NULL,
                stage_id TEXT NOT NULL, stage_version TEXT NOT NULL, row_id TEXT NOT NULL,
                origin_row_id TEXT NOT NULL, score_labels TEXT NOT NULL, scores BLOB NOT NULL,
                stage_label TEXT NOT NULL, stage_confidence REAL NOT NULL,
                hop_label TEXT NOT NULL, hop_stage TEXT NOT NULL, hop_confidence REAL NOT NULL,
                final_label TEXT NOT NULL, final_stage TEXT NOT NULL, final_confidence REAL NOT NULL,
                final INTEGER NOT NULL, inputs_meta TEXT NOT NULL, inputs BLOB NOT NULL,
                preview BLOB NOT NULL, preview_shape TEXT NOT NULL, size INTEGER NOT NULL);
            CREATE INDEX IF NOT EXISTS entries_created ON entries(created_ms);
            CREATE INDEX IF NOT EXISTS entries_row ON entries(row_id);
            CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
            """
        )
        self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        self._size = self._used_bytes()
        self._rows = int(self._db.execute("SELECT count(*) FROM entries").fetchone()[0])
        self._counters = {name: 0 for name in _COUNTERS}
        self._counters.update(self._db.execute("SELECT name, value FROM counters").fetchall())
        # Reads have their own connection: with WAL they never wait for the writer, nor it for them.
        self._read_lock = threading.Lock()
        self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._reader.execute(f"PRAGMA cache_size={CACHE_KIB}")
        self._thread = threading.Thread(target=self._writer, name="ledger-writer", daemon=True)
        self._thread.start()

    # -- recording (any thread, never blocks on the disk) -----------------------------------------
    def record_escalated(self, stage_id: str, stage_version: str, row_ids: Sequence[str],
                         inputs: Mapping[str, np.ndarray], scores: np.ndarray, score_labels: Sequence[str],
                         stage_answer: Decisions, hop_answer: Decisions | None, final: Decisions | None = None,
                         origin_row_ids: Sequence[str] | None = None) -> int:
        """Hand rows this stage escalated to the writer; returns how many were accepted (the rest are counted as
        dropped). Arrays are [rows, ...] and aligned with `row_ids`; `hop_answer` None means not answered (queued);
        `final` defaults to the hop's answer, else this stage's (provisional)."""
        return self._record("escalated", stage_id, stage_version, row_ids, inputs, scores, score_labels,
                            stage_answer, hop_answer, final if final is not None else hop_answer or stage_answer,
                            origin_row_ids)

    def record_shadow_disagreed(self, stage_id: str, stage_version: str, row_ids: Sequence[str],
                                inputs: Mapping[str, np.ndarray], scores: np.ndarray, score_labels: Sequence[str],
                                stage_answer: Decisions, hop_answer: Decisions, final: Decisions | None = None,
                                origin_row_ids: Sequence[str] | None = None) -> int:
        """Hand shadow rows whose next-hop answer disagreed with this stage's settled one to the writer (as
        record_escalated); the final answer defaults to this stage's, which the caller kept."""
        return self._record("shadow_disagreed", stage_id, stage_version, row_ids, inputs, scores, score_labels,
                            stage_answer, hop_answer, final if final is not None else stage_answer, origin_row_ids)

    def _record(self, kind: str, stage_id: str, stage_version: str, row_ids: Sequence[str],
                inputs: Mapping[str, np.ndarray], scores: np.ndarray, score_labels: Sequence[str],
                stage_answer: Decisions, hop_answer: Decisions | None, final: Decisions,
                origin_row_ids: Sequence[str] | None) -> int:
        rows = len(row_ids)
        if not rows or not self.max_bytes:  # --ledger-max-mb 0: the node keeps no ledger
            return 0
        row_bytes = sum(a.nbytes for a in inputs.values()) // rows
        with self._cond:
            # The first rows of the batch that fit the hand-off's bytes (one row at least when nothing waits) and
            # the recording rate are kept; the rest are counted as dropped.
            fit = (self.handoff_bytes - self._pending_bytes) // row_bytes if row_bytes else rows
            wanted = min(rows, max(fit, 0 if self._pending_bytes else 1))
            granted = self._budget.take(wanted, self._clock()) if self._budget is not None else wanted
            if granted < rows:
                self._dropped += rows - granted
        if not granted:
            return 0
        if granted < rows:
            row_ids, rows = row_ids[:granted], granted
            inputs = {n: np.array(a[:granted]) for n, a in inputs.items()}  # a copy: not the whole request kept
            scores = np.asarray(scores)[:granted]
            cut = slice(0, granted)
            stage_answer, final = stage_answer.take(cut), final.take(cut)
            hop_answer = hop_answer.take(cut) if hop_answer is not None else None
            origin_row_ids = origin_row_ids[:granted] if origin_row_ids is not None else None
        # Answers are copied (a Decisions is assigned into in place later on the request path); tensors are not:
        # callers hand over arrays they no longer change.
        batch = _Batch(kind, int(self._clock() * 1000), stage_id, stage_version, list(row_ids),
                       list(origin_row_ids) if origin_row_ids is not None else [""] * rows, dict(inputs),
                       np.asarray(scores), list(score_labels), _copy(stage_answer),
                       _copy(hop_answer) if hop_answer is not None else None, _copy(final))
        with self._cond:
            room = 0 if self._closed else self.handoff_rows - self._pending_rows
            self._submitted += 1
            self._wake_idle_writer()
            if room < rows or (self._pending_bytes and self._pending_bytes + rows * row_bytes > self.handoff_bytes):
                self._dropped += rows
                return 0
            self._pending.append(batch)
            self._pending_rows += rows
            self._pending_bytes += rows * row_bytes
        return rows

    def record_late_answers(self, stage_id: str, row_ids: Sequence[str], answers: Decisions) -> None:
        """Queued rows were delivered: fill in the next hop's answer of their entries (the caller's answer stays
        the provisional one it got). Never blocks; dropped and counted like rows when the hand-off is full."""
        if not row_ids or not self.max_bytes:
            return
        update = _Late(stage_id, list(row_ids), _answers(answers))
        with self._cond:
            self._submitted += 1
            self._wake_idle_writer()
            if self._closed or self._pending_rows + len(update.row_ids) > self.handoff_rows:
                self._dropped += len(update.row_ids)
                return
            self._pending.append(update)
            self._pending_rows += len(update.row_ids)

    def _wake_idle_writer(self) -> None:
        """With self._cond held: wake the writer if it sleeps for want of rows (else it writes on its own soon)."""
        if self._writer_idle:
            self._cond.notify_all()

    # -- the writer thread ------------------------------------------------------------------------
    def _writer(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._closed and self._written == self._submitted:
                    self._writer_idle = True
                    self._cond.wait(timeout=60.0)  # an idle minute still expires old rows
                    self._writer_idle = False
                # Gather for a moment: under traffic one transaction per WRITE_EVERY_S, not one per request.
                self._cond.wait_for(lambda: self._closed or self._urgent, timeout=WRITE_EVERY_S)
                self._urgent = False
                batches = list(self._pending)
                self._pending.clear()
                self._pending_rows = 0
                self._pending_bytes = 0
                dropped, self._dropped = self._dropped, 0
                target, closed = self._submitted, self._closed
            try:
                self._write(batches, dropped)
            except Exception:  # the writer must outlive a bad row or a full disk
                log.exception("hard-example ledger: write failed, %d rows lost", sum(b.rows for b in batches))
                with self._db_lock:  # the transaction rolled back: take size and rows from the disk again
                    size, count = self._used_bytes(), self._db.execute("SELECT count(*) FROM entries").fetchone()[0]
                with self._cond:
                    self._dropped += sum(b.rows for b in batches)
                    self._size, self._rows = size, int(count)
            with self._cond:
                self._written = target
                self._cond.notify_all()
                if closed:
                    return

    def _used_bytes(self) -> int:
        """Bytes of the database's pages in use (its file less the free pages SQLite will reuse): the size limit
        is on this, so --ledger-max-mb bounds the disk, page overhead and indexes included."""
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self._page_size

    def _write(self, items: list[_Batch | _Late], dropped: int) -> None:
        rows = [row for batch in items if isinstance(batch, _Batch) for row in _rows(batch)]
        late = [(label, stage, confidence, rid, item.stage_id) for item in items if isinstance(item, _Late)
                for rid, (label, confidence, stage, _) in zip(item.row_ids, item.answers, strict=True)]
        now = int(self._clock() * 1000)
        with self._db_lock, self._db:
            expired = len(self._db.execute("DELETE FROM entries WHERE created_ms < ? RETURNING seq",
                                           (now - int(self.max_age_s * 1000),)).fetchall())
            count = self._rows - expired
            # Room first (so the file does not grow past the limit by a batch), then measure and trim.
            incoming = int(sum(r[-1] for r in rows) * 1.25)  # pages hold a little less than the payload
            evicted, count, used = self._evict(self.max_bytes - incoming, count)
            if rows:
                self._db.executemany(
                    "INSERT INTO entries(created_ms, kind, stage_id, stage_version, row_id, origin_row_id, "
                    "score_labels, scores, stage_label, stage_confidence, hop_label, hop_stage, hop_confidence, "
                    "final_label, final_stage, final_confidence, final, inputs_meta, inputs, preview, preview_shape, "
                    "size) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
                more, count, used = self._evict(self.max_bytes, count + len(rows))
                evicted += more
            if late:
                self._db.executemany("UPDATE entries SET hop_label=?, hop_stage=?, hop_confidence=? "
                                     "WHERE row_id=? AND stage_id=? AND hop_label=''", late)
            deltas = {"recorded_total": len(rows), "evicted_total": evicted, "expired_total": expired,
                      "dropped_total": dropped}
            self._bump(deltas)
        with self._cond:
            self._rows = count
            self._size = used
            for name, value in deltas.items():
                self._counters[name] += value

    def _evict(self, target: int, count: int) -> tuple[int, int, int]:
        """Delete the oldest rows until the pages in use fit `target`; (evicted, rows left, bytes in use)."""
        used = self._used_bytes()
        evicted = 0
        while used > target and count > 0:
            excess = math.ceil((used - target) / max(1.0, used / count))  # about as many rows as the excess holds
            gone = len(self._db.execute(
                "DELETE FROM entries WHERE seq IN (SELECT seq FROM entries ORDER BY seq LIMIT ?) RETURNING seq",
                (max(1, excess),)).fetchall())
            if not gone:
                break
            evicted += gone
            count -= gone
            used = self._used_bytes()
        return evicted, count, used

    def _bump(self, deltas: dict[str, int]) -> None:
        self._db.executemany(
            "INSERT INTO counters(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
            [(name, value, value) for name, value in deltas.items() if value])

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything handed over so far is written, drops counted (tests, shutdown); False on timeout."""
        with self._cond:
            target = self._submitted
            self._urgent = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._written >= target or self._closed, timeout)

    def close(self) -> None:
        """Write what is waiting, stop the writer, close the database."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30.0)
        with self._db_lock:
            self._db.close()
        with self._read_lock:
            self._reader.close()

    # -- reading (blocking: call from an executor) -----------------------------------------------
    def stats(self) -> LedgerStats:
        """Rows, bytes, limits and counters, the hand-off's drops not yet written included (cheap: from memory)."""
        with self._cond:
            return LedgerStats(rows=self._rows, bytes=self._size, max_bytes=self.max_bytes, max_age_s=self.max_age_s,
                               recorded_total=self._counters["recorded_total"],
                               evicted_total=self._counters["evicted_total"],
                               expired_total=self._counters["expired_total"],
                               dropped_total=self._counters["dropped_total"] + self._dropped)

    def list(self, *, stage_id: str = "", kind: str = "", label: str = "", disagreed_only: bool = False,
             since_ms: int = 0, until_ms: int = 0, after_seq: int = 0, before_seq: int = 0,
             limit: int = 100) -> tuple[list[LedgerEntry], int]:
        """A page of entries, newest first (`before_seq` continues a page), without tensors; and how many match."""
        where, args = _filters(stage_id, kind, label, disagreed_only, since_ms, until_ms)
        page_where = list(where)
        page_args = list(args)
        if after_seq:
            page_where.append("seq > ?")
            page_args.append(after_seq)
        if before_seq:
            page_where.append("seq < ?")
            page_args.append(before_seq)
        clause = f"WHERE {' AND '.join(page_where)}" if page_where else ""
        with self._read_lock:
            found = self._reader.execute(f"SELECT {_LIST_COLUMNS} FROM entries {clause} ORDER BY seq DESC LIMIT ?",
                                     [*page_args, max(1, limit)]).fetchall()
            matching = f"WHERE {' AND '.join(where)}" if where else ""
            total = self._reader.execute(f"SELECT count(*) FROM entries {matching}", args).fetchone()[0]
        return [_entry(row) for row in found], int(total)

    def get(self, seq: int) -> LedgerEntry | None:
        """One entry with its input tensors, or None when it is gone (evicted, expired)."""
        with self._read_lock:
            row = self._reader.execute(f"SELECT {_LIST_COLUMNS}, inputs FROM entries WHERE seq=?", (seq,)).fetchone()
        if row is None:
            return None
        entry = _entry(row[:-1])
        return _with_tensors(entry, bytes(row[-1]))


_LIST_COLUMNS = ("seq, created_ms, kind, stage_id, stage_version, row_id, origin_row_id, score_labels, scores, "
                 "stage_label, stage_confidence, hop_label, hop_stage, hop_confidence, final_label, final_stage, "
                 "final_confidence, final, inputs_meta, length(inputs), preview, preview_shape")


def _filters(stage_id: str, kind: str, label: str, disagreed_only: bool, since_ms: int,
             until_ms: int) -> tuple[list[str], list[object]]:
    where: list[str] = []
    args: list[object] = []
    for column, value in (("stage_id", stage_id), ("kind", kind)):
        if value:
            where.append(f"{column} = ?")
            args.append(value)
    if label:  # a class seen anywhere on the row: this stage's, the hop's or the final answer
        where.append("(stage_label = ? OR hop_label = ? OR final_label = ?)")
        args += [label, label, label]
    if disagreed_only:
        where.append("hop_label != '' AND hop_label != stage_label")
    if since_ms:
        where.append("created_ms >= ?")
        args.append(since_ms)
    if until_ms:
        where.append("created_ms <= ?")
        args.append(until_ms)
    return where, args


def _copy(decisions: Decisions) -> Decisions:
    return Decisions(list(decisions.labels), decisions.label.copy(), decisions.confidence.copy(),
                     list(decisions.stages), decisions.stage.copy(), decisions.final.copy())


def _rows(batch: _Batch) -> list[tuple[Any, ...]]:
    """Database rows of one batch (runs on the writer thread; per-row work kept to slicing bytes)."""
    names = list(batch.inputs)
    # BYTES tensors arrive as object arrays: keep them as fixed-width bytes, which have a dtype and a buffer.
    arrays = [a.astype(bytes) if a.dtype == object else a for a in (np.asarray(batch.inputs[n]) for n in names)]
    scores = np.ascontiguousarray(np.asarray(batch.scores, dtype=np.float32).reshape(batch.rows, -1))
    labels_json = json.dumps(batch.score_labels)
    meta = json.dumps([{"name": n, "dtype": a.dtype.str, "shape": list(a.shape[1:])} for n, a in zip(names, arrays,
                                                                                                       strict=True)])
    # One contiguous buffer per batch: each row's inputs, one after the other, bound per row as a view of it
    # (SQLite copies a row into its pages): no second copy of the batch's tensors while they are written.
    parts = [np.ascontiguousarray(a).reshape(batch.rows, -1).view(np.uint8) for a in arrays]
    joined = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1) if parts else np.zeros((batch.rows, 0),
                                                                                                  np.uint8)
    previews = make_previews(arrays[0]) if arrays else np.zeros((batch.rows, 0), np.uint8)
    preview_shape = json.dumps(list(previews.shape[1:]) if previews.size else [])
    previews = previews.reshape(batch.rows, -1)
    stage_answers, finals = _answers(batch.stage_answer), _answers(batch.final)
    hops = _answers(batch.hop_answer) if batch.hop_answer is not None else None
    size = joined.shape[1] + previews.shape[1] + scores.shape[1] * 4 + 256  # + the row's text, roughly
    out: list[tuple[Any, ...]] = []
    for i in range(batch.rows):
        s_label, s_conf, _, _ = stage_answers[i]
        f_label, f_conf, f_stage, f_final = finals[i]
        h_label, h_conf, h_stage, _ = hops[i] if hops is not None else ("", 0.0, "", False)
        out.append((batch.created_ms, batch.kind, batch.stage_id, batch.stage_version, batch.row_ids[i],
                    batch.origin_row_ids[i], labels_json, scores[i].tobytes(), s_label, s_conf, h_label, h_stage,
                    h_conf, f_label, f_stage, f_conf, int(f_final), meta, memoryview(joined[i]),
                    previews[i].tobytes(), preview_shape, size))
    return out


def _answers(decisions: Decisions) -> list[tuple[str, float, str, bool]]:
    """(label, confidence, deciding stage, final) per row, without building an object per row."""
    labels = [decisions.labels[k] for k in decisions.label.tolist()]
    stages = [decisions.stages[k] for k in decisions.stage.tolist()]
    return list(zip(labels, decisions.confidence.tolist(), stages, decisions.final.tolist(), strict=True))


def _entry(row: Sequence[Any]) -> LedgerEntry:
    (seq, created_ms, kind, stage_id, stage_version, row_id, origin_row_id, score_labels, scores, stage_label,
     stage_confidence, hop_label, hop_stage, hop_confidence, final_label, final_stage, final_confidence, final,
     inputs_meta, input_bytes, preview, preview_shape) = row
    meta = json.loads(str(inputs_meta))
    return LedgerEntry(
        seq=int(seq), created_ms=int(created_ms), kind=str(kind), stage_id=str(stage_id),
        stage_version=str(stage_version), row_id=str(row_id), origin_row_id=str(origin_row_id),
        score_labels=tuple(json.loads(str(score_labels))),
        scores=tuple(float(x) for x in np.frombuffer(bytes(scores), dtype=np.float32)),
        stage_label=str(stage_label), stage_confidence=float(stage_confidence),
        hop_label=str(hop_label), hop_stage=str(hop_stage), hop_confidence=float(hop_confidence),
        final_label=str(final_label), final_stage=str(final_stage),
        final_confidence=float(final_confidence), final=bool(final),
        inputs=tuple(TensorInfo(m["name"], m["dtype"], tuple(m["shape"])) for m in meta),
        input_bytes=int(input_bytes), preview=bytes(preview),
        preview_shape=tuple(json.loads(str(preview_shape))))


def _with_tensors(entry: LedgerEntry, blob: bytes) -> LedgerEntry:
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for info in entry.inputs:
        dtype = np.dtype(info.dtype)
        count = int(np.prod(info.shape)) if info.shape else 1
        size = count * dtype.itemsize
        tensors[info.name] = np.frombuffer(blob, dtype=dtype, count=count, offset=offset).reshape(info.shape).copy()
        offset += size
    entry.tensors.update(tensors)
    return entry
