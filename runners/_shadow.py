"""Shadow sampling: a budgeted sample of the rows a stage settles goes to its next hop anyway, to estimate misses.

A settled row is never checked by a heavier model, so a confident miss is invisible. With a shadow rate r
(Budget.shadow_rate, default 1 %), each settled row is picked with probability r (geometric skips, so a
request with nothing picked costs one comparison) and sent to the next hop as its own request, marked with
the `tierdeck.shadow` parameter. The next hop runs it through the rest of the chain like any request but
keeps it out of every count (as the deployer's smoke inference), and its own escalations of a shadow row
go on in shadow mode. The answer is compared with the settled class: per link, rows sent, answered,
agreed, shed, the (settled → next-tier) pairs that disagree, and histograms over the rule's score of the
answered and of the disagreeing rows (the what-if reads those).

Lowest priority, never in the way of real escalations: the caller never waits for a shadow row (it is
picked after the stage decided and sent from a task of its own); one shadow call per link is in flight at
a time, carrying up to MAX_CALL_ROWS rows (it waits up to LINGER_S for them: few calls, small cost), and it
is sent only while no real escalation waits in the forwarder; rows are dropped (counted in
`shadow_shed_total`) when the link is down or has a store-and-forward backlog, when the buffer is full,
or when an escalation budget has less than half its burst left after them (they never take tokens a real
escalation could need). Shadow rows are never stored in the store-and-forward queue.

Escalated rows whose escalation depended only on the threshold are compared too (their answers come back
anyway): that tells the what-if what a lower threshold would let through.

Disagreeing shadow rows of each answer are handed, together, to `on_disagreement` (the hard-example ledger's
hook) with their inputs, this stage's scores and answers, the next tier's answers, the stage version and the
time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import numpy as np

from runners._proto import grpc_predict_v2_pb2 as pb
from runners._proto import tierdeck_control_pb2 as ctl
from runners._rules import ESCALATE, Decisions, RuleOutcome, TokenBucket
from runners._tensors import ReceivedRequest, TensorError, encode_inputs

if TYPE_CHECKING:
    from runners._forward import Forwarder
    from runners._telemetry import StageStats

log = logging.getLogger("tierdeck.shadow")

# Request parameter of a shadow request: answered through the whole rest of the chain, kept out of every count.
SHADOW = "tierdeck.shadow"
DEFAULT_RATE = 0.01
BINS = 100           # histogram bins over the rule's score in [0, 1]
MAX_BUFFERED = 256   # sampled rows waiting for the link's one shadow call; more are shed
MAX_BUFFERED_BYTES = 16 << 20  # and at most this many bytes of their inputs (large images: fewer rows wait)
MAX_CALL_ROWS = 64   # rows per shadow call
WAIT_FOR_REAL_S = 0.002  # while real escalations wait in the forwarder, look again after this
LINGER_S = 0.5       # a shadow call waits this long for MAX_CALL_ROWS rows: fewer calls, the cost stays small


def shadow_rate(budget: ctl.Budget) -> float:
    """The budget's shadow rate: unset = DEFAULT_RATE, clamped to [0, 1]."""
    rate = budget.shadow_rate if budget.HasField("shadow_rate") else DEFAULT_RATE
    return min(1.0, max(0.0, rate)) if math.isfinite(rate) else 0.0


def is_shadow(request: pb.ModelInferRequest | ReceivedRequest) -> bool:
    """True for a request another node sent in shadow mode."""
    return SHADOW in request.parameters and request.parameters[SHADOW].bool_param


@dataclass(frozen=True)
class Disagreements:
    """Shadow rows of one answer that the next tier classed differently (what the hard-example ledger records)."""

    stage_id: str
    stage_version: str
    row_ids: list[str]                 # "shadow:<stage>:<n>", unique per sampler
    inputs: dict[str, np.ndarray]      # these rows, batch dimension first
    scores: np.ndarray                 # this stage's rule output for them
    score_labels: tuple[str, ...]      # the rule's labels (the columns of `scores`)
    settled: Decisions                 # this stage's (settled) answers, which the callers kept
    answered: Decisions                # the next tier's answers
    unix_ms: int


DisagreementHook = Callable[[Disagreements], None]


@dataclass
class _Row:
    inputs: dict[str, np.ndarray]
    settled: str
    confidence: float
    score: float
    scores: np.ndarray
    version: str
    labels: tuple[str, ...]


@dataclass
class ShadowBook:
    """A stage's shadow counts (cumulative for the agent's life, across policy changes and versions)."""

    rate: float = 0.0
    pairs: dict[tuple[str, str], int] = field(default_factory=dict)
    answered: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    disagreed: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    escalated_answered: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    escalated_disagreed: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))

    def fill(self, out: ctl.ShadowTelemetry) -> None:
        """Write the counts into a telemetry message."""
        out.rate = self.rate
        out.bins = BINS
        for (settled, answered), count in sorted(self.pairs.items()):
            out.disagreements.add(settled=settled, answered=answered, count=count)
        out.answered.extend(self.answered.tolist())
        out.disagreed.extend(self.disagreed.tolist())
        out.escalated_answered.extend(self.escalated_answered.tolist())
        out.escalated_disagreed.extend(self.escalated_disagreed.tolist())


def _bin(score: float) -> int:
    return min(BINS - 1, max(0, int(score * BINS))) if math.isfinite(score) else 0


class ShadowSampler:
    """One stage's shadow sampling; lives on the agent's event loop, kept in the stage's StageStats."""

    def __init__(self, stats: StageStats, seed: int | None = None) -> None:
        self.stats = stats
        self.book = ShadowBook()
        self.on_disagreement: DisagreementHook | None = None
        self._random = random.Random(seed)
        self._skip = 0          # settled rows to pass over before the next pick
        self._log_fail = 0.0    # log(1 - rate), for the geometric skips
        self._buffer: list[_Row] = []
        self._full = asyncio.Event()   # MAX_CALL_ROWS rows wait: send without lingering
        self._next_id = 0
        self._task: asyncio.Task[None] | None = None
        self.set_rate(0.0)

    @property
    def rate(self) -> float:
        """The shadow rate in force."""
        return self.book.rate

    def set_rate(self, rate: float) -> None:
        """Change the rate (policy update); 0 turns sampling off and sheds nothing already buffered."""
        self.book.rate = rate
        self._log_fail = math.log1p(-rate) if 0.0 < rate < 1.0 else 0.0
        self._skip = self._gap()

    def _gap(self) -> int:
        """Settled rows skipped before the next pick (geometric with success probability `rate`)."""
        rate = self.book.rate
        if rate >= 1.0:
            return 0
        if rate <= 0.0:
            return 2**62
        return int(math.log(1.0 - self._random.random()) / self._log_fail)

    # -- the stage's hot path -------------------------------------------------------------------------
    def sample(self, forwarder: Forwarder | None, bucket: TokenBucket | None, feeds: dict[str, np.ndarray],
               outcome: RuleOutcome, decisions: Decisions, output: np.ndarray, version: str,
               labels: tuple[str, ...] = ()) -> None:
        """Pick settled rows of one request and queue them for the next hop; never waits, never raises."""
        if forwarder is None or self.book.rate <= 0.0:
            return
        settled = outcome.action != ESCALATE
        if self._skip >= len(settled):  # the usual case: nothing picked in this request
            self._skip -= int(np.count_nonzero(settled))
            return
        settled_rows = np.flatnonzero(settled)
        if self._skip >= len(settled_rows):
            self._skip -= len(settled_rows)
            return
        picks: list[int] = []
        position = self._skip
        while position < len(settled_rows):
            picks.append(int(settled_rows[position]))
            position += 1 + self._gap()
        self._skip = position - len(settled_rows)
        room = MAX_BUFFERED - len(self._buffer)
        row_bytes = sum(a[0].nbytes for a in feeds.values()) if picks else 0
        if row_bytes:  # a sample of large inputs is bounded by its bytes too
            held = sum(a.nbytes for row in self._buffer for a in row.inputs.values())
            room = min(room, (MAX_BUFFERED_BYTES - held) // row_bytes)
        if not forwarder.up or forwarder.backlog:  # shed first: a down or backed-up link gets no shadow rows
            room = 0
        if room < len(picks):
            self.stats.add("shadow_shed_total", len(picks) - max(room, 0))
            picks = picks[:max(room, 0)]
        if picks and bucket is not None and not _spare_tokens(bucket, len(picks)):
            self.stats.add("shadow_shed_total", len(picks))
            picks = []
        scores = np.asarray(output)
        for row in picks:  # each row copied: a view would keep the whole request (often its 512 KiB message) alive
            self._buffer.append(_Row({n: a[row:row + 1].copy() for n, a in feeds.items()},
                                     decisions.labels[decisions.label[row]], float(decisions.confidence[row]),
                                     float(outcome.score[row]), scores[row].copy() if scores.ndim else scores.copy(),
                                     version, labels))
        if len(self._buffer) >= MAX_CALL_ROWS:
            self._full.set()
        if self._buffer and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._send(forwarder), name="shadow-sender")

    def note_escalated(self, rule_labels: tuple[str, ...], class_in: frozenset[str], outcome: RuleOutcome,
                       sent: np.ndarray, answers: Decisions) -> None:
        """Compare the next hop's final answers for escalated rows with this stage's class (threshold-only ones)."""
        if self.book.rate <= 0.0 or not len(sent):
            return
        top = outcome.top_index[sent]
        names = list(rule_labels) + [str(i) for i in range(len(rule_labels), int(top.max()) + 1)]
        index = {name: i for i, name in enumerate(names)}
        theirs = np.array([index.get(label, -1) for label in answers.labels], np.int64)[answers.label]
        scores = outcome.score[sent]
        in_class = np.array([name in class_in for name in names])
        counted = np.asarray(answers.final, bool) & ~in_class[top] & np.isfinite(scores)
        bins = np.clip((scores[counted] * BINS).astype(np.int64), 0, BINS - 1)
        self.book.escalated_answered += np.bincount(bins, minlength=BINS)
        self.book.escalated_disagreed += np.bincount(bins[top[counted] != theirs[counted]], minlength=BINS)

    # -- the link's shadow sender ----------------------------------------------------------------------
    async def _send(self, forwarder: Forwarder) -> None:
        try:
            while self._buffer:
                if len(self._buffer) < MAX_CALL_ROWS:  # linger: one call for many rows
                    self._full.clear()
                    try:
                        await asyncio.wait_for(self._full.wait(), LINGER_S)
                    except TimeoutError:
                        pass
                if not forwarder.up or forwarder.backlog:
                    self.stats.add("shadow_shed_total", len(self._buffer))
                    self._buffer.clear()
                    break
                if forwarder._pending:  # real escalations first
                    await asyncio.sleep(WAIT_FOR_REAL_S)
                    continue
                rows, self._buffer = self._buffer[:MAX_CALL_ROWS], self._buffer[MAX_CALL_ROWS:]
                self.stats.add("shadow_sent_total", len(rows))
                names = list(rows[0].inputs)
                merged = {n: np.concatenate([r.inputs[n] for r in rows]) for n in names}
                answers = await shadow_call(forwarder, merged)
                if answers is not None:
                    self._compare(forwarder.stage_id, rows, answers)
        except asyncio.CancelledError:
            raise
        except Exception:  # a shadow row must never take the stage down
            log.exception("stage %s: shadow sampling failed", forwarder.stage_id)
            self._buffer.clear()
        finally:
            self._task = None

    def _compare(self, stage_id: str, rows: list[_Row], answers: Decisions) -> None:
        answered = agreed = 0
        differ: list[int] = []
        for k, row in enumerate(rows):
            if k >= len(answers) or not answers.final[k]:
                continue
            label = answers.labels[answers.label[k]]
            answered += 1
            b = _bin(row.score)
            self.book.answered[b] += 1
            if label == row.settled:
                agreed += 1
                continue
            self.book.disagreed[b] += 1
            key = (row.settled, label)
            self.book.pairs[key] = self.book.pairs.get(key, 0) + 1
            differ.append(k)
        self.stats.add("shadow_answered_total", answered)
        self.stats.add("shadow_agreed_total", agreed)
        hook = self.on_disagreement
        if hook is not None and differ:
            try:
                hook(self._disagreements(stage_id, [rows[k] for k in differ], answers.take(np.asarray(differ))))
            except Exception:  # the ledger's problem, not the stage's
                log.exception("stage %s: recording disagreeing shadow rows failed", stage_id)

    def _disagreements(self, stage_id: str, rows: list[_Row], answered: Decisions) -> Disagreements:
        names = list(rows[0].inputs)
        table = sorted({r.settled for r in rows})
        settled = Decisions(table, np.asarray([table.index(r.settled) for r in rows], np.int32),
                            np.asarray([r.confidence for r in rows], np.float32), [stage_id],
                            np.zeros(len(rows), np.int32), np.ones(len(rows), bool))
        first = self._next_id
        self._next_id += len(rows)
        return Disagreements(stage_id, rows[0].version, [f"shadow:{stage_id}:{first + i}" for i in range(len(rows))],
                             {n: np.concatenate([r.inputs[n] for r in rows]) for n in names},
                             np.stack([r.scores for r in rows]), rows[0].labels, settled, answered,
                             int(time.time() * 1000))

    async def async_stop(self) -> None:
        """Stop sending (agent shutdown or link rewired); what is buffered is dropped, counted as shed."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._buffer:
            self.stats.add("shadow_shed_total", len(self._buffer))
            self._buffer.clear()


def _spare_tokens(bucket: TokenBucket, rows: int) -> bool:
    """Take tokens for shadow rows only when the budget keeps at least half its burst for real escalations."""
    if bucket.rate <= 0:
        return True
    bucket.take(0)  # refill to now
    if bucket.tokens - rows < bucket.burst / 2:
        return False
    bucket.tokens -= rows
    return True


async def shadow_call(forwarder: Forwarder, inputs: dict[str, np.ndarray]) -> Decisions | None:
    """Send rows to the forwarder's next hop in shadow mode (no batching with real escalations, no queue,
    no ids, no counts); the answers, or None when the link is down or the call failed."""
    if not forwarder.up or forwarder.backlog or forwarder._stub is None:
        return None
    try:
        names = await forwarder._hop_input_names(list(inputs))
        if len(names) != len(inputs):
            return None
        request = pb.ModelInferRequest(model_name=forwarder.hop.model, model_version=forwarder.hop.model_version,
                                       id="shadow")
        request.parameters["tierdeck.escalated_from"].string_param = forwarder.stage_id
        request.parameters[SHADOW].bool_param = True
        request.parameters["tierdeck.priority"].string_param = "shadow"
        encode_inputs(request, list(zip(names, inputs.values(), strict=True)))
        response = await forwarder._stub.ModelInfer(request, timeout=forwarder.timeout)
        return forwarder._decisions(response)
    except (grpc.aio.AioRpcError, TensorError, ValueError, IndexError) as exc:
        log.debug("stage %s: shadow call to %s failed: %s", forwarder.stage_id, forwarder.hop.address, exc)
        return None


def sampler_for(stats: StageStats) -> ShadowSampler:
    """The stage's sampler (made on first use; it lives as long as the stage's stats)."""
    if stats.shadow is None:
        stats.shadow = ShadowSampler(stats)
    return stats.shadow
