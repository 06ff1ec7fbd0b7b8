"""The console database (SQLite through sqlite-utils): one writer thread, batched WAL commits, retention.

One thread owns the writing connection (Home Assistant's recorder pattern). Producers on any thread
enqueue records and never wait: telemetry is committed in batches (every `batch_seconds`, default
0.25 s, or every `batch_rows`, default 1,000 rows), with WAL and synchronous=NORMAL (never corrupt
after an application crash; FIELD_NOTES). A batch that carries ledger records (deployments, their
steps, deployed stages) is committed with synchronous=FULL so the ledger survives a power cut too.

A locked or full database (or a failing disk) is reported through `on_error` as a sentence and the
batch is kept and retried with backoff; nothing blocks the callers. If the backlog grows past
`max_pending_rows`, the oldest telemetry rows are dropped and counted (`stats()["dropped_rows"]`),
ledger records and events never are.

Tables: nodes, boots, stages (what runs where, as the console last saw it), deployments and
deployment_steps (the ledger), telemetry (raw samples: one row per node per sample with
stage = '', plus one row per stage), telemetry_rollup_1m, events (the audit log), meta.
Retention (configurable): raw telemetry 24 h, one-minute rollups 30 days, events 30 days; raw rows
are rolled up before they are deleted.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from app._records import ConsoleEvent, NodeSample, NodeSnapshot, StageSnapshot, now_ms
from app._telemetry import Position
from runners.protocol import STAGE_COUNTERS

log = logging.getLogger(f"tierdeck.{__name__}")
T = TypeVar("T")

SCHEMA_VERSION = 4  # 2: telemetry.duplicates_total; 3: the hop counters and rollup_dirty; 4: shadow counters
# (every counter of the descriptor is a column)
MINUTE_MS = 60_000

_NODE_ROW = ("node", "boot", "seq", "ts_ms", "stage", "cpu_percent", "rss_bytes", "power_watts", "power_source",
             "power_measured", "energy_joules_total", "energy_joules", "backlog")
_DELTAS = ("inferences", "escalated", "dropped", "errors", "shed", "overflow")
_STAGE_ROW = ("node", "boot", "seq", "ts_ms", "stage", *STAGE_COUNTERS, *_DELTAS,
              "inferences_per_s", "escalation_rate", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
              "queue_depth", "link_state", "stage_energy_joules_total", "energy_per_inference_j")
_TELEMETRY_TYPES: dict[str, type] = {
    "node": int, "boot": int, "seq": int, "ts_ms": int, "stage": str,
    "cpu_percent": float, "rss_bytes": int, "power_watts": float, "power_source": str, "power_measured": int,
    "energy_joules_total": float, "energy_joules": float, "backlog": int,
    **dict.fromkeys(STAGE_COUNTERS, int), **dict.fromkeys(_DELTAS, int),
    "inferences_per_s": float, "escalation_rate": float, "latency_p50_ms": float, "latency_p95_ms": float,
    "latency_p99_ms": float, "queue_depth": int, "link_state": str, "stage_energy_joules_total": float,
    "energy_per_inference_j": float,
}

# sqlite-utils cannot create WITHOUT ROWID tables (two small, keyed tables that gain from it): plain SQL.
_WITHOUT_ROWID = """
-- Minutes below the rollup watermark that received late samples: committed with those samples and cleared
-- by the rollup pass that re-rolls them, in one transaction each, so a crash in between loses no window.
CREATE TABLE IF NOT EXISTS rollup_dirty (minute_ms INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS stages (
    node_id TEXT NOT NULL, stage_id TEXT NOT NULL,
    version TEXT, sha256 TEXT, state TEXT, previous_version TEXT, next_hop TEXT,
    pipeline TEXT, deployment_id TEXT, updated_ms INTEGER,
    PRIMARY KEY (node_id, stage_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS telemetry_rollup_1m (
    node INTEGER NOT NULL, stage TEXT NOT NULL, minute_ms INTEGER NOT NULL,
    samples INTEGER,
    inferences INTEGER, escalated INTEGER, dropped INTEGER, errors INTEGER, shed INTEGER, overflow INTEGER,
    escalation_rate REAL,
    latency_p95_ms_avg REAL, latency_p95_ms_max REAL, latency_p99_ms_max REAL, queue_depth_max INTEGER,
    cpu_percent_avg REAL, cpu_percent_max REAL, power_watts_avg REAL, power_watts_max REAL,
    energy_joules REAL, backlog_max INTEGER,
    PRIMARY KEY (node, stage, minute_ms)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS telemetry_rollup_minute ON telemetry_rollup_1m (minute_ms);
"""


class SchemaError(RuntimeError):
    """The database was written by a newer tierdeck (its schema version is above this one's)."""


def create_schema(db: sqlite_utils.Database) -> None:
    """Create every table and index that is missing (schema version SCHEMA_VERSION)."""
    db.table("meta").create({"key": str, "value": str}, pk="key", if_not_exists=True)
    db.table("nodes").create(
        {"ref": int, "node_id": str, "name": str, "tier": str, "address": str, "source": str, "state": str,
         "state_reason": str, "state_since_ms": int, "info_json": str, "first_seen_ms": int, "last_seen_ms": int,
         "forgotten": int},
        pk="ref", not_null={"node_id", "forgotten"}, defaults={"forgotten": 0}, if_not_exists=True)
    db.table("nodes").create_index(["node_id"], unique=True, if_not_exists=True)
    db.table("boots").create({"ref": int, "node": int, "boot_id": str, "first_seen_ms": int}, pk="ref",
                       not_null={"node", "boot_id"}, foreign_keys=[("node", "nodes", "ref")], if_not_exists=True)
    db.table("boots").create_index(["node", "boot_id"], unique=True, if_not_exists=True)
    db.table("deployments").create(
        {"id": str, "pipeline": str, "pipeline_path": str, "operator": str, "host": str, "started_ms": int,
         "finished_ms": int, "status": str, "reason": str, "plan_json": str}, pk="id", if_not_exists=True)
    db.table("deployment_steps").create(
        {"id": int, "deployment_id": str, "ts_ms": int, "node_id": str, "stage_id": str, "step": str, "status": str,
         "message": str},
        pk="id", not_null={"deployment_id"}, foreign_keys=[("deployment_id", "deployments", "id")],
        if_not_exists=True)
    db.table("deployment_steps").create_index(["deployment_id"], index_name="deployment_steps_deployment",
                                        if_not_exists=True)
    db.table("telemetry").create(_TELEMETRY_TYPES, not_null={"node", "boot", "seq", "ts_ms", "stage"},
                                 if_not_exists=True)
    # One index only (it costs ~15 % of the table): time-range queries go through it with
    # "node IN (SELECT ref FROM nodes)", a short list of index ranges.
    db.table("telemetry").create_index(["node", "ts_ms"], index_name="telemetry_node_ts", if_not_exists=True)
    db.table("events").create(
        {"id": int, "ts_ms": int, "kind": str, "severity": str, "node_id": str, "message": str, "detail_json": str},
        pk="id", not_null={"ts_ms", "kind", "severity", "message"}, if_not_exists=True)
    db.table("events").create_index(["ts_ms"], index_name="events_ts", if_not_exists=True)
    db.executescript(_WITHOUT_ROWID)


def _add_missing_counters(db: sqlite_utils.Database) -> None:
    """1 -> 2: a column for every stage counter the agent sends that the table lacks (duplicates_total)."""
    have = set(db.table("telemetry").columns_dict)
    for name in STAGE_COUNTERS:
        if name not in have:
            db.table("telemetry").add_column(name, int)


# version -> the step that brings a database of the version before it up to it.
def _schema_3(db: sqlite_utils.Database) -> None:
    """3: the new hop counters, and rollup_dirty (late-sample minutes that survive a crash)."""
    _add_missing_counters(db)
    db.execute("CREATE TABLE IF NOT EXISTS rollup_dirty (minute_ms INTEGER PRIMARY KEY)")


def _schema_4(db: sqlite_utils.Database) -> None:
    """4: the shadow sampling counters (shadow_sent/answered/agreed/shed_total)."""
    _add_missing_counters(db)


MIGRATIONS: dict[int, Callable[[sqlite_utils.Database], None]] = {2: _add_missing_counters, 3: _schema_3,
                                                                  4: _schema_4}


def schema_version(db: sqlite_utils.Database) -> int:
    """The schema version recorded in the database; 0 for a new (empty) one."""
    if not db.table("meta").exists():
        return 0
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def migrate(db: sqlite_utils.Database) -> int:
    """Bring the database to SCHEMA_VERSION (create, or migrate step by step, each in one transaction)."""
    version = schema_version(db)
    if version > SCHEMA_VERSION:
        raise SchemaError(f"the console database has schema version {version}, newer than this tierdeck's "
                          f"({SCHEMA_VERSION}): upgrade tierdeck or give another --db")
    if version == 0:
        create_schema(db)
        db.table("meta").upsert({"key": "schema_version", "value": str(SCHEMA_VERSION)}, pk="key")
        return SCHEMA_VERSION
    for target in range(version + 1, SCHEMA_VERSION + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[target](db)
            # Plain SQL: sqlite-utils' writes commit on their own, which would end this transaction early.
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", [str(target)])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        log.info("console database migrated to schema version %d", target)
    create_schema(db)  # anything a migration left to the current definition (e.g. a new index)
    return SCHEMA_VERSION


_COUNTERS_END = 1 + len(STAGE_COUNTERS)  # StageSample: stage_id, then the counters in descriptor order
_INSERT_NODE = f"INSERT INTO telemetry ({', '.join(_NODE_ROW)}) VALUES ({', '.join('?' * len(_NODE_ROW))})"
_INSERT_STAGE = f"INSERT INTO telemetry ({', '.join(_STAGE_ROW)}) VALUES ({', '.join('?' * len(_STAGE_ROW))})"

_ROLLUP = """
INSERT OR REPLACE INTO telemetry_rollup_1m
SELECT node, stage, (ts_ms / 60000) * 60000 AS minute_ms, count(*),
       sum(inferences), sum(escalated), sum(dropped), sum(errors), sum(shed), sum(overflow),
       CASE WHEN sum(inferences) > 0 THEN CAST(sum(escalated) AS REAL) / sum(inferences) END,
       avg(latency_p95_ms), max(latency_p95_ms), max(latency_p99_ms), max(queue_depth),
       avg(cpu_percent), max(cpu_percent), avg(power_watts), max(power_watts),
       sum(energy_joules), max(backlog)
FROM telemetry WHERE node IN (SELECT ref FROM nodes) AND ts_ms >= ? AND ts_ms < ?
GROUP BY node, stage, minute_ms
"""


@dataclass(frozen=True)
class Retention:
    """How long each kind of record is kept, in seconds."""

    raw_s: float = 24 * 3600.0
    rollup_s: float = 30 * 86400.0
    events_s: float = 30 * 86400.0


def default_db_path() -> Path:
    """The console database in the platform's user data directory."""
    import platformdirs

    return Path(platformdirs.user_data_dir("tierdeck", appauthor=False)) / "console.sqlite"


def connect(path: Path | str, *, readonly: bool = False, busy_timeout_ms: int = 1000) -> sqlite3.Connection:
    """A connection with the console's pragmas (WAL); `readonly` opens it for queries only."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    return conn


def open_database(path: Path | str) -> sqlite_utils.Database:
    """Create or migrate the schema and return a sqlite-utils handle (one thread only); SchemaError if too new."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=OFF")
    db = sqlite_utils.Database(conn)
    migrate(db)
    return db


class _Flush:
    def __init__(self) -> None:
        self.future: concurrent.futures.Future[int] = concurrent.futures.Future()


class _Call:
    def __init__(self, fn: Callable[[sqlite_utils.Database], Any]) -> None:
        self.fn = fn
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()


# Queue items: ("sample", NodeSample) | ("ledger", sql, params) | ("event", ConsoleEvent) | ("node", dict)
# | _Flush | _Call | None (stop).
_Item = Any


class Database:
    """The console database: a writer thread fed by a queue, and a reader thread for queries."""

    def __init__(
        self,
        path: Path | str,
        *,
        retention: Retention | None = None,
        batch_seconds: float = 0.25,
        batch_rows: int = 1000,
        maintenance_seconds: float = 30.0,
        rollup_grace_s: float = 90.0,
        max_pending_rows: int = 500_000,
        max_db_bytes: int | None = None,
        on_error: Callable[[str], None] | None = None,
        on_recovered: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.retention = retention or Retention()
        self.batch_seconds = batch_seconds
        self.batch_rows = batch_rows
        self.maintenance_seconds = maintenance_seconds
        self.rollup_grace_ms = int(rollup_grace_s * 1000)
        self.max_pending_rows = max_pending_rows
        self.on_error = on_error
        self.on_recovered = on_recovered
        self._max_db_bytes = max_db_bytes
        self._cap_changed = False
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        # Set with an item that must not wait for the batch (a flush, a call, stop): samples and events only
        # queue, so the writer wakes once a batch, not once a sample.
        self._urgent = threading.Event()
        self._pending: list[_Item] = []
        self._node_refs: dict[str, int] = {}
        self._boot_refs: dict[tuple[int, str], int] = {}
        self._dirty_minutes: set[int] = set()
        self._watermark: int | None = None
        self._stats = {"samples_committed": 0, "rows_committed": 0, "commits": 0, "dropped_rows": 0,
                       "errors": 0, "pending_rows": 0}
        self._last_error = ""
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tierdeck-db-read")
        self._reader_db: sqlite_utils.Database | None = None
        self._opened = threading.Event()
        self._open_error: BaseException | None = None

    # ----- life cycle -----------------------------------------------------------------------------
    def start(self) -> Database:
        """Open (creating the schema) and start the writer thread; raises if the file cannot be opened."""
        if self._writer is not None:
            return self
        self._writer = threading.Thread(target=self._run, name="tierdeck-db-writer", daemon=True)
        self._writer.start()
        self._opened.wait()
        if self._open_error is not None:
            self._writer = None
            raise self._open_error
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued and stop both threads."""
        writer, self._writer = self._writer, None
        if writer is not None:
            self._queue.put(None)
            self._urgent.set()
            writer.join(timeout)
        self._reader.submit(self._close_reader).result(timeout)
        self._reader.shutdown(wait=True)

    def _close_reader(self) -> None:
        if self._reader_db is not None:
            self._reader_db.conn.close()
            self._reader_db = None

    # ----- producers (any thread, never block) ----------------------------------------------------
    def write_sample(self, sample: NodeSample) -> None:
        """Queue one accepted telemetry sample."""
        self._queue.put(("sample", sample))

    def write_samples(self, samples: Iterable[NodeSample]) -> None:
        """Queue several samples."""
        for sample in samples:
            self._queue.put(("sample", sample))

    def add_event(self, event: ConsoleEvent) -> None:
        """Queue one audit-log event."""
        self._queue.put(("event", event))

    def save_node(self, node: NodeSnapshot, forgotten: bool = False) -> None:
        """Queue an upsert of a node's identity and state (only nodes with a node id are stored)."""
        if not node.node_id:
            return
        self._queue.put(("node", {
            "node_id": node.node_id, "name": node.name, "tier": node.tier, "address": node.address,
            "source": node.source, "state": str(node.state), "state_reason": node.reason,
            "state_since_ms": node.state_since_ms,
            "info_json": json.dumps(node.info.as_json()) if node.info else None,
            "last_seen_ms": node.last_sample_ms or None, "forgotten": int(forgotten),
        }))

    def begin_deployment(self, deployment_id: str, pipeline: str, pipeline_path: str, operator: str, host: str,
                         plan: dict[str, Any]) -> None:
        """Ledger: a deployment starts."""
        self._ledger("INSERT OR REPLACE INTO deployments (id, pipeline, pipeline_path, operator, host, started_ms, "
                     "status, plan_json) VALUES (?, ?, ?, ?, ?, ?, 'running', ?)",
                     (deployment_id, pipeline, pipeline_path, operator, host, now_ms(), json.dumps(plan)))

    def finish_deployment(self, deployment_id: str, status: str, reason: str) -> None:
        """Ledger: a deployment ended (succeeded, rolled_back, failed)."""
        self._ledger("UPDATE deployments SET finished_ms = ?, status = ?, reason = ? WHERE id = ?",
                     (now_ms(), status, reason, deployment_id))

    def add_step(self, deployment_id: str, node_id: str, stage_id: str, step: str, status: str, message: str,
                 ts_ms: int | None = None) -> None:
        """Ledger: one step of a deployment on one node."""
        self._ledger("INSERT INTO deployment_steps (deployment_id, ts_ms, node_id, stage_id, step, status, message) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (deployment_id, ts_ms or now_ms(), node_id, stage_id, step, status, message))

    def set_stages(self, node_id: str, stages: Iterable[StageSnapshot],
                   owners: dict[str, tuple[str, str]] | None = None) -> None:
        """Record what runs on a node now; `owners` maps stage id to (pipeline, deployment id) for new owners."""
        rows = [(node_id, s.stage_id, s.version, s.sha256, s.state, s.previous_version, s.next_hop, now_ms())
                for s in stages]
        self._queue.put(("stages", node_id, rows, dict(owners or {})))

    def _ledger(self, sql: str, params: tuple[Any, ...]) -> None:
        self._queue.put(("ledger", sql, params))

    def flush(self) -> concurrent.futures.Future[int]:
        """A future that resolves (to the number of samples committed so far) once everything queued is committed."""
        item = _Flush()
        self._queue.put(item)
        self._urgent.set()
        return item.future

    def call(self, fn: Callable[[sqlite_utils.Database], T]) -> concurrent.futures.Future[T]:
        """Run `fn(db)` on the writer thread, after what is queued before it (maintenance, tests)."""
        item = _Call(fn)
        self._queue.put(item)
        self._urgent.set()
        return item.future

    def run_maintenance(self, now: int | None = None, full: bool = True) -> concurrent.futures.Future[dict[str, int]]:
        """Roll up closed minutes and apply retention now (as of `now` Unix ms); returns counts."""
        return self.call(lambda db: self._maintenance(db, now if now is not None else now_ms(), full))

    def set_max_bytes(self, max_db_bytes: int | None) -> None:
        """Change the database size cap (None: no cap); applied before the writer's next attempt."""
        with self._lock:
            self._max_db_bytes = max_db_bytes
            self._cap_changed = True

    def read(self, fn: Callable[[sqlite_utils.Database], T]) -> concurrent.futures.Future[T]:
        """Run a query `fn(db)` on the reader thread (its own read-only connection); never blocks the caller."""
        def run() -> T:
            if self._reader_db is None:
                self._reader_db = sqlite_utils.Database(connect(self.path, readonly=True))
            return fn(self._reader_db)
        return self._reader.submit(run)

    def stats(self) -> dict[str, Any]:
        """Counters of the writer: samples/rows committed, commits, dropped rows, errors, pending rows, last error."""
        with self._lock:
            return {**self._stats, "last_error": self._last_error}

    # ----- the writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            db = open_database(self.path)
            self._apply_cap(db.conn)
            self._load_refs(db.conn)
        except BaseException as exc:  # reported to start()
            self._open_error = exc
            self._opened.set()
            return
        self._opened.set()
        conn = db.conn
        stopping = False
        failures = 0
        next_maintenance = time.monotonic() + self.maintenance_seconds
        while True:
            stopping = self._collect(stopping, failures)
            if self._pending:
                if self._write(conn):
                    failures = 0
                else:
                    failures += 1
                    if stopping and failures > 3:
                        log.error("database: giving up on %d queued records at shutdown", len(self._pending))
                        self._fail_waiters()
                        break
            if time.monotonic() >= next_maintenance and not failures:
                next_maintenance = time.monotonic() + self.maintenance_seconds
                try:
                    self._maintenance(db, now_ms(), full=False)
                except sqlite3.Error as exc:
                    self._report(f"database maintenance failed: {exc}")
            if stopping and not self._pending:
                break
        try:
            conn.execute("PRAGMA optimize")
            conn.close()
        except sqlite3.Error:
            pass

    def _collect(self, stopping: bool, failures: int) -> bool:
        """Move queued items into the pending batch: wait for the first, then up to batch_seconds/batch_rows."""
        if failures:
            wait = min(5.0, 0.25 * 2 ** min(failures, 5))
            deadline = time.monotonic() + wait
        elif self._pending:
            deadline = time.monotonic()
        else:
            deadline = None
        rows = sum(_rows(item) for item in self._pending)
        first = True
        while not stopping:
            try:
                if deadline is None:
                    item = self._queue.get(timeout=self.maintenance_seconds)
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                if deadline is None:
                    return stopping
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                # Let the batch fill without waking for each item: sleep until its deadline or an urgent item.
                self._urgent.wait(remaining)
                self._urgent.clear()
                continue
            if item is None:
                stopping = True
                break
            self._pending.append(item)
            rows += _rows(item)
            if first and deadline is None:
                deadline = time.monotonic() + self.batch_seconds
                first = False
            if isinstance(item, _Flush | _Call) and not failures:
                break
            if rows >= self.batch_rows and not failures:
                break
        if stopping:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    self._pending.append(item)
        self._trim()
        return stopping

    def _trim(self) -> None:
        """Keep memory bounded while the database refuses writes: drop the oldest telemetry first."""
        rows = sum(_rows(item) for item in self._pending if isinstance(item, tuple) and item[0] == "sample")
        if rows <= self.max_pending_rows:
            with self._lock:
                self._stats["pending_rows"] = rows
            return
        kept: list[_Item] = []
        dropped = 0
        for item in self._pending:
            if rows > self.max_pending_rows and isinstance(item, tuple) and item[0] == "sample":
                n = _rows(item)
                rows -= n
                dropped += n
                continue
            kept.append(item)
        self._pending = kept
        with self._lock:
            self._stats["dropped_rows"] += dropped
            self._stats["pending_rows"] = rows
        self._report(f"database backlog over {self.max_pending_rows} rows: dropped {dropped} oldest telemetry rows")

    def _write(self, conn: sqlite3.Connection) -> bool:
        """Commit the pending items; queued calls run between commits. On failure keep the rest and return False."""
        while self._pending:
            head = self._pending[0]
            if isinstance(head, _Call):
                self._pending.pop(0)
                try:
                    head.future.set_result(head.fn(sqlite_utils.Database(conn)))
                except Exception as exc:  # the caller's (or the database's) error goes to the caller
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    head.future.set_exception(exc)
                continue
            end = next((i for i, item in enumerate(self._pending) if isinstance(item, _Call)), len(self._pending))
            if not self._commit(conn, self._pending[:end]):
                return False
            del self._pending[:end]
        return True

    def _commit(self, conn: sqlite3.Connection, batch: list[_Item]) -> bool:
        """Write one batch in one transaction; on failure roll back, report and return False."""
        if self._cap_changed:
            with self._lock:
                self._cap_changed = False
            self._apply_cap(conn)
        durable = any(isinstance(item, tuple) and item[0] in ("ledger", "stages") for item in batch)
        node_rows: list[tuple[Any, ...]] = []
        stage_rows: list[tuple[Any, ...]] = []
        samples = 0
        refs_before = (dict(self._node_refs), dict(self._boot_refs))
        dirty_before = set(self._dirty_minutes)
        try:
            if durable:
                conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            for item in batch:
                if isinstance(item, _Flush):
                    continue
                kind = item[0]
                if kind == "sample":
                    samples += 1
                    self._sample_rows(conn, item[1], node_rows, stage_rows)
                elif kind == "event":
                    ev: ConsoleEvent = item[1]
                    conn.execute("INSERT INTO events (ts_ms, kind, severity, node_id, message, detail_json) "
                                 "VALUES (?, ?, ?, ?, ?, ?)",
                                 (ev.ts_ms, ev.kind, str(ev.severity), ev.node_id or None, ev.message,
                                  json.dumps(ev.detail, default=str) if ev.detail else None))
                elif kind == "node":
                    self._upsert_node(conn, item[1])
                elif kind == "ledger":
                    conn.execute(item[1], item[2])
                elif kind == "stages":
                    self._replace_stages(conn, *item[1:])
            self._insert_rows(conn, node_rows, stage_rows)
            if self._dirty_minutes:
                conn.executemany("INSERT OR IGNORE INTO rollup_dirty (minute_ms) VALUES (?)",
                                 [(m,) for m in sorted(self._dirty_minutes)])
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._node_refs, self._boot_refs = refs_before
            self._dirty_minutes = dirty_before
            self._report(_describe(exc, self.path))
            return False
        finally:
            if durable:
                try:
                    conn.execute("PRAGMA synchronous=NORMAL")
                except sqlite3.Error:
                    pass
        self._dirty_minutes.clear()  # committed to rollup_dirty with the samples
        rows = sum(_rows(item) for item in batch if not isinstance(item, _Flush))
        with self._lock:
            self._stats["samples_committed"] += samples
            self._stats["rows_committed"] += rows
            self._stats["commits"] += 1
            self._stats["pending_rows"] = 0
            committed = self._stats["samples_committed"]
            recovered, self._last_error = self._last_error, ""
        if recovered and self.on_recovered is not None:
            self.on_recovered(f"database writable again ({self.path})")
        for item in batch:
            if isinstance(item, _Flush):
                item.future.set_result(committed)
        return True

    def _fail_waiters(self) -> None:
        for item in self._pending:
            if isinstance(item, _Flush | _Call) and not item.future.done():
                item.future.set_exception(RuntimeError(self._last_error or "database closed"))

    def _report(self, message: str) -> None:
        with self._lock:
            repeated = message == self._last_error
            self._last_error = message
            self._stats["errors"] += 1
        log.warning("%s", message)
        if not repeated and self.on_error is not None:
            self.on_error(message)

    def _apply_cap(self, conn: sqlite3.Connection) -> None:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = (self._max_db_bytes // page_size) if self._max_db_bytes else 4294967294
        conn.execute(f"PRAGMA max_page_count={max(1, int(pages))}")

    def _load_refs(self, conn: sqlite3.Connection) -> None:
        self._node_refs = dict(conn.execute("SELECT node_id, ref FROM nodes").fetchall())
        self._boot_refs = {(node, boot): ref
                           for ref, node, boot in conn.execute("SELECT ref, node, boot_id FROM boots")}
        row = conn.execute("SELECT value FROM meta WHERE key = 'rollup_watermark'").fetchone()
        self._watermark = int(row[0]) if row else None

    def _node_ref(self, conn: sqlite3.Connection, node_id: str) -> int:
        ref = self._node_refs.get(node_id)
        if ref is None:
            conn.execute("INSERT OR IGNORE INTO nodes (node_id, first_seen_ms) VALUES (?, ?)", (node_id, now_ms()))
            ref = int(conn.execute("SELECT ref FROM nodes WHERE node_id = ?", (node_id,)).fetchone()[0])
            self._node_refs[node_id] = ref
        return ref

    def _boot_ref(self, conn: sqlite3.Connection, node: int, boot_id: str) -> int:
        ref = self._boot_refs.get((node, boot_id))
        if ref is None:
            conn.execute("INSERT OR IGNORE INTO boots (node, boot_id, first_seen_ms) VALUES (?, ?, ?)",
                         (node, boot_id, now_ms()))
            ref = int(conn.execute("SELECT ref FROM boots WHERE node = ? AND boot_id = ?",
                                   (node, boot_id)).fetchone()[0])
            self._boot_refs[(node, boot_id)] = ref
        return ref

    def _sample_rows(self, conn: sqlite3.Connection, s: NodeSample, node_rows: list[tuple[Any, ...]],
                     stage_rows: list[tuple[Any, ...]]) -> None:
        node = self._node_ref(conn, s.node_id)
        boot = self._boot_ref(conn, node, s.boot_id)
        if self._watermark is not None and s.ts_ms < self._watermark:
            self._dirty_minutes.add(s.ts_ms // MINUTE_MS * MINUTE_MS)
        node_rows.append((node, boot, s.seq, s.ts_ms, "", s.cpu_percent, s.rss_bytes, s.power_watts, s.power_source,
                          int(s.power_measured), s.energy_joules_total, s.energy_joules, s.backlog))
        for st in s.stages:
            stage_rows.append((
                node, boot, s.seq, s.ts_ms, st.stage_id, *st[1:_COUNTERS_END],
                st.inferences, st.escalated, st.dropped, st.errors, st.shed, st.overflow,
                st.inferences_per_s, st.escalation_rate, st.latency_p50_ms, st.latency_p95_ms, st.latency_p99_ms,
                st.queue_depth, st.link_state, st.energy_joules_total, st.energy_per_inference_j,
            ))

    @staticmethod
    def _insert_rows(conn: sqlite3.Connection, node_rows: list[tuple[Any, ...]],
                     stage_rows: list[tuple[Any, ...]]) -> None:
        # The hot path stays raw executemany of prepared tuples: bench/db_insert.py measured it ~12x faster
        # than sqlite-utils' insert_all of the same rows (58k vs 4.9k rows/s, 500-row transactions, 12-03).
        if node_rows:
            conn.executemany(_INSERT_NODE, node_rows)
        if stage_rows:
            conn.executemany(_INSERT_STAGE, stage_rows)

    def _upsert_node(self, conn: sqlite3.Connection, row: dict[str, Any]) -> None:
        self._node_ref(conn, row["node_id"])
        sets = ", ".join(f"{k} = COALESCE(:{k}, {k})" for k in row if k != "node_id")
        conn.execute(f"UPDATE nodes SET {sets} WHERE node_id = :node_id", row)

    @staticmethod
    def _replace_stages(conn: sqlite3.Connection, node_id: str, rows: list[tuple[Any, ...]],
                        owners: dict[str, tuple[str, str]]) -> None:
        known = {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT stage_id, pipeline, deployment_id FROM stages WHERE node_id = ?", (node_id,))}
        conn.execute("DELETE FROM stages WHERE node_id = ?", (node_id,))
        for row in rows:
            pipeline, deployment = owners.get(row[1]) or known.get(row[1], (None, None))
            conn.execute("INSERT INTO stages (node_id, stage_id, version, sha256, state, previous_version, next_hop, "
                         "updated_ms, pipeline, deployment_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (*row, pipeline, deployment))

    # ----- rollups and retention ------------------------------------------------------------------
    def _maintenance(self, db: sqlite_utils.Database, now: int, full: bool) -> dict[str, int]:
        """One rollup + retention pass in one transaction: a crash (kill -9) anywhere in it leaves the database
        as before the pass (WAL), and the pass is idempotent (INSERT OR REPLACE per window, the watermark and
        the dirty minutes move in the same transaction), so no window is counted twice or lost."""
        conn = db.conn
        own_tx = not conn.in_transaction
        watermark = self._watermark
        if own_tx:
            conn.execute("BEGIN IMMEDIATE")
        try:
            counts = self._rollup(conn, now)
            counts.update(self._retention(conn, now, full))
            if own_tx:
                conn.execute("COMMIT")
        except BaseException:
            self._watermark = watermark  # what the database still says
            if own_tx:
                conn.execute("ROLLBACK")
            raise
        return counts

    def _rollup(self, conn: sqlite3.Connection, now: int) -> dict[str, int]:
        end = (now - self.rollup_grace_ms) // MINUTE_MS * MINUTE_MS
        start = self._watermark
        if start is None:
            first = conn.execute("SELECT min(ts_ms) FROM telemetry WHERE node IN (SELECT ref FROM nodes)"
                                 ).fetchone()[0]
            if first is None:
                return {"rolled_minutes": 0}
            start = int(first) // MINUTE_MS * MINUTE_MS
        rolled = 0
        raw_cutoff = now - int(self.retention.raw_s * 1000)
        dirty = [int(row[0]) for row in conn.execute("SELECT minute_ms FROM rollup_dirty ORDER BY minute_ms")]
        for minute in dirty:
            if raw_cutoff <= minute < start:
                conn.execute(_ROLLUP, (minute, minute + MINUTE_MS))
                rolled += 1
        conn.execute("DELETE FROM rollup_dirty")
        if start < end:
            conn.execute(_ROLLUP, (start, end))
            rolled += (end - start) // MINUTE_MS
            self._watermark = end
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('rollup_watermark', ?)", (str(end),))
        return {"rolled_minutes": rolled}

    def _retention(self, conn: sqlite3.Connection, now: int, full: bool) -> dict[str, int]:
        raw_cutoff = now - int(self.retention.raw_s * 1000)
        if self._watermark is not None:
            raw_cutoff = min(raw_cutoff, self._watermark)  # never delete what is not rolled up yet
        else:
            raw_cutoff = min(raw_cutoff, 0)
        chunk = 20_000
        raw = 0
        while True:
            n = conn.execute("DELETE FROM telemetry WHERE rowid IN (SELECT rowid FROM telemetry WHERE node IN "
                             "(SELECT ref FROM nodes) AND ts_ms < ? "
                             "LIMIT ?)", (raw_cutoff, chunk)).rowcount
            raw += n
            if n < chunk or not full:
                break
        rollups = conn.execute("DELETE FROM telemetry_rollup_1m WHERE minute_ms < ?",
                               (now - int(self.retention.rollup_s * 1000),)).rowcount
        events = conn.execute("DELETE FROM events WHERE ts_ms < ?",
                              (now - int(self.retention.events_s * 1000),)).rowcount
        return {"raw_deleted": raw, "rollups_deleted": rollups, "events_deleted": events}


def _rows(item: _Item) -> int:
    if isinstance(item, tuple) and item[0] == "sample":
        return 1 + len(item[1].stages)
    return 1


def _describe(exc: sqlite3.Error, path: Path) -> str:
    """The database error in words an operator can act on."""
    text = str(exc)
    code = getattr(exc, "sqlite_errorname", "")
    if "full" in text or code == "SQLITE_FULL":
        return f"database full ({path}): {text}; telemetry is kept in memory and retried"
    if "locked" in text or "busy" in text or code in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return f"database locked by another process ({path}): {text}; retrying"
    return f"database write failed ({path}): {text}; retrying"


# ----- queries (run them through Database.read or on any connection of their own) --------------------

def last_positions(db: sqlite_utils.Database) -> dict[str, Position]:
    """Per node, the newest stored sample's boot, seq and counters: seeds de-duplication after a restart."""
    out: dict[str, Position] = {}
    for node_id, node in db.execute("SELECT node_id, ref FROM nodes").fetchall():
        # Index range scans on (node, ts_ms), newest first: cheap however large the table is.
        row = db.execute("SELECT boot, seq, ts_ms, energy_joules_total FROM telemetry WHERE node = ? AND stage = '' "
                         "ORDER BY ts_ms DESC, seq DESC LIMIT 1", [node]).fetchone()
        if row is None:
            continue
        boot, seq, ts, energy = row
        boot_id = db.execute("SELECT boot_id FROM boots WHERE ref = ?", [boot]).fetchone()[0]
        totals: dict[str, tuple[int, ...]] = {}
        for stage_row in db.execute(
                f"SELECT stage, {', '.join(STAGE_COUNTERS)} "
                "FROM telemetry WHERE node = ? AND boot = ? AND stage != '' ORDER BY ts_ms DESC, seq DESC LIMIT 500",
                [node, boot]).fetchall():
            totals.setdefault(stage_row[0], tuple(int(v or 0) for v in stage_row[1:]))
        out[node_id] = Position(boot_id, int(seq), int(ts), float(energy or 0.0), totals)
    return out


def telemetry_rows(db: sqlite_utils.Database, since_ms: int = 0, until_ms: int | None = None,
                   node_id: str | None = None, stage: str | None = None) -> list[dict[str, Any]]:
    """Raw telemetry rows with node and boot ids spelled out, oldest first."""
    where = ["t.node IN (SELECT ref FROM nodes)", "t.ts_ms >= :since"]
    params: dict[str, Any] = {"since": since_ms}
    if until_ms is not None:
        where.append("t.ts_ms < :until")
        params["until"] = until_ms
    if node_id is not None:
        where.append("n.node_id = :node_id")
        params["node_id"] = node_id
    if stage is not None:
        where.append("t.stage = :stage")
        params["stage"] = stage
    columns = ", ".join(f"t.{c}" for c in _ALL_TELEMETRY if c not in ("node", "boot"))
    sql = (f"SELECT n.node_id, n.name AS node_name, b.boot_id, {columns} FROM telemetry t "
           f"JOIN nodes n ON n.ref = t.node JOIN boots b ON b.ref = t.boot WHERE {' AND '.join(where)} "
           "ORDER BY t.ts_ms, t.node, t.seq, t.stage")
    return list(db.query(sql, params))


_ALL_TELEMETRY = tuple(dict.fromkeys(_NODE_ROW + _STAGE_ROW))


def rollup_rows(db: sqlite_utils.Database, since_ms: int = 0, until_ms: int | None = None,
                node_id: str | None = None, stage: str | None = None) -> list[dict[str, Any]]:
    """One-minute rollups with node ids spelled out, oldest first."""
    where = ["r.minute_ms >= :since"]
    params: dict[str, Any] = {"since": since_ms}
    if until_ms is not None:
        where.append("r.minute_ms < :until")
        params["until"] = until_ms
    if node_id is not None:
        where.append("n.node_id = :node_id")
        params["node_id"] = node_id
    if stage is not None:
        where.append("r.stage = :stage")
        params["stage"] = stage
    sql = (f"SELECT n.node_id, n.name AS node_name, r.* FROM telemetry_rollup_1m r JOIN nodes n ON n.ref = r.node "
           f"WHERE {' AND '.join(where)} ORDER BY r.minute_ms, r.node, r.stage")
    rows = []
    for row in db.query(sql, params):
        row.pop("node", None)
        rows.append(row)
    return rows


def event_rows(db: sqlite_utils.Database, since_ms: int = 0, until_ms: int | None = None) -> list[dict[str, Any]]:
    """Audit-log events, oldest first (detail decoded)."""
    rows = []
    until = until_ms if until_ms is not None else 2**62
    for row in db.table("events").rows_where("ts_ms >= ? AND ts_ms < ?", [since_ms, until],
                                       select="ts_ms, kind, severity, node_id, message, detail_json",
                                       order_by="ts_ms, id"):
        detail = row.pop("detail_json")
        row["detail"] = json.loads(detail) if detail else {}
        rows.append(row)
    return rows


def managed_stages(db: sqlite_utils.Database, pipeline: str) -> dict[str, set[str]]:
    """Per node id, the stage ids a pipeline (by name) put there, as last recorded."""
    out: dict[str, set[str]] = {}
    for node_id, stage_id in db.execute("SELECT node_id, stage_id FROM stages WHERE pipeline = ?", [pipeline]):
        out.setdefault(node_id, set()).add(stage_id)
    return out


def deployment_rows(db: sqlite_utils.Database, since_ms: int = 0) -> list[dict[str, Any]]:
    """Deployments (newest last) each with its steps."""
    out = []
    for dep in db.table("deployments").rows_where("started_ms >= ?", [since_ms], order_by="started_ms"):
        dep["plan"] = json.loads(dep.pop("plan_json") or "null")
        dep["steps"] = list(db.table("deployment_steps").rows_where("deployment_id = ?", [dep["id"]], order_by="id",
                                                              select="ts_ms, node_id, stage_id, step, status, message"))
        out.append(dep)
    return out


def history(db: sqlite_utils.Database, node_id: str, stage: str, since_ms: int, until_ms: int,
            columns: tuple[str, ...], resolution: str = "auto") -> dict[str, Any]:
    """A time series for the dashboard: raw rows, or one-minute rollups for long windows ('auto': > 1 h)."""
    if resolution == "auto":
        resolution = "1m" if until_ms - since_ms > 3600_000 else "raw"
    table, tcol = ("telemetry", "ts_ms") if resolution == "raw" else ("telemetry_rollup_1m", "minute_ms")
    known = {r[1] for r in db.execute(f"PRAGMA table_info({table})").fetchall()}
    cols = [c for c in columns if c in known]
    ref = db.execute("SELECT ref FROM nodes WHERE node_id = ?", [node_id]).fetchone()
    result: dict[str, Any] = {"resolution": resolution, "t": [], **{c: [] for c in cols}}
    if ref is None or not cols:
        return result
    select = ", ".join([tcol, *cols])
    for row in db.execute(f"SELECT {select} FROM {table} WHERE node = ? AND stage = ? AND {tcol} >= ? AND "
                          f"{tcol} < ? ORDER BY {tcol}", [ref[0], stage, since_ms, until_ms]):
        result["t"].append(row[0] / 1000.0)
        for c, v in zip(cols, row[1:], strict=True):
            result[c].append(v)
    return result
