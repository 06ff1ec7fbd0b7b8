"""A console watching a quiet fleet does no work on a timer that would not change what it shows (issue 15): no
caret blinks in a text field nobody typed in, the fleet panel repaints only rows whose words moved on, the canvas
stops refreshing its live overlay once nothing arrives and its sparklines have aged out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtWidgets import QApplication, QLineEdit
from pytestqt.qtbot import QtBot
from test_app_support import synthetic_sample
from test_widgets_support import LiveConsole, live_console

from app.core import FleetEvent, FleetEventKind, NodeSnapshot, NodeState
from widgets import _format as fmt
from widgets._canvas_live import SPARK_S

HOUR_MS = 3_600_000
NOW_MS = 1_800_000_000_000


@pytest.fixture
def quiet(qapp: QApplication, tmp_path: Path) -> Iterator[LiveConsole]:
    """A started console with no agents: its nodes are put into the fleet model as the core's events would."""
    with live_console(tmp_path, {}) as live:
        yield live


def add_node(live: LiveConsole, node_id: str, name: str, since_ms: int) -> NodeSnapshot:
    """A node the fleet model learns of, online since `since_ms` (the event the core sends)."""
    node = NodeSnapshot(node_id, node_id, name, "device", "127.0.0.1:1", state=NodeState.ONLINE,
                        state_since_ms=since_ms)
    live.console.fleet._apply(FleetEvent(FleetEventKind.ADDED, node))
    return node


def test_the_console_opens_on_the_canvas_with_no_caret_blinking(quiet: LiveConsole, qtbot: QtBot) -> None:
    window = quiet.window(qtbot)
    qtbot.waitUntil(lambda: window.focusWidget() is not None, timeout=5_000)
    assert window.focusWidget() is window.canvas
    assert not isinstance(QApplication.focusWidget(), QLineEdit), "a caret would blink (and repaint) forever"


def test_the_fleet_panel_repaints_only_rows_whose_words_moved_on(quiet: LiveConsole, qtbot: QtBot,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"now": NOW_MS}
    monkeypatch.setattr(fmt, "now_ms", lambda: clock["now"])
    old = add_node(quiet, "node-old", "old", NOW_MS - 3 * HOUR_MS)      # 'online for 3 h 00 min'
    young = add_node(quiet, "node-young", "young", NOW_MS - 5_000)     # 'online for 5 s'
    window = quiet.window(qtbot)
    panel = window.fleet_panel
    paints = panel.delegate.paints
    qtbot.waitUntil(lambda: old.key in paints and young.key in paints, timeout=5_000)
    QApplication.processEvents()
    before = dict(paints)

    clock["now"] += 1_000        # one second later: '5 s' becomes '6 s', '3 h 00 min' stays
    panel._second()              # what the frame clock's one-second tick calls
    qtbot.waitUntil(lambda: paints[young.key] > before[young.key], timeout=5_000)
    QApplication.processEvents()
    assert paints[old.key] == before[old.key], "a row whose words did not change was repainted"
    assert "online for 6 s" in panel.row_text(young.key)

    # a sample changes the old node's power: its row is repainted on the next tick (quiet or not)
    before = dict(paints)
    quiet.console.telemetry._add_batch([synthetic_sample(old.node_id, 1, clock["now"], power=7.5)])
    panel._second()
    qtbot.waitUntil(lambda: paints[old.key] > before[old.key], timeout=5_000)
    assert "7.5 W" in panel.row_text(old.key)

    # nothing changed since: no row is repainted
    QApplication.processEvents()
    before = dict(paints)
    panel._second()
    QApplication.processEvents()
    QApplication.processEvents()
    assert paints == before


def test_the_canvas_live_overlay_rests_once_the_fleet_is_quiet_and_its_sparklines_aged_out(
        quiet: LiveConsole, qtbot: QtBot) -> None:
    add_node(quiet, "node-a", "a", fmt.now_ms() - 10_000)
    window = quiet.window(qtbot)
    window.show_pipeline()
    canvas = window.canvas
    qtbot.waitUntil(canvas.isVisible, timeout=5_000)
    quiet.console.telemetry._add_batch([synthetic_sample("node-a", 1, fmt.now_ms())])

    def tick() -> int:
        """One frame-clock tick after the twice-a-second limit has passed; the refreshes done so far."""
        canvas._last_live = 0.0
        canvas._frame()
        return canvas.live_refreshes

    done = tick()
    assert tick() == done + 1, "within a minute of the last sample the sparklines still move"
    canvas._live_moved -= SPARK_S + 2          # the last sample is now older than any sparkline shows
    assert tick() == done + 1 and tick() == done + 1, "nothing arrived and nothing ages: no refresh"
    quiet.console.telemetry._add_batch([synthetic_sample("node-a", 2, fmt.now_ms())])
    assert tick() == done + 2, "the next sample wakes it"

