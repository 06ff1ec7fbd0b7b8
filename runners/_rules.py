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

    def label(self, rule: Rule, row: int) -> str:
        """The top class label of one row."""
        index = int(self.top_index[row])
        return rule.labels[index] if index < len(rule.labels) else str(index)


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
