"""Readable logarithmic axes: labels that never repeat and never overlap, at any range (the "Energy per
inference" axis used to pile `9·10¹ 7·10¹ …` on top of each other when the range was narrow)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot
from test_widgets_support import dispose

from widgets._axes import MIN_GAP_PX, LogAxisItem, format_tick, log_ticks
from widgets._dashboard import PLOTS, PlotPanel, Series

_DIGITS = str.maketrans("⁻⁰¹²³⁴⁵⁶⁷⁸⁹", "-0123456789")


def read_label(text: str) -> float:
    """A tick label back as a number ("6.5·10⁻⁴", "10³", "0.02", "1,000" are all read)."""
    text = text.replace(",", "")
    if "10" in text and any(c in text for c in "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"):
        mantissa, _, power = text.rpartition("10")
        return float(mantissa.rstrip("·") or 1.0) * 10.0 ** int(power.translate(_DIGITS))
    return float(text)


def assert_readable(labels: list[tuple[float, str]], low: float, high: float, length: float) -> None:
    texts = [t for _, t in labels]
    assert len(set(texts)) == len(texts), f"repeated labels {texts}"
    positions = [(v - low) / (high - low) * length for v, _ in labels]
    assert all(0 <= p <= length + 1e-6 for p in positions)
    gaps = np.diff(sorted(positions))
    assert (gaps >= MIN_GAP_PX).all(), f"labels {texts} only {gaps.min() if len(gaps) else 0:.1f} px apart"
    for v, text in labels:
        assert read_label(text) == pytest.approx(10.0 ** v, rel=1e-9), (text, 10.0 ** v)


RANGES = [
    (1.0, 2.12),                              # one decade, as the dashboard sets it: 10 … 132 mJ
    (math.log10(70), math.log10(95)),         # the reported case: values of 70 … 95 on a narrow range
    (math.log10(88), math.log10(93)),         # narrower still
    (-3.2, -3.1),                             # small values
    (4.01, 4.02),                             # large values, a hair of a range
    (-1.0, 1.12),
    (-6.0, 3.0),                              # many decades
    (0.0, 12.0),
]


@pytest.mark.parametrize("length", [60.0, 150.0, 400.0])
@pytest.mark.parametrize(("low", "high"), RANGES)
def test_log_tick_labels_never_repeat_or_overlap(low: float, high: float, length: float) -> None:
    labels, minor = log_ticks(low, high, length)
    assert labels, "at least one label"
    if length >= 2 * MIN_GAP_PX + 10:
        assert len(labels) >= 2, f"room for two labels, got {labels}"
    assert_readable(labels, low, high, length)
    assert not {round(v, 9) for v in minor} & {round(v, 9) for v, _ in labels}


def test_labels_are_plain_numbers_in_the_everyday_range() -> None:
    assert format_tick(70.0, 10.0) == "70"
    assert format_tick(0.05, 0.01) == "0.05"
    assert format_tick(2.5, 0.5) == "2.5"
    assert format_tick(1e-5, 1e-5) == "10⁻⁵"
    assert format_tick(6.5e-4, 5e-5) == "6.5·10⁻⁴"
    assert format_tick(2e4, 1e4) == "2·10⁴"
    labels, _ = log_ticks(1.0, 2.12, 150)
    assert [t for _, t in labels] == ["10", "20", "50", "100"]


@pytest.fixture
def energy_panel(qapp: QApplication, qtbot: QtBot) -> Iterator[PlotPanel]:
    spec = next(p for p in PLOTS if p.key == "energy")
    panel = PlotPanel(spec)
    panel.resize(420, 260)
    panel.show()
    qtbot.waitExposed(panel)
    yield panel
    dispose(panel)


@pytest.mark.parametrize("mj", [(88.0, 93.0), (70.0, 95.0), (0.011, 0.012), (0.5, 4000.0)])
def test_the_energy_axis_on_screen_labels_a_narrow_range_readably(energy_panel: PlotPanel, qapp: QApplication,
                                                                   mj: tuple[float, float]) -> None:
    axis = energy_panel.plot.getPlotItem().getAxis("left")
    assert isinstance(axis, LogAxisItem) and axis.logMode
    t = np.linspace(1000.0, 1060.0, 120)
    v = np.linspace(mj[0], mj[1], 120) / 1000.0       # joules; the panel shows mJ
    energy_panel.show_series([Series("detect", t, v, "#4fc3f7")], 1000.0, 1060.0)
    qapp.processEvents()
    low, high = axis.range
    levels = axis.tickValues(low, high, axis.height())
    major = levels[0][1]
    strings = axis.tickStrings(major, 1.0, levels[0][0])
    assert_readable(list(zip(major, strings, strict=True)), low, high, axis.height())
    assert len(strings) >= 2
    for level in levels[1:]:
        assert all(s == "" for s in axis.tickStrings(level[1], 1.0, level[0])), "minor ticks carry no label"
    image = energy_panel.grab().toImage()
    assert not image.isNull()
