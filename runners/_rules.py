"""Escalation rules, budgets and per-row decisions: pure functions over a stage's output."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from runners._proto import tierdeck_control_pb2 as ctl

SETTLED, ESCALATE, DROPPED = 0, 1, 2
# What a rule's output holds (EscalationRule.scores; "" means probabilities).
SCORES = ("probabilities", "logits", "raw")


@dataclass(frozen=True)
class Rule:
    """A stage's escalation rule; see EscalationRule in tierdeck_control.proto."""

    output: str
    labels: tuple[str, ...] = ()
    confidence_below: float | None = None
    class_in: frozenset[str] = frozenset()
    score_above: float | None = None
    drop_class: frozenset[str] = frozenset()
    scores: str = "probabilities"

    @classmethod
    def from_pb(cls, pb: ctl.EscalationRule) -> Rule:
        """Build a Rule from its protobuf form."""
        return cls(
            output=pb.output,
            labels=tuple(pb.labels),
            confidence_below=pb.confidence_below if pb.HasField("confidence_below") else None,
            class_in=frozenset(pb.class_in),
            score_above=pb.score_above if pb.HasField("score_above") else None,
            drop_class=frozenset(pb.drop_class),
            scores=pb.scores or "probabilities",
        )

    @property
    def score_kind(self) -> str:
        """Which per-row quantity the rule's threshold is compared with."""
        return "score" if self.score_above is not None and self.confidence_below is None else "confidence"

    def problems(self, output_names: list[str], classes: int | None) -> list[str]:
        """Reasons this rule cannot work on a model with these outputs (empty when it can)."""
        found = []
        if self.output not in output_names:
            found.append(f"rule output '{self.output}' is not an output of the model (outputs: {output_names})")
        if classes is not None and self.labels and len(self.labels) != classes:
            found.append(f"rule has {len(self.labels)} labels but output '{self.output}' has {classes} classes")
        unknown = (self.class_in | self.drop_class) - set(self.labels)
        if unknown:
            found.append(f"rule refers to unknown classes {sorted(unknown)} (labels: {list(self.labels)})")
        for name, value in (("confidence_below", self.confidence_below), ("score_above", self.score_above)):
            if value is not None and not math.isfinite(value):
                found.append(f"rule {name} must be a finite number")
        if self.scores not in SCORES:
            found.append(f"rule scores '{self.scores}' is not one of {', '.join(SCORES)}")
        elif self.scores == "raw" and self.confidence_below is not None:
            found.append("rule confidence_below compares a probability, but the rule says its output is raw "
                         "scores: use score_above, or say scores 'probabilities' or 'logits'")
        # A rule with no condition is fine: the stage labels its answers and settles every row (a last tier).
        return found


@dataclass(frozen=True)
class RuleOutcome:
    """Per-row result of a rule: action (SETTLED/ESCALATE/DROPPED), top class, its probability, the score."""

    action: np.ndarray
    top_index: np.ndarray
    top_prob: np.ndarray
    score: np.ndarray


def evaluate(rule: Rule, output: np.ndarray) -> RuleOutcome:
    """Apply the rule to every row of the stage output ([N] or [N, C])."""
    values = np.asarray(output, dtype=np.float64)
    values = values.reshape(values.shape[0], -1) if values.ndim != 1 else values.reshape(-1, 1)
    if rule.scores == "logits" and values.shape[1]:
        values = softmax(values)
    # NaN rows must not win argmax silently: they escalate (nothing local can be trusted).
    finite = np.isfinite(values).all(axis=1)
    safe = np.where(np.isfinite(values), values, -np.inf)
    top_index = safe.argmax(axis=1) if values.shape[1] else np.zeros(len(values), dtype=np.int64)
    top_prob = safe.max(axis=1) if values.shape[1] else np.zeros(len(values))
    top_prob = np.where(finite, top_prob, 0.0)
    score = top_prob
    escalate = np.zeros(len(values), dtype=bool)
    if rule.confidence_below is not None:
        escalate |= top_prob < rule.confidence_below
    if rule.score_above is not None:
        escalate |= score > rule.score_above
    labels = np.array([*rule.labels, ""], dtype=object)
    top_labels = labels[np.minimum(top_index, len(rule.labels))]
    if rule.class_in:
        escalate |= np.isin(top_labels, list(rule.class_in))
    escalate |= ~finite
    dropped = np.isin(top_labels, list(rule.drop_class)) & finite if rule.drop_class else np.zeros_like(escalate)
    action = np.where(dropped, DROPPED, np.where(escalate, ESCALATE, SETTLED)).astype(np.int8)
    return RuleOutcome(action=action, top_index=top_index, top_prob=top_prob.astype(np.float32), score=score)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [N, C] logits (NaN/Inf rows stay non-finite, so they escalate)."""
    with np.errstate(invalid="ignore", over="ignore"):
        shifted = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        return e / e.sum(axis=1, keepdims=True)


def not_probabilities(output: np.ndarray) -> str:
    """Why these values cannot be class probabilities ("" when they can): integers, or outside 0..1."""
    values = np.asarray(output)
    if values.dtype.kind in "iub":
        return f"it holds {values.dtype} values (class ids?), not probabilities"
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size and (finite.min() < -1e-4 or finite.max() > 1 + 1e-4):
        return f"its values reach {float(finite.min()):.3g}..{float(finite.max()):.3g}, outside 0..1"
    return ""


@dataclass
class TokenBucket:
    """Escalation budget: at most `rate` escalations per second, bursts up to `burst`; rate 0 = unlimited."""

    rate: float
    burst: float = 0.0
    tokens: float = field(default=0.0, init=False)
    stamp: float = field(default_factory=time.monotonic, init=False)

    def __post_init__(self) -> None:
        self.burst = self.burst or max(1.0, self.rate)
        self.tokens = self.burst

    def take(self, wanted: int, now: float | None = None) -> int:
        """Take up to `wanted` tokens; returns how many were granted."""
        if self.rate <= 0:
            return wanted
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        granted = min(wanted, int(self.tokens))
        self.tokens -= granted
        return granted


@dataclass(frozen=True)
class Decision:
    """The answer for one input row: which class, how sure, which stage decided, final or provisional."""

    label: str
    confidence: float
    stage: str
    final: bool


@dataclass
class Decisions:
    """The answers for a batch of rows as arrays (no object per row): label and deciding stage are indices into
    small tables of names, confidence and final are plain arrays."""

    labels: list[str]
    label: np.ndarray        # int32 index into `labels`, per row
    confidence: np.ndarray   # float32
    stages: list[str]
    stage: np.ndarray        # int32 index into `stages`
    final: np.ndarray        # bool

    def __len__(self) -> int:
        return len(self.label)

    @classmethod
    def settled(cls, rule: Rule, outcome: RuleOutcome, stage_id: str) -> Decisions:
        """This stage's own answers: its top class per row; final where the row does not escalate."""
        labels = list(rule.labels)
        top = outcome.top_index.astype(np.int32)
        beyond = np.unique(top[top >= len(labels)])
        if len(beyond):  # more classes than labels: name them by index
            extra = {int(i): len(labels) + k for k, i in enumerate(beyond)}
            labels += [str(int(i)) for i in beyond]
            top = np.where(top >= len(rule.labels), [extra.get(int(i), 0) for i in top], top).astype(np.int32)
        return cls(labels, top, outcome.top_prob.astype(np.float32), [stage_id],
                   np.zeros(len(top), np.int32), outcome.action != ESCALATE)

    @classmethod
    def from_columns(cls, labels: np.ndarray, confidence: np.ndarray, stages: np.ndarray,
                     final: np.ndarray) -> Decisions:
        """From the four decision tensors of an OIP answer (labels and stages as BYTES or text)."""
        label_table, label = np.unique(np.asarray(labels).reshape(-1), return_inverse=True)
        stage_table, stage = np.unique(np.asarray(stages).reshape(-1), return_inverse=True)
        return cls([_text(x) for x in label_table], label.astype(np.int32),
                   np.asarray(confidence, np.float32).reshape(-1), [_text(x) for x in stage_table],
                   stage.astype(np.int32), np.asarray(final, bool).reshape(-1))

    def take(self, rows: np.ndarray | slice) -> Decisions:
        """These rows only (the tables are shared)."""
        return Decisions(self.labels, self.label[rows], self.confidence[rows], self.stages, self.stage[rows],
                         self.final[rows])

    def assign(self, rows: np.ndarray, other: Decisions) -> None:
        """Overwrite `rows` with `other`'s answers (row k of other goes to rows[k]); tables are merged."""
        self.label[rows] = _merge_table(self.labels, other.labels)[other.label]
        self.stage[rows] = _merge_table(self.stages, other.stages)[other.stage]
        self.confidence[rows] = other.confidence
        self.final[rows] = other.final

    @classmethod
    def concat(cls, parts: list[Decisions]) -> Decisions:
        """One batch from several (in order)."""
        labels: list[str] = []
        stages: list[str] = []
        label = [_merge_table(labels, p.labels)[p.label] for p in parts]
        stage = [_merge_table(stages, p.stages)[p.stage] for p in parts]
        return cls(labels, np.concatenate(label).astype(np.int32), np.concatenate([p.confidence for p in parts]),
                   stages, np.concatenate(stage).astype(np.int32), np.concatenate([p.final for p in parts]))

    def row(self, i: int) -> Decision:
        """One row as a Decision (for logs and the delivered-answers table)."""
        return Decision(self.labels[self.label[i]], float(self.confidence[i]), self.stages[self.stage[i]],
                        bool(self.final[i]))

    def outputs(self) -> dict[str, object]:
        """The four decision tensors (labels and stages as table-indexed BYTES, encoded without per-row objects)."""
        return {"decision_label": IndexedBytes(self.labels, self.label), "decision_confidence": self.confidence,
                "decision_stage": IndexedBytes(self.stages, self.stage), "decision_final": self.final}


@dataclass(frozen=True)
class IndexedBytes:
    """A BYTES tensor given as a table of strings and an index per element (see runners._tensors)."""

    table: list[str]
    index: np.ndarray


def _merge_table(into: list[str], names: list[str]) -> np.ndarray:
    """Index of each of `names` in `into` (appending the new ones), as an array to map indices through."""
    position = {n: i for i, n in enumerate(into)}
    out = []
    for n in names:
        if n not in position:
            position[n] = len(into)
            into.append(n)
        out.append(position[n])
    return np.asarray(out, dtype=np.int32) if out else np.zeros(0, np.int32)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
