"""Forwarding escalations to the next hop: batching, a circuit breaker, and store-and-forward.

Design: escalations from concurrent requests meet in one pending list and go to the next hop in one
ModelInfer call (batching costs nothing when the link is idle: the batcher takes what is waiting). When
a call fails the link is marked down (the breaker opens): the failed rows and every escalation after them
go to an on-disk SQLite queue and their requests are answered provisional at once. A delivery task probes
the hop with backoff and drains the queue oldest first; while anything is queued, new escalations queue
behind it, so the next hop sees escalations in the order they happened. The queue is bounded per stage;
what the bound refuses is counted (overflow_total), never silently dropped.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from runners._proto import grpc_predict_v2_pb2 as pb
from runners._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from runners._proto import tierdeck_control_pb2 as ctl
from runners._rules import Decision, Decisions
from runners._stream import StreamLink
from runners._telemetry import StageStats
from runners._tensors import TensorError, decode_inputs, decode_outputs, encode_inputs, request_bytes

log = logging.getLogger("tierdeck.forward")

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.max_send_message_length", 2**31 - 1),
]
DECISION_OUTPUTS = ("decision_label", "decision_confidence", "decision_stage", "decision_final")
BATCH_DELAY_S = 0.002  # longest an escalation waits for others to share its call, under concurrent traffic
# Every escalated row carries an id unique to this forwarder instance (node, boot, stage, instance, row) so
# that the next hop answers a re-sent row from its cache instead of running (and counting) it twice: a call
# can time out after the hop did the work. A new forwarder (next hop changed, stage redeployed) takes a new
# instance id, so its counter starting at 0 can never name a row an earlier forwarder sent (runners._seen).
# A row that arrived with an id (an escalation from the tier below) is escalated under an id derived from it
# (Forwarder.new_row_ids), the same however often and by whichever instance this tier runs it.
ROW_IDS = "tierdeck.row_ids"
# A smoke inference (the deployer's check after a deploy): answered through the whole chain, never counted,
# never queued, never remembered as an escalation.
SMOKE = "tierdeck.smoke"


def pack_row_ids(row_ids: list[str]) -> str:
    """Row ids on the wire: `<prefix><first>+<count>` when they are consecutive numbers under one prefix (the
    forwarder's usual batch), else comma-separated."""
    first, last = row_ids[0], row_ids[-1]
    prefix = first.rstrip("0123456789")
    start = first[len(prefix):]
    if start and last.startswith(prefix) and last[len(prefix):].isdigit() and "," not in prefix and "+" not in prefix \
            and int(last[len(prefix):]) - int(start) == len(row_ids) - 1 \
            and row_ids == [f"{prefix}{int(start) + k}" for k in range(len(row_ids))]:
        return f"{prefix}{start}+{len(row_ids)}"
    return ",".join(row_ids)


def unpack_row_ids(text: str) -> list[str]:
    """The inverse of pack_row_ids (malformed ranges are taken as plain ids)."""
    if "," not in text and "+" in text:
        head, _, count = text.rpartition("+")
        prefix = head.rstrip("0123456789")
        start = head[len(prefix):]
        if start and count.isdigit() and 0 < int(count) <= 1_000_000:
            return [f"{prefix}{int(start) + k}" for k in range(int(count))]
    return text.split(",")


class EscalationQueue:
    """Bounded on-disk FIFO of escalations per stage (SQLite, WAL). Blocking: call from one I/O thread."""

    def __init__(self, path: Path, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS escalations (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, stage_id TEXT NOT NULL, request_id TEXT NOT NULL,
                created_ms INTEGER NOT NULL, payload BLOB NOT NULL);
            CREATE INDEX IF NOT EXISTS escalations_stage ON escalations(stage_id, seq);
            CREATE TABLE IF NOT EXISTS delivered (
                seq INTEGER PRIMARY KEY, stage_id TEXT NOT NULL, request_id TEXT NOT NULL,
                label TEXT, confidence REAL, decided_by TEXT, delivered_ms INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS dead_letter (
                seq INTEGER PRIMARY KEY, stage_id TEXT NOT NULL, request_id TEXT NOT NULL,
                error TEXT NOT NULL, payload BLOB NOT NULL);
            """
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(dead_letter)")}
        if "dead_ms" not in columns:  # queues written before dead letters were dated
            self._db.execute("ALTER TABLE dead_letter ADD COLUMN dead_ms INTEGER NOT NULL DEFAULT 0")

    def depth(self, stage_id: str) -> int:
        """Rows waiting for this stage."""
        with self._lock:
            return self._count(stage_id)

    def _count(self, stage_id: str) -> int:
        return int(self._db.execute("SELECT count(*) FROM escalations WHERE stage_id=?", (stage_id,)).fetchone()[0])

    def append(self, stage_id: str, rows: list[tuple[str, bytes]]) -> int:
        """Append rows (request id, serialized request) up to the bound; returns how many were stored."""
        with self._lock:
            room = max(0, self.limit - self._count(stage_id))
            stored = rows[:room]
            now = int(time.time() * 1000)
            with self._db:
                self._db.executemany(
                    "INSERT INTO escalations(stage_id, request_id, created_ms, payload) VALUES (?,?,?,?)",
                    [(stage_id, rid, now, payload) for rid, payload in stored],
                )
            return len(stored)

    def peek(self, stage_id: str, limit: int) -> list[tuple[int, str, bytes]]:
        """The oldest rows of this stage, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, request_id, payload FROM escalations WHERE stage_id=? ORDER BY seq LIMIT ?",
                (stage_id, limit),
            ).fetchall()
        return [(int(s), str(r), bytes(p)) for s, r, p in rows]

    def ack(self, stage_id: str, delivered: list[tuple[int, str, Decision]]) -> None:
        """Remove delivered rows and remember their late (final) answers."""
        now = int(time.time() * 1000)
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO delivered VALUES (?,?,?,?,?,?,?)",
                [(seq, stage_id, rid, d.label, d.confidence, d.stage, now) for seq, rid, d in delivered],
            )
            self._db.executemany("DELETE FROM escalations WHERE seq=?", [(seq,) for seq, _, _ in delivered])
            # Keep the late-answer log bounded.
            self._db.execute("DELETE FROM delivered WHERE seq <= (SELECT max(seq) FROM delivered) - 100000")

    def dead_letter(self, stage_id: str, rows: list[tuple[int, str, bytes]], error: str) -> None:
        """Move rows the next hop rejects as invalid out of the way, keeping them for inspection."""
        now = int(time.time() * 1000)
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO dead_letter(seq, stage_id, request_id, error, payload, dead_ms) "
                "VALUES (?,?,?,?,?,?)", [(seq, stage_id, rid, error, payload, now) for seq, rid, payload in rows])
            self._db.executemany("DELETE FROM escalations WHERE seq=?", [(seq,) for seq, _, _ in rows])

    def dead_letters(self, stage_id: str = "", limit: int = 100, after_seq: int = 0
                     ) -> tuple[list[tuple[int, str, str, str, int, int]], int]:
        """(seq, stage id, request id, error, dead_ms, payload bytes) oldest first, and how many match in all."""
        where, args = ("stage_id=? AND ", [stage_id]) if stage_id else ("", [])
        with self._lock:
            rows = self._db.execute(
                f"SELECT seq, stage_id, request_id, error, dead_ms, length(payload) FROM dead_letter "
                f"WHERE {where}seq > ? ORDER BY seq LIMIT ?", [*args, after_seq, limit]).fetchall()
            total = self._db.execute(f"SELECT count(*) FROM dead_letter {'WHERE stage_id=?' if stage_id else ''}",
                                     args).fetchone()[0]
        return [(int(a), str(b), str(c), str(d), int(e), int(f)) for a, b, c, d, e, f in rows], int(total)

    def count_dead(self, stage_id: str) -> int:
        """Dead letters kept for this stage."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM dead_letter WHERE stage_id=?", (stage_id,)).fetchone()[0])

    def _selected(self, stage_id: str, seqs: list[int]) -> list[tuple[int, str, bytes]]:
        rows = self._db.execute("SELECT seq, request_id, payload FROM dead_letter WHERE stage_id=? ORDER BY seq",
                                (stage_id,)).fetchall()
        wanted = set(seqs)
        return [(int(q), str(r), bytes(p)) for q, r, p in rows if not wanted or q in wanted]

    def retry_dead(self, stage_id: str, seqs: list[int]) -> int:
        """Put dead letters (all of the stage's when `seqs` is empty) back at the end of the queue."""
        now = int(time.time() * 1000)
        with self._lock, self._db:
            rows = self._selected(stage_id, seqs)
            self._db.executemany("INSERT INTO escalations(stage_id, request_id, created_ms, payload) VALUES (?,?,?,?)",
                                 [(stage_id, rid, now, payload) for _, rid, payload in rows])
            self._db.executemany("DELETE FROM dead_letter WHERE seq=?", [(seq,) for seq, _, _ in rows])
        return len(rows)

    def discard_dead(self, stage_id: str, seqs: list[int]) -> int:
        """Drop dead letters for good (all of the stage's when `seqs` is empty)."""
        with self._lock, self._db:
            rows = self._selected(stage_id, seqs)
            self._db.executemany("DELETE FROM dead_letter WHERE seq=?", [(seq,) for seq, _, _ in rows])
        return len(rows)

    def delivered(self, stage_id: str) -> list[tuple[int, str, str]]:
        """(seq, request id, label) of delivered rows, in order."""
        with self._lock:
            rows = self._db.execute("SELECT seq, request_id, label FROM delivered WHERE stage_id=? ORDER BY seq",
                                    (stage_id,)).fetchall()
        return [(int(s), str(r), str(lab)) for s, r, lab in rows]

    def drop_stage(self, stage_id: str) -> int:
        """Forget a stage's waiting rows (stage undeployed); returns how many."""
        with self._lock, self._db:
            return self._db.execute("DELETE FROM escalations WHERE stage_id=?", (stage_id,)).rowcount

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


@dataclass
class _Pending:
    inputs: dict[str, np.ndarray]
    rows: int
    request_id: str
    row_ids: list[str]
    future: asyncio.Future[Decisions | None] = field(repr=False)


_PERMANENT = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE}


class Forwarder:
    """Sends one stage's escalations to its next hop; lives on the agent's event loop."""

    def __init__(self, stage_id: str, hop: ctl.NextHop, queue: EscalationQueue, io: Executor,
                 stats: StageStats, max_batch: int = 64, priority: str = "",
                 on_depth_change: Callable[[], None] | None = None, origin: str = "") -> None:
        self.stage_id = stage_id
        self._origin = f"{origin or uuid.uuid4().hex[:12]}.{stage_id}.{uuid.uuid4().hex[:12]}."
        self._next_row = 0
        self.hop = hop
        self._queue = queue
        self._io = io
        self._stats = stats
        self._max_batch = max(1, max_batch)
        self._priority = priority
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._backlog_wake = asyncio.Event()
        self._recent = 0  # escalations that arrived close together (see _batcher)
        self._last_escalation = 0.0
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.GRPCInferenceServiceStub | None = None
        self._link: StreamLink | None = None  # ModelInfer exchanges, on one StreamInfer stream where the hop has it
        self._hop_inputs: list[str] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._on_depth_change = on_depth_change
        # Called with (row ids, decisions) when queued rows get their late answers (the agent's ledger).
        self.on_late_answers: Callable[[list[str], Decisions], object] | None = None
        self.backlog = 0
        self.up = True
        self.last_error = ""

    async def async_start(self, credentials: grpc.ChannelCredentials | None = None, target_name: str = "") -> None:
        """Open the channel (mutual TLS when credentials are given) and start the batcher and delivery task.

        An external hop (an engine tierdeck does not run) is dialled with its own TLS material instead of the
        fleet's, or in plaintext when it has none."""
        if self.hop.external:
            credentials = grpc.ssl_channel_credentials(
                self.hop.tls_ca, self.hop.tls_key or None, self.hop.tls_cert or None) if self.hop.tls_ca else None
            target_name = ""
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(self.hop.address, options=CHANNEL_OPTIONS)
        else:
            options = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", target_name)]
            self._channel = grpc.aio.secure_channel(self.hop.address, credentials, options=options)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        # Engines speak plain OIP: only tierdeck hops get the stream (runners/_stream.py).
        self._link = StreamLink(self._stub, self._channel, streaming=False if self.hop.external else None,
                                target=self.hop.address)
        self.backlog = await asyncio.get_running_loop().run_in_executor(self._io, self._queue.depth, self.stage_id)
        self._set_backlog(self.backlog)
        self._stats.dead_letters = await asyncio.get_running_loop().run_in_executor(
            self._io, self._queue.count_dead, self.stage_id)
        self._tasks = [
            asyncio.create_task(self._batcher(), name=f"forward-batcher-{self.stage_id}"),
            asyncio.create_task(self._delivery(), name=f"forward-delivery-{self.stage_id}"),
        ]
        if self.backlog:
            self.up = False
            self._backlog_wake.set()

    async def async_stop(self) -> None:
        """Stop the tasks; pending escalations are queued on disk first, so nothing is lost."""
        pending, self._pending = self._pending, []
        if pending:
            await self._store(pending)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._link is not None:
            await self._link.close()
        if self._channel is not None:
            await self._channel.close()

    @property
    def timeout(self) -> float:
        """Deadline for one forwarded batch, seconds."""
        return self.hop.timeout_s or 2.0

    def new_row_ids(self, rows: int, arrived_as: list[str] | None = None) -> list[str]:
        """Ids for rows about to be escalated: derived from the ids the rows arrived with, else new ones.

        A received row (an escalation from the tier below) can run here twice: re-sent after this agent
        died between running it and answering, or while its first run still waited on the next hop. A
        derived id makes both runs escalate it under the same id, so the next hop answers the second from
        memory instead of running and counting the row twice (derived ids hold '>', which new ones never do)."""
        row_ids = self.upcoming_row_ids(rows, arrived_as)
        if arrived_as is None or len(arrived_as) != rows:
            self._next_row += rows
        return row_ids

    async def async_escalate(self, inputs: dict[str, np.ndarray], request_id: str,
                             arrived_as: list[str] | None = None) -> Decisions | None:
        """Forward the rows; the next hop's decisions for them, or None when they were queued or refused.

        `arrived_as`: the row ids the rows came to this stage with, when they did (see new_row_ids)."""
        rows = len(next(iter(inputs.values())))
        future: asyncio.Future[Decisions | None] = asyncio.get_running_loop().create_future()
        row_ids = self.new_row_ids(rows, arrived_as)
        item = _Pending(inputs, rows, request_id, row_ids, future)
        now = time.monotonic()
        self._recent = self._recent + 1 if now - self._last_escalation < 4 * BATCH_DELAY_S else 1
        self._last_escalation = now
        if self.backlog or not self.up:
            await self._store([item])
        else:
            self._pending.append(item)
            self._wake.set()
        return await future

    def upcoming_row_ids(self, rows: int, arrived_as: list[str] | None = None) -> list[str]:
        """The ids async_escalate gives its next `rows` rows (it takes them before it first awaits)."""
        if arrived_as is not None and len(arrived_as) == rows:
            return [f"{self.stage_id}>{rid}" for rid in arrived_as]
        return [f"{self._origin}{self._next_row + i}" for i in range(rows)]

    async def async_smoke(self, inputs: dict[str, np.ndarray]) -> Decisions | None:
        """Send smoke rows straight to the next hop (no batching, queue, ids or counts); None when it failed."""
        try:
            return await self._call(inputs, "smoke", [], smoke=True)
        except _HopError as exc:
            log.warning("stage %s: smoke inference not answered by next hop %s: %s", self.stage_id,
                        self.hop.address, exc.message)
            return None

    def _set_backlog(self, depth: int) -> None:
        self.backlog = depth
        self._stats.queue_depth = depth
        self._stats.link_state = "up" if self.up else "down"
        if self._on_depth_change:
            self._on_depth_change()

    async def _store(self, items: list[_Pending]) -> None:
        """Queue the items on disk (in order) and answer them provisional."""
        payloads: list[tuple[str, bytes]] = []
        for item in items:
            for row in range(item.rows):
                request = pb.ModelInferRequest(model_name=self.hop.model, model_version=self.hop.model_version,
                                               id=item.request_id)
                encode_inputs(request, [(n, a[row:row + 1]) for n, a in item.inputs.items()])
                request.parameters[ROW_IDS].string_param = item.row_ids[row]
                payloads.append((item.request_id, request.SerializeToString()))
        loop = asyncio.get_running_loop()
        stored = await loop.run_in_executor(self._io, self._queue.append, self.stage_id, payloads)
        self._stats.add("queued_total", stored)
        if stored < len(payloads):
            self._stats.add("overflow_total", len(payloads) - stored)
            log.warning("stage %s: store-and-forward queue full, %d escalations refused",
                        self.stage_id, len(payloads) - stored)
        self._set_backlog(self.backlog + stored)
        self._backlog_wake.set()
        for item in items:
            if not item.future.done():
                item.future.set_result(None)

    async def _batcher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Under concurrent traffic, hold the first rows a moment so that more share the call (a bounded
            # delay, like Triton's dynamic batcher); a lone escalation goes at once.
            if self._recent >= 2 and sum(p.rows for p in self._pending) < self._max_batch:
                await asyncio.sleep(BATCH_DELAY_S)
            while self._pending:
                batch: list[_Pending] = []
                rows = 0
                while self._pending and (not batch or rows + self._pending[0].rows <= self._max_batch):
                    item = self._pending.pop(0)
                    batch.append(item)
                    rows += item.rows
                if not self.up or self.backlog:
                    await self._store(batch)
                    continue
                names = list(batch[0].inputs)
                merged = batch[0].inputs if len(batch) == 1 else {
                    n: np.concatenate([b.inputs[n] for b in batch]) for n in names}
                try:
                    decisions = await self._call(merged, ",".join(b.request_id for b in batch if b.request_id),
                                                 [rid for b in batch for rid in b.row_ids])
                except _HopError as exc:
                    self._mark_down(exc.message)
                    await self._store(batch)
                    continue
                self._stats.add("forwarded_total", rows)
                offset = 0
                for item in batch:
                    if not item.future.done():
                        item.future.set_result(decisions.take(slice(offset, offset + item.rows)))
                    offset += item.rows

    def _mark_down(self, message: str) -> None:
        if self.up:
            log.warning("stage %s: next hop %s/%s down: %s", self.stage_id, self.hop.address, self.hop.model, message)
        self.up = False
        self.last_error = message
        self._stats.link_state = "down"
        self._backlog_wake.set()

    async def _hop_input_names(self, forwarded: list[str]) -> list[str]:
        if self._hop_inputs is None:
            assert self._stub is not None
            meta = await self._stub.ModelMetadata(
                pb.ModelMetadataRequest(name=self.hop.model, version=self.hop.model_version), timeout=self.timeout)
            # Engines that say little (MLServer's default settings list no tensors): use what the pipeline
            # declares for the hop, else the names this stage forwards.
            self._hop_inputs = [t.name for t in meta.inputs] or list(self.hop.input_names) or forwarded
        return self._hop_inputs

    def requeued(self, rows: int) -> None:
        """Dead letters were put back in the queue: deliver them."""
        self._set_backlog(self.backlog + rows)
        self._backlog_wake.set()

    async def _call(self, inputs: dict[str, np.ndarray], request_id: str, row_ids: list[str],
                    smoke: bool = False) -> Decisions:
        """One ModelInfer on the next hop; raises _HopError on any failure."""
        assert self._stub is not None and self._link is not None
        started = time.perf_counter()
        try:
            hop_names = await self._hop_input_names(list(inputs))
            if len(hop_names) != len(inputs):
                # A wiring fault (the deployer checks this before it wires a hop): keep the rows queued and
                # say so, never dead-letter them for it.
                self._hop_inputs = None
                raise _HopError(f"next hop model '{self.hop.model}' takes {len(hop_names)} inputs "
                                f"({', '.join(hop_names)}), this stage forwards {len(inputs)}", permanent=False)
            request = pb.ModelInferRequest(model_name=self.hop.model, model_version=self.hop.model_version,
                                           id=request_id[:200])
            request.parameters["tierdeck.escalated_from"].string_param = self.stage_id
            if row_ids:
                request.parameters[ROW_IDS].string_param = pack_row_ids(row_ids)
            if smoke:
                request.parameters[SMOKE].bool_param = True
            if self._priority:
                request.parameters["tierdeck.priority"].string_param = self._priority
            response = await self._link.infer(
                request_bytes(request, list(zip(hop_names, inputs.values(), strict=True))), self.timeout)
        except grpc.aio.AioRpcError as exc:
            self._stats.record_hop_call(time.perf_counter() - started, False, time.monotonic())
            self._hop_inputs = None if exc.code() == grpc.StatusCode.NOT_FOUND else self._hop_inputs
            raise _HopError(f"{exc.code().name}: {exc.details()}", permanent=exc.code() in _PERMANENT) from exc
        except _HopError:
            self._stats.record_hop_call(time.perf_counter() - started, False, time.monotonic())
            raise
        self._stats.record_hop_call(time.perf_counter() - started, True, time.monotonic())
        try:
            return self._decisions(response)
        except (TensorError, ValueError, IndexError) as exc:
            raise _HopError(f"unreadable answer from next hop: {exc}", permanent=True) from exc

    def _decisions(self, response: pb.ModelInferResponse) -> Decisions:
        outputs = decode_outputs(response)
        if all(name in outputs for name in DECISION_OUTPUTS):
            return Decisions.from_columns(*(outputs[n] for n in DECISION_OUTPUTS))
        # A plain OIP server (Triton, KServe, MLServer): the named output (else its first) holds the class scores.
        first = outputs[self.hop.output] if self.hop.output in outputs else next(iter(outputs.values()))
        scores = np.asarray(first, dtype=np.float64).reshape(first.shape[0], -1)
        top = scores.argmax(axis=1)
        labels = list(self.hop.labels)
        labels += [str(i) for i in range(len(labels), int(top.max()) + 1)] if len(top) else []
        return Decisions(labels, top.astype(np.int32), scores[np.arange(len(top)), top].astype(np.float32),
                         [self.hop.model], np.zeros(len(top), np.int32), np.ones(len(top), bool))

    async def _delivery(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.2
        while True:
            if not self.backlog and self.up:
                self._backlog_wake.clear()
                await self._backlog_wake.wait()
                continue
            if not self.backlog:
                # Breaker open but nothing queued: probe before letting live traffic through.
                if await self._probe():
                    self.up = True
                    self._stats.link_state = "up"
                    log.info("stage %s: next hop %s back", self.stage_id, self.hop.address)
                    backoff = 0.2
                else:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                continue
            rows = await loop.run_in_executor(self._io, self._queue.peek, self.stage_id, self._max_batch)
            if not rows:
                self._set_backlog(0)
                continue
            try:
                requests = [pb.ModelInferRequest.FromString(payload) for _, _, payload in rows]
                decoded = [decode_inputs(r) for r in requests]
                names = list(decoded[0])
                merged = {n: np.concatenate([d[n] for d in decoded]) for n in names}
                ids = [r.parameters[ROW_IDS].string_param or f"{self._origin}q{seq}"
                       for r, (seq, _, _) in zip(requests, rows, strict=True)]
                decisions = await self._call(merged, ",".join(r for _, r, _ in rows), ids)
            except _HopError as exc:
                if exc.permanent:
                    log.error("stage %s: next hop rejected %d queued escalations: %s", self.stage_id, len(rows),
                              exc.message)
                    await loop.run_in_executor(self._io, self._queue.dead_letter, self.stage_id, rows, exc.message)
                    self._dead_lettered(len(rows))
                    continue
                self._mark_down(exc.message)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except (TensorError, ValueError, KeyError) as exc:  # a corrupt row on disk: keep it aside
                await loop.run_in_executor(self._io, self._queue.dead_letter, self.stage_id, rows, str(exc))
                self._dead_lettered(len(rows))
                continue
            backoff = 0.2
            acked = [(seq, rid, decisions.row(k)) for k, (seq, rid, _) in enumerate(rows)]
            await loop.run_in_executor(self._io, self._queue.ack, self.stage_id, acked)
            if self.on_late_answers is not None:
                self.on_late_answers(ids, decisions)
            self._stats.add("delivered_total", len(rows))
            if not self.up:
                log.info("stage %s: next hop %s back, delivering %d queued escalations", self.stage_id,
                         self.hop.address, self.backlog)
            self.up = True
            self._set_backlog(max(0, self.backlog - len(rows)))

    def _dead_lettered(self, rows: int) -> None:
        self._stats.add("errors_total", rows)
        self._stats.add("dead_letter_total", rows)
        self._stats.dead_letters += rows
        self._set_backlog(max(0, self.backlog - rows))

    async def _probe(self) -> bool:
        assert self._stub is not None
        try:
            reply = await self._stub.ModelReady(pb.ModelReadyRequest(name=self.hop.model,
                                                                     version=self.hop.model_version), timeout=2.0)
            return bool(reply.ready)
        except grpc.aio.AioRpcError:
            return False


class _HopError(Exception):
    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent

