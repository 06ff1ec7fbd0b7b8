"""The replay slider on a live console (real agents, the core's own recorder, a real SQLite file): the dashboard,
the event log and the fleet panel show the recorded incident at the replayed instant, the replay clock advances
speed × frame per frame, rollups say so, and back to live nothing recorded meanwhile is lost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pytest
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtWidgets import QStyleOptionGraphicsItem
from pytestqt.qtbot import QtBot
from replay_support import Incident, write_incident
from test_widgets_support import LiveConsole, dispose, live_console, small_model

from app._db import telemetry_rows
from app._records import NodeSample
from app._replay import FRAME_MS, SPEEDS
from app._replay_qt import ReplayModel
from widgets import Dashboard, EventLog, FleetPanel, FrameClock, apply_theme
from widgets import _theme as theme
from widgets._canvas_items import NodeCardItem
from widgets._pipeline_editor import PipelineEditor

MINUTE = 60_000


@dataclass
class Scene:
    live: LiveConsole
    incident: Incident
    dev: str
    edge: str
    old: Incident          # an incident older than the raw retention (only its rollups are left)


@pytest.fixture(scope="module")
def scene(qapp: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    apply_theme(qapp)  # type: ignore[arg-type]
    folder = tmp_path_factory.mktemp("replay")
    model = small_model(folder / "models")
    agents = {"device-1": ("device", ("--stage", f"s1={model}")), "edge-1": ("edge", ())}
    with live_console(folder, agents, interval=0.1) as live:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                len(live.console.fleet.nodes()) == 2 and all(n.node_id for n in live.console.fleet.nodes())):
            qapp.processEvents()  # type: ignore[attr-defined]
            time.sleep(0.01)
        ids = {n.name: n.node_id for n in live.console.fleet.nodes()}
        dev, edge = ids["device-1"], ids["edge-1"]
        now = int(time.time() * 1000)
        # the incident an hour ago, through the console's own recorder, on the live nodes' ids
        incident = write_incident(live.core.db, (now - 3600_000) // MINUTE * MINUTE, dev=dev, edge=edge,
                                  save_nodes=False)
        old = write_incident(live.core.db, (now - 26 * 3600_000) // MINUTE * MINUTE, dev=dev, edge=edge,
                             save_nodes=False)
        live.core.db.run_maintenance().result(60)   # rolls the old one up and deletes its raw samples (24 h kept)
        yield Scene(live, incident, dev, edge, old)


@dataclass
class Views:
    replay: ReplayModel
    dashboard: Dashboard
    events: EventLog
    fleet: FleetPanel
    clock: FrameClock


@pytest.fixture
def views(scene: Scene, qtbot: QtBot) -> Iterator[Views]:
    console = scene.live.console
    clock = FrameClock(console.telemetry, 15)
    replay = ReplayModel(console)
    board = Dashboard(console.fleet, console.telemetry, clock, console.pipeline, console.files, replay=replay)
    log = EventLog(console.events, replay=replay)
    panel = FleetPanel(console.fleet, console.telemetry, clock, replay=replay)
    board.resize(1200, 700)
    board.show()
    log.show()
    panel.show()
    qtbot.waitExposed(board)
    clock.start()
    yield Views(replay, board, log, panel, clock)
    replay.go_live()
    clock.stop()
    for w in (board, log, panel):
        dispose(w)


def open_window(views: Views, qtbot: QtBot, since: int, until: int) -> None:
    views.replay.open_window(since, until)
    qtbot.waitUntil(lambda: views.replay.replaying and not views.replay.loading, timeout=30_000)


def recorded(inc: Incident, node_id: str, t_ms: int) -> NodeSample:
    return [s for s in inc.samples if s.node_id == node_id and s.ts_ms <= t_ms][-1]


def test_replay_shows_the_incident_then_live_again_with_nothing_lost(scene: Scene, views: Views,
                                                                      qtbot: QtBot) -> None:
    inc, core, console = scene.incident, scene.live.core, scene.live.console
    received: list[NodeSample] = []
    unsubscribe = core.subscribe_samples(received.append)   # what the live path gets while we replay
    try:
        bar = views.dashboard.replay_bar
        assert bar is not None and bar.live_badge.isVisible() and not bar.banner.isVisible()
        open_window(views, qtbot, inc.start_ms, inc.start_ms + inc.seconds * 1000)
        during = len(received)
        views.replay.seek(inc.t3)
        views.dashboard.redraw()
        board = views.dashboard
        assert board.replaying and board.telemetry is views.replay.view
        assert board.frame is not None and board.frame.end == inc.t3 / 1000
        # what the plots draw ends at the replayed instant, and there is something to see
        finite = [s.t[np.isfinite(s.v)] for series in board.frame.plots.values() for s in series]
        assert any(len(t) for t in finite) and max(float(t.max()) for t in finite if len(t)) <= inc.t3 / 1000
        assert board.tiles["nodes"].value.text() == "1 / 2  ⚠0 ✖1"        # edge-1 was offline then
        edge_then = recorded(inc, scene.edge, inc.t3).stages[0]
        assert board.tiles["throughput"].value.text() == f"{edge_then.inferences_per_s:,.0f} /s"   # "cls" sorts first
        # unmistakably not live
        assert bar.banner.isVisible() and not bar.live_badge.isVisible() and bar.controls.isVisible()
        at = datetime.fromtimestamp(inc.t3 / 1000).strftime("%H:%M:%S")
        assert at in bar.banner.text() and "NOT LIVE" in bar.banner.text()
        assert bar.banner.text().endswith("playing raw samples")
        assert board.source.text() == "replay · raw samples"
        # the event log holds exactly the window's events up to t3
        shown = [views.events.proxy.index(r, 0).data() for r in range(views.events.proxy.rowCount())]
        assert shown == [e.message for e in inc.events if inc.start_ms <= e.ts_ms <= inc.t3]
        assert views.events.replay_banner.isVisible() and at in views.events.replay_banner.text()
        # node cards: states (and links) as recorded at t3
        edge_key = next(n.key for n in console.fleet.nodes() if n.node_id == scene.edge)
        dev_key = next(n.key for n in console.fleet.nodes() if n.node_id == scene.dev)
        assert "[offline]" in views.fleet.row_text(edge_key)
        assert "connection refused" in views.fleet.row_text(edge_key)
        assert "[online]" in views.fleet.row_text(dev_key) and "link down: det" in views.fleet.row_text(dev_key)
        assert views.fleet.replay_banner.isVisible()
        views.replay.seek(inc.t2 + 5_000)
        assert "[online]" in views.fleet.row_text(edge_key) and "link down" not in views.fleet.row_text(dev_key)
        shown = [views.events.proxy.index(r, 0).data() for r in range(views.events.proxy.rowCount())]
        assert shown == [e.message for e in inc.events if inc.start_ms <= e.ts_ms <= inc.t2 + 5_000]
        # back in time: the event log loses the later events again
        views.replay.seek(inc.t1 - 1)
        assert views.events.proxy.rowCount() == len([e for e in inc.events if inc.start_ms <= e.ts_ms < inc.t1])

        # live telemetry keeps arriving (and being recorded) while the view shows history
        qtbot.waitUntil(lambda: len(received) > during + 20, timeout=30_000)
        views.dashboard.redraw()
        assert board.frame.end == (inc.t1 - 1) / 1000

        views.replay.go_live()
        assert not board.replaying and board.telemetry is console.telemetry and board.fleet is console.fleet
        assert bar.live_badge.isVisible() and not bar.banner.isVisible() and not bar.controls.isVisible()
        assert views.events.proxy.sourceModel() is console.events and not views.events.replay_banner.isVisible()
        assert "[offline]" not in views.fleet.row_text(edge_key)
        last = len(received)
        qtbot.waitUntil(lambda: console.telemetry.latest(scene.dev) is not None and
                        console.telemetry.latest(scene.dev).ts_ms >= received[last - 1].ts_ms, timeout=30_000)
        board.redraw()
        assert board.frame.end > inc.start_ms / 1000 + 3000      # live: ends now, not in the replayed hour
    finally:
        core.call_soon(unsubscribe)
    # nothing the live path received during the replay is lost: every sample is in the database and in the rings
    core.db.flush().result(30)
    first = min(s.ts_ms for s in received)
    stored = {(r["node_id"], r["boot_id"], r["seq"]) for r in core.db.read(
        lambda db: telemetry_rows(db, first, stage="")).result(30)}
    got = [s for s in received if s.ts_ms <= received[last - 1].ts_ms]
    assert {(s.node_id, s.boot_id, s.seq) for s in got} <= stored
    ring = console.telemetry.node_series(scene.dev)
    assert ring is not None
    times = set(ring.times().tolist())
    assert {s.ts_ms / 1000 for s in got if s.node_id == scene.dev} <= times


def test_a_window_that_begins_before_the_record_opens_on_its_first_sample(scene: Scene, views: Views,
                                                                          qtbot: QtBot) -> None:
    # "Last 1 h" on a fleet recorded for ten minutes: the slider spans the ten minutes, and the replay opens a minute
    # into them (the dashboard's minute full)
    inc, replay, board = scene.incident, views.replay, views.dashboard
    bar = board.replay_bar
    assert bar is not None
    until = inc.start_ms + inc.seconds * 1000
    open_window(views, qtbot, until - 3600_000, until)
    first = min(s.ts_ms for s in inc.samples)
    assert replay.history is not None and replay.history.since_ms == first
    assert replay.position_ms == first + MINUTE
    assert bar.slider.value() == 60 and bar.slider.maximum() == (until - first) // 1000
    start = datetime.fromtimestamp(first / 1000).strftime("%H:%M:%S")
    assert bar.start_label.text() == f"{start} (first record)" and "Nothing was recorded" in bar.start_label.toolTip()
    board.redraw()
    assert board.tiles["throughput"].value.text() != "—" and board.tiles["nodes"].value.text().startswith("2 / 2")
    assert board.frame is not None and board.frame.end == (first + MINUTE) / 1000
    finite = [s.t[np.isfinite(s.v)] for s in board.frame.plots["throughput"]]
    assert any(len(t) for t in finite)        # the plots draw the record's first minute
    dev_key = next(n.key for n in scene.live.console.fleet.nodes() if n.node_id == scene.dev)
    assert "[online]" in views.fleet.row_text(dev_key)
    # the slider's ends are the record's: its far end is the window's end
    bar.slider.setValue(bar.slider.maximum())
    assert replay.position_ms == first + bar.slider.maximum() * 1000


def test_a_window_with_nothing_recorded_says_so_and_stays_where_it_was(scene: Scene, views: Views,
                                                                       qtbot: QtBot) -> None:
    inc, replay = scene.incident, views.replay
    bar = views.dashboard.replay_bar
    assert bar is not None
    empty = (inc.start_ms - 5 * 3600_000, inc.start_ms - 4 * 3600_000)
    with qtbot.waitSignal(replay.load_failed, timeout=30_000) as said:
        replay.open_window(*empty)
    assert not replay.replaying and not replay.loading
    assert said.args is not None and said.args[0].startswith("Nothing was recorded from ")
    assert bar.banner.isVisible() and bar.banner.text() == said.args[0] and "the record runs from" in said.args[0]
    assert bar.live_badge.isVisible() and bar.live_button.isChecked()
    # while replaying another window, that replay stays
    open_window(views, qtbot, inc.start_ms, inc.start_ms + inc.seconds * 1000)
    replay.seek(inc.t3)
    with qtbot.waitSignal(replay.load_failed, timeout=30_000):
        replay.open_window(*empty)
    assert replay.replaying and replay.position_ms == inc.t3 and bar.controls.isVisible()
    assert bar.banner.text().startswith("Nothing was recorded") and "Still showing: REPLAY" in bar.banner.text()
    assert "NOT LIVE" in bar.banner.text()


def green_pixels_right(card: NodeCardItem) -> int:
    """How many pixels of the card's right half are the LIVE green (the green state icon sits top-left)."""
    rect = card.boundingRect()
    image = QImage(int(rect.width()), int(rect.height()), QImage.Format.Format_ARGB32)
    image.fill(QColor(theme.CARD))
    painter = QPainter(image)
    card.paint(painter, QStyleOptionGraphicsItem(), None)
    painter.end()
    ok = QColor(theme.OK)
    return sum(1 for x in range(image.width() // 2, image.width()) for y in range(image.height())
               if abs(QColor(image.pixel(x, y)).green() - ok.green()) < 40
               and abs(QColor(image.pixel(x, y)).red() - ok.red()) < 40
               and abs(QColor(image.pixel(x, y)).blue() - ok.blue()) < 40)


def test_while_replaying_the_canvas_cards_say_they_are_live(scene: Scene, views: Views, qtbot: QtBot) -> None:
    # the canvas's cards keep live figures during a replay: next to replayed plots they must not pass for history
    inc, replay, console = scene.incident, views.replay, scene.live.console
    editor = PipelineEditor(console.pipeline, console.fleet, console.telemetry, replay=replay)
    try:
        editor.resize(1200, 700)
        editor.show()
        qtbot.waitExposed(editor)
        editor.canvas.relayout()

        def cards() -> list[NodeCardItem]:   # a re-layout (a fleet change, a resize) makes new cards
            return list(editor.canvas.cards.values())
        assert len(cards()) == 2 and not any(card.live_badge for card in cards())
        assert not editor.live_banner.isVisible()
        assert all(green_pixels_right(card) == 0 for card in cards())
        open_window(views, qtbot, inc.start_ms, inc.start_ms + inc.seconds * 1000)
        replay.seek(inc.t3)
        assert len(cards()) == 2 and all(card.live_badge for card in cards())
        assert all(green_pixels_right(card) > 20 for card in cards())     # the badge is drawn
        at = datetime.fromtimestamp(inc.t3 / 1000).strftime("%H:%M:%S")
        assert editor.live_banner.isVisible() and editor.live_banner.text().startswith("LIVE · ")
        assert f"not the replayed {at}" in editor.live_banner.text()
        replay.seek(inc.t2)
        assert datetime.fromtimestamp(inc.t2 / 1000).strftime("%H:%M:%S") in editor.live_banner.text()
        # a card made while replaying (the canvas re-laid out) says so too
        before = cards()
        editor.canvas.relayout()
        assert all(a is not b for a, b in zip(before, cards(), strict=True)) and all(c.live_badge for c in cards())
        replay.go_live()
        assert not editor.live_banner.isVisible()
        assert not any(card.live_badge for card in cards())
        assert all(green_pixels_right(card) == 0 for card in cards())
    finally:
        dispose(editor)


def test_replay_clock_advances_speed_times_frame_per_frame(scene: Scene, views: Views, qtbot: QtBot) -> None:
    inc, replay = scene.incident, views.replay
    open_window(views, qtbot, inc.start_ms, inc.start_ms + inc.seconds * 1000)
    bar = views.dashboard.replay_bar
    assert bar is not None
    assert replay.position_ms == inc.start_ms and replay.speed == 1.0
    replay.play()
    for _ in range(5):   # frames driven by hand (the timer needs the event loop, which does not run here)
        replay.tick()
    assert replay.position_ms == inc.start_ms + 5 * FRAME_MS
    bar.speed_box.setCurrentIndex(SPEEDS.index(60.0))      # the operator picks 60×
    assert replay.speed == 60.0
    before = replay.position_ms
    for _ in range(5):
        replay.tick()
    assert replay.position_ms == before + 5 * 60 * FRAME_MS
    # on the real frame timer: the replayed time moved 6 s per frame, however long the frames took
    frames, position = replay.frames, replay.position_ms
    qtbot.waitUntil(lambda: replay.frames >= frames + 4, timeout=30_000)
    replay.pause()
    assert replay.position_ms == position + (replay.frames - frames) * 60 * FRAME_MS
    assert "paused" in bar.banner.text()
    # at 1× again, then to the end: it stops there
    bar.speed_box.setCurrentIndex(0)
    replay.seek(inc.start_ms + inc.seconds * 1000 - 150)
    replay.play()
    replay.tick()
    replay.tick()
    assert replay.position_ms == inc.start_ms + inc.seconds * 1000 and not replay.playing
    # the slider: dragging it moves the replay, and the replay moves the slider
    bar.slider.setValue(200)
    assert replay.position_ms == inc.start_ms + 200_000
    replay.step(-10)
    assert bar.slider.value() == 190


def test_a_window_beyond_raw_retention_plays_rollups_and_says_so(scene: Scene, views: Views, qtbot: QtBot) -> None:
    old = scene.old
    open_window(views, qtbot, old.start_ms, old.start_ms + old.seconds * 1000)
    bar = views.dashboard.replay_bar
    assert bar is not None and views.replay.history is not None
    assert views.replay.history.resolution == "1m"
    views.replay.seek(old.t3)
    text = bar.banner.text()
    assert "playing 1-minute rollups: raw samples kept only for the last 24 h" in text, text
    assert views.dashboard.source.text() == "replay · 1-min rollups"
    assert views.dashboard.window_s == 3600.0          # a rollup a minute: the last hour, not the last minute
    # the rollups' figures are drawn, and the incident is still in the log and on the cards
    views.dashboard.redraw()
    assert any(np.isfinite(s.v).any() for s in views.dashboard.frame.plots["throughput"])
    assert [e.kind for e in views.replay.events.events()][-1] == "process_exit"
    edge_key = next(n.key for n in scene.live.console.fleet.nodes() if n.node_id == scene.edge)
    assert "[offline]" in views.fleet.row_text(edge_key)
    views.replay.go_live()
    assert views.dashboard.window_s == 60.0            # the operator's window again
