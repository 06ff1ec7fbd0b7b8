"""A logarithmic y axis whose labels stay readable at any range.

pyqtgraph's own log axis labels every minor tick of a decade with one significant digit
(`%0.1g` → `9·10¹`): on a narrow range the labels of 7, 8, 9 × 10ᵏ pile on top of each other, and
values such as 95 and 100 both print as `1·10²`. Here the labelled ticks are chosen so that
neighbours are at least `min_gap` pixels apart and every label is distinct: whole decades; else
1, 2, 5 × 10ᵏ; else every 1…9 × 10ᵏ; else (a range inside one step of those) evenly spaced round
values. Unlabelled minor ticks mark the rest of each decade when there is room for them.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg

MIN_GAP_PX = 22.0      # a label's height and some air
MINOR_GAP_PX = 4.0
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def format_tick(value: float, step: float) -> str:
    """A tick label: plain decimals from 0.001 to 9,999 (as many places as `step` needs), else m·10ᵏ."""
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e4:
        places = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
        text = f"{value:.{min(places, 6)}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    exponent = math.floor(math.log10(abs(value)) + 1e-9)
    mantissa = value / 10.0 ** exponent
    digits = max(0, -math.floor(math.log10(step / 10.0 ** exponent) + 1e-9)) if step > 0 else 0
    m = f"{mantissa:.{min(digits, 6)}f}".rstrip("0").rstrip(".") if digits else f"{mantissa:.0f}"
    power = f"10{str(exponent).translate(_SUPERSCRIPT)}"
    return power if m == "1" else f"{m}·{power}"


def _decade_ticks(low: float, high: float, mantissas: tuple[int, ...]) -> list[float]:
    """Values m × 10ᵏ (m in `mantissas`) within [low, high] (log10 units), as log10 values."""
    out = []
    for exponent in range(math.floor(low) - 1, math.ceil(high) + 1):
        for m in mantissas:
            v = exponent + math.log10(m)
            if low - 1e-9 <= v <= high + 1e-9:
                out.append(v)
    return out


def _fits(ticks: list[float], low: float, high: float, length: float, gap: float) -> bool:
    if len(ticks) < 2:
        return True
    pixels = np.diff(np.asarray(ticks)) / (high - low) * length
    return bool(pixels.min() >= gap)


def log_ticks(low: float, high: float, length: float, min_gap: float = MIN_GAP_PX
              ) -> tuple[list[tuple[float, str]], list[float]]:
    """Labelled ticks ((log10 value, label), …) and unlabelled minor ticks for the range [low, high] in log10
    units on an axis `length` pixels long: at least two labels where the axis has room for two, neighbours
    `min_gap` pixels apart or more, no two labels alike."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low or length <= 0:
        return [], []
    room = max(1, int(length // min_gap) + 1)          # how many labels fit at all
    labelled: list[float] = []
    step_of: dict[float, float] = {}
    decades = _decade_ticks(low, high, (1,))
    if not _fits(decades, low, high, length, min_gap):
        # many decades on a short axis: every 2nd, 3rd, 5th… decade
        for stride in (2, 3, 4, 5, 10, 20, 50, 100):
            ticks = [v for v in decades if round(v) % stride == 0]
            if _fits(ticks, low, high, length, min_gap):
                labels = [(v, format_tick(10.0 ** v, 10.0 ** v)) for v in ticks]
                return labels, []
        return [], []
    for mantissas in ((1,), (1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = _decade_ticks(low, high, mantissas)
        if not _fits(ticks, low, high, length, min_gap):
            break
        labelled = ticks
        for v in ticks:   # the step a label must resolve: its decade's unit for m × 10ᵏ
            step_of[v] = 10.0 ** math.floor(v + 1e-9)
        if len(ticks) >= 2:
            if len(ticks) >= min(room, 3) or mantissas[-1] == 9:
                break
    if len(labelled) < 2 and room >= 2:
        # a range narrower than the decade steps: evenly spaced round values in linear terms
        v_low, v_high = 10.0 ** low, 10.0 ** high
        span = v_high - v_low
        best: list[float] = []
        exponent = math.floor(math.log10(span))
        for e in range(exponent + 1, exponent - 4, -1):
            for m in (5, 2, 1):
                step = m * 10.0 ** e
                values = np.arange(math.ceil(v_low / step - 1e-9), math.floor(v_high / step + 1e-9) + 1) * step
                values = values[values > 0]
                ticks = [math.log10(v) for v in values]
                # every value of this step, or every other one (6.5 and 7.5 where 6.5, 7, 7.5 crowd)
                fitting = [sub for sub in (ticks, ticks[::2]) if len(sub) >= 2 and _fits(sub, low, high, length,
                                                                                          min_gap)]
                if fitting:
                    best = fitting[0]
                    step_of = {t: step for t in best}
                elif best:
                    break
            else:
                continue
            break
        if best:
            labelled = best
    if not labelled:
        # an axis too short for two labels: one, a round value near the middle
        v_low, v_high = 10.0 ** low, 10.0 ** high
        step = 10.0 ** math.floor(math.log10(v_high - v_low))
        middle = (v_low + v_high) / 2
        value = round(middle / step) * step
        if not v_low <= value <= v_high:
            value = middle
        labelled = [math.log10(value)]
        step_of = {labelled[0]: step}
    labels: list[tuple[float, str]] = []
    for v in labelled:
        labels.append((v, format_tick(10.0 ** v, step_of.get(v, 10.0 ** math.floor(v + 1e-9)))))
    texts = [t for _, t in labels]
    if len(set(texts)) != len(texts):   # never two alike: add a digit until they differ
        for extra in range(1, 6):
            labels = [(v, format_tick(10.0 ** v, step_of.get(v, 1.0) / 10.0 ** extra)) for v in labelled]
            if len({t for _, t in labels}) == len(labels):
                break
    minor = [v for v in _decade_ticks(low, high, (1, 2, 3, 4, 5, 6, 7, 8, 9))
             if all(abs(v - w) > 1e-9 for w in labelled)]
    if not _fits(sorted([*minor, *labelled]), low, high, length, MINOR_GAP_PX):
        minor = []
    return labels, minor


class LogAxisItem(pg.AxisItem):
    """A pyqtgraph axis that, in log mode, labels ticks with `log_ticks` (readable at any range)."""

    def __init__(self, orientation: str = "left", **kwargs: object) -> None:
        super().__init__(orientation, **kwargs)
        self._labels: dict[float, str] = {}

    def tickValues(self, minVal: float, maxVal: float, size: float) -> list[tuple[float, list[float]]]:
        """Major (labelled) and minor ticks: `log_ticks` in log mode, pyqtgraph's own otherwise."""
        if not self.logMode:
            return super().tickValues(minVal, maxVal, size)   # type: ignore[no-any-return]
        low, high = sorted((minVal, maxVal))
        labels, minor = log_ticks(low, high, size)
        self._labels = {round(v, 9): text for v, text in labels}
        levels = [(1.0, [v for v, _ in labels])]
        if minor:
            levels.append((0.1, minor))
        return levels

    def tickStrings(self, values: list[float], scale: float, spacing: float) -> list[str]:
        """The labels `tickValues` chose (blank for minor ticks)."""
        if not self.logMode:
            return super().tickStrings(values, scale, spacing)   # type: ignore[no-any-return]
        return [self._labels.get(round(v, 9), "") for v in values]
