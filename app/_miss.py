"""What a link misses, estimated from its shadow sample: Wilson intervals, the sentence, and the what-if.

A stage settles most rows; a shadow sample of them goes to the next tier anyway (runners/_shadow.py), and
the share of answered shadow rows the next tier classes differently estimates the share of settled rows it
would have caught. The interval is Wilson's score interval for a binomial proportion (it behaves at 0 and
at small counts, where the normal approximation does not). For a rule with a class of interest
(`class_in`, e.g. "vessel"), those disagreements are the settled rows the rest of the cascade says are of
that kind; otherwise they are the overall disagreement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Z95 = 1.959963984540054  # two-sided 95 %


def wilson_interval(successes: float, trials: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (lower, upper) for a proportion; (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    k = min(max(successes, 0.0), trials)
    p = k / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    # At k = 0 (k = n) the exact bound is 0 (1); the formula gives it only up to rounding.
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == trials else min(1.0, centre + half))


@dataclass(frozen=True)
class ShadowCounts:
    """A link's shadow figures, summed over the nodes that run the stage (cumulative)."""

    sent: int = 0
    answered: int = 0
    agreed: int = 0
    shed: int = 0
    rate: float = 0.0
    pairs: dict[tuple[str, str], int] = field(default_factory=dict)
    answered_hist: tuple[int, ...] = ()
    disagreed_hist: tuple[int, ...] = ()
    escalated_answered_hist: tuple[int, ...] = ()
    escalated_disagreed_hist: tuple[int, ...] = ()

    @property
    def disagreed(self) -> int:
        """Answered shadow rows the next tier classed differently."""
        return max(0, self.answered - self.agreed)

    def __add__(self, other: ShadowCounts) -> ShadowCounts:
        pairs = dict(self.pairs)
        for key, count in other.pairs.items():
            pairs[key] = pairs.get(key, 0) + count
        return ShadowCounts(self.sent + other.sent, self.answered + other.answered, self.agreed + other.agreed,
                            self.shed + other.shed, max(self.rate, other.rate), pairs,
                            _add(self.answered_hist, other.answered_hist),
                            _add(self.disagreed_hist, other.disagreed_hist),
                            _add(self.escalated_answered_hist, other.escalated_answered_hist),
                            _add(self.escalated_disagreed_hist, other.escalated_disagreed_hist))


def _add(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    if not a:
        return b
    if not b or len(a) != len(b):
        return a
    return tuple(x + y for x, y in zip(a, b, strict=True))


@dataclass(frozen=True)
class MissEstimate:
    """Estimated share of a link's settled rows that the next tier would have answered differently."""

    rate: float          # point estimate (disagreed / answered)
    low: float           # 95 % Wilson interval
    high: float
    answered: int        # shadow rows it stands on
    disagreed: int

    @property
    def known(self) -> bool:
        """True once any shadow row was answered."""
        return self.answered > 0


def miss_estimate(counts: ShadowCounts) -> MissEstimate:
    """The link's estimated miss rate among settled rows, with its 95 % interval."""
    low, high = wilson_interval(counts.disagreed, counts.answered)
    rate = counts.disagreed / counts.answered if counts.answered else 0.0
    return MissEstimate(rate, low, high, counts.answered, counts.disagreed)


def percent(value: float) -> str:
    """A share as the console prints it: 0.8 %, 12 %, 0.03 %."""
    pct = value * 100.0
    if pct == 0:
        return "0 %"
    if pct < 0.1:
        return f"{pct:.2f} %"
    if pct < 10:
        return f"{pct:.1f} %"
    return f"{pct:.0f} %"


def _range(low: float, high: float) -> str:
    return f"{percent(low).removesuffix(' %')}–{percent(high)}"


def describe_link(upstream: str, downstream: str, settles: float, estimate: MissEstimate,
                  class_in: tuple[str, ...] = ()) -> str:
    """'detector → classifier: settles 63.5 %, of which an estimated 0.8 % (0.3–1.9 %) are vessels the next tier
    would have caught' (the class of interest when the rule has one; overall disagreement otherwise)."""
    head = f"{upstream} → {downstream}: settles {settles * 100:.1f} %"
    if not estimate.known:
        return f"{head}; no shadow rows answered yet"
    what = (f"are {_plural(' or '.join(class_in))} the next tier would have caught" if class_in
            else "the next tier would have answered differently")
    return (f"{head}, of which an estimated {percent(estimate.rate)} ({_range(estimate.low, estimate.high)}) "
            f"{what} — from {estimate.answered:,} shadow rows")


def _plural(word: str) -> str:
    return word if word.endswith("s") else f"{word}s"


def link_label(estimate: MissEstimate) -> str:
    """The short form for a canvas link: 'missed ≈ 0.8 % (0.3–1.9)'."""
    if not estimate.known:
        return ""
    return f"missed ≈ {percent(estimate.rate)} ({_range(estimate.low, estimate.high)})"


def _mass(hist: npt.NDArray[np.float64], low: float, high: float) -> float:
    """Mass of a histogram over [0, 1] between low and high (uniform within a bin)."""
    if len(hist) == 0 or high <= low:
        return 0.0
    edges = np.linspace(0.0, 1.0, len(hist) + 1)
    cdf = np.concatenate([[0.0], np.cumsum(hist)])
    return float(np.interp(min(high, 1.0), edges, cdf) - np.interp(max(low, 0.0), edges, cdf))


@dataclass(frozen=True)
class MissPrediction:
    """Misses per row entering the stage, now and at a proposed threshold, with the rows the numbers stand on."""

    now: float
    now_low: float
    now_high: float
    new: float
    new_low: float
    new_high: float
    shadow_rows: int
    escalated_rows: int
    extrapolated: bool   # the new threshold settles rows no shadow or escalated answer covers


def predict_misses(counts: ShadowCounts, kind: str, current: float, proposed: float,
                   settled_now: float) -> MissPrediction | None:
    """Misses as a share of the stage's input rows at the current and a proposed threshold.

    `kind` is "confidence_below" (settled: score ≥ t) or "score_above" (settled: score ≤ t); `settled_now` is
    the share of input rows the stage settles now. Rows that stay settled are judged by the shadow sample
    (disagreeing share within the region that stays settled); rows a lower bar would newly settle are judged
    by the escalated rows' answers in that band. None without answered shadow rows.
    """
    a = np.asarray(counts.answered_hist, dtype=np.float64)
    d = np.asarray(counts.disagreed_hist, dtype=np.float64)
    if not len(a) or a.sum() <= 0:
        return None
    ea = np.asarray(counts.escalated_answered_hist, dtype=np.float64)
    ed = np.asarray(counts.escalated_disagreed_hist, dtype=np.float64)
    total = a.sum()
    low_edge, high_edge = (proposed, 1.0) if kind == "confidence_below" else (0.0, proposed)
    now_low, now_high = wilson_interval(d.sum(), total)
    now = settled_now * d.sum() / total
    # Rows settled now that stay settled: the shadow sample restricted to the new settled region.
    kept_d = _mass(d, low_edge, high_edge)
    new = settled_now * kept_d / total
    lo, hi = wilson_interval(kept_d, total)
    new_low, new_high = settled_now * lo, settled_now * hi
    extrapolated = False
    escalated_rows = int(ea.sum()) if len(ea) else 0
    # Rows escalated now that the proposed threshold would settle: the band between the two thresholds.
    band = (proposed, current) if kind == "confidence_below" else (current, proposed)
    if band[1] > band[0]:
        band_a = _mass(ea, *band) if len(ea) else 0.0
        band_d = _mass(ed, *band) if len(ed) else 0.0
        escalated_total = ea.sum() if len(ea) else 0.0
        if band_a > 0 and escalated_total > 0:
            share = band_a / escalated_total * (1.0 - settled_now)  # of inputs, in the band (approx.)
            blo, bhi = wilson_interval(band_d, band_a)
            new += share * band_d / band_a
            new_low += share * blo
            new_high += share * bhi
        else:
            extrapolated = True
    return MissPrediction(now, settled_now * now_low, settled_now * now_high, new, new_low, new_high,
                          int(total), escalated_rows, extrapolated)
