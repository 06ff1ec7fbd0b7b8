"""The pipeline canvas on a live fleet of real agents: drag and drop, fit feedback, refusals, undo/redo, in-place
edits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QKeySequence
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot
from test_widgets_support import (
    LiveConsole,
    assert_not_blank,
    big_model,
    drag_over,
    drop_at,
    leave,
    live_console,
    save_screenshot,
    small_model,
)

from app.core import NodeState, read_model_card
from app.pipeline_file import Placement
from app.qt import PipelineModel
from widgets import StageDrag, apply_theme, stage_mime
from widgets._canvas_items import LaneItem, NodeCardItem
from widgets._pipeline_editor import PipelineEditor

AGENTS = {"device-1": ("device", ()), "capped-1": ("device", ("--memory-cap-mb", "1")),
          "edge-1": ("edge", ()), "cloud-1": ("cloud", ())}


@pytest.fixture(scope="module")
def live(qapp: QApplication, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveConsole]:
    """Four real agents (one with a 1 MiB memory cap) and a console watching them."""
    import time

    apply_theme(qapp)
    folder = tmp_path_factory.mktemp("canvas")
    with live_console(folder, AGENTS) as live:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                len(live.console.fleet.nodes()) == 4 and all(
                    n.state == NodeState.ONLINE and n.info is not None for n in live.console.fleet.nodes())):
            qapp.processEvents()
            time.sleep(0.01)
        assert all(n.state == NodeState.ONLINE for n in live.console.fleet.nodes())
        live.extra["small"] = read_model_card(small_model(folder / "models"))
        live.extra["big"] = read_model_card(big_model(folder / "models"))
        yield live


@pytest.fixture
def editor(live: LiveConsole, qtbot: QtBot) -> PipelineEditor:
    """A pipeline editor (palette, canvas, what-if) on a fresh pipeline, shown at laptop size."""
    pipeline = PipelineModel()
    ed = PipelineEditor(pipeline, live.console.fleet, live.console.telemetry)
    qtbot.addWidget(ed)
    for card in (live.extra["small"], live.extra["big"]):
        ed.stage_palette.add_card(card)  # type: ignore[arg-type]
    ed.addActions(ed.canvas.edit_actions())
    ed.resize(1200, 720)
    ed.show()
    qtbot.waitExposed(ed)
    ed.canvas.relayout()
    return ed


def node_id(live: LiveConsole, name: str) -> str:
    return live.agents[name].node_id


def card_pos(editor: PipelineEditor, live: LiveConsole, name: str) -> object:
    card = editor.canvas.cards[node_id(live, name)]
    return editor.canvas.mapFromScene(card.sceneBoundingRect().center())


def lane_pos(editor: PipelineEditor, tier: str) -> object:
    lane = editor.canvas.lanes[tier]
    return editor.canvas.mapFromScene(lane.rect.topLeft() + QPointF(60, 50))   # the lane header


def palette_mime(editor: PipelineEditor, path: Path) -> object:
    item = editor.stage_palette.item_for(str(path))
    assert item is not None
    return editor.stage_palette.mimeData([item])   # the very bytes an operator's drag carries


def test_drop_a_model_on_a_lane_places_a_new_stage_on_that_tier(editor: PipelineEditor, live: LiveConsole,
                                                                 tmp_path: Path) -> None:
    canvas = editor.canvas
    small = live.extra["small"]
    mime = palette_mime(editor, small.path)  # type: ignore[attr-defined]
    move = drag_over(canvas.viewport(), mime, lane_pos(editor, "device"))  # type: ignore[arg-type]
    assert move.isAccepted()
    # every target says whether the stage fits, with words
    assert canvas.lanes["device"].mark is not None and canvas.lanes["device"].mark.fits
    assert "fits on all 2 reachable device nodes" in canvas.lanes["device"].mark.reason
    for key in canvas.cards:
        assert canvas.cards[key].mark is not None and canvas.cards[key].mark.fits
    assert canvas.hint.isVisible() and "place new stage from small.onnx on every device node" in canvas.hint.text
    assert_not_blank(save_screenshot(editor, tmp_path, "canvas-mid-drag-fits"))
    drop = drop_at(canvas.viewport(), mime, lane_pos(editor, "device"))  # type: ignore[arg-type]
    assert drop.isAccepted()
    stages = editor.pipeline.stages()
    assert [s.id for s in stages] == ["small"]
    assert stages[0].placement == Placement(tier="device")
    assert stages[0].sha256 == small.sha256  # type: ignore[attr-defined]
    assert canvas.lanes["device"].mark is None, "marks are cleared after the drop"
    assert canvas.undo_stack.count() == 1 and canvas.undo_stack.undoText() == "Add stage small"


def test_drop_a_model_on_a_node_card_pins_it_to_that_node(editor: PipelineEditor, live: LiveConsole) -> None:
    canvas = editor.canvas
    mime = palette_mime(editor, live.extra["small"].path)  # type: ignore[attr-defined]
    drop = drop_at(canvas.viewport(), mime, card_pos(editor, live, "edge-1"))  # type: ignore[arg-type]
    assert drop.isAccepted()
    stage = editor.pipeline.stages()[0]
    assert stage.placement == Placement(nodes=(node_id(live, "edge-1"),))
    canvas.relayout()
    assert canvas.stage_lane(stage.id) == "edge", "a pinned stage is drawn in its node's lane"
    assert canvas.pinned_here(live.console.fleet.node(node_id(live, "edge-1"))) == [stage.id]  # type: ignore[arg-type]

    # an existing stage dragged onto another lane is re-placed (its own mime: the stage id)
    chip_mime = stage_mime(StageDrag(stage_id=stage.id))
    assert drop_at(canvas.viewport(), chip_mime, lane_pos(editor, "cloud")).isAccepted()
    assert editor.pipeline.stage(stage.id).placement == Placement(tier="cloud")


def test_a_drop_where_the_stage_does_not_fit_is_refused_with_the_reason(editor: PipelineEditor, live: LiveConsole,
                                                                         tmp_path: Path) -> None:
    canvas = editor.canvas
    big = live.extra["big"]
    mime = palette_mime(editor, big.path)  # type: ignore[attr-defined]
    capped = canvas.cards[node_id(live, "capped-1")]
    drag_over(canvas.viewport(), mime, card_pos(editor, live, "capped-1"))  # type: ignore[arg-type]
    # while dragging: the capped node says no, and why; the other nodes say yes
    assert capped.mark is not None and not capped.mark.fits
    assert "memory cap" in capped.mark.reason and capped.mark.short == "memory cap"
    assert canvas.cards[node_id(live, "device-1")].mark.fits  # type: ignore[union-attr]
    lane = canvas.lanes["device"]
    assert lane.mark is not None and not lane.mark.fits and "1 of 2 device nodes cannot take it" in lane.mark.reason
    assert canvas.hint.isVisible() and not canvas.hint.fits and "memory cap" in canvas.hint.text
    assert_not_blank(save_screenshot(editor, tmp_path, "canvas-mid-drag-refused"))
    drop = drop_at(canvas.viewport(), mime, card_pos(editor, live, "capped-1"))  # type: ignore[arg-type]
    assert not drop.isAccepted()
    assert editor.pipeline.stages() == [], "nothing was added"
    assert canvas.undo_stack.count() == 0
    assert "cannot be pinned to capped-1" in canvas.refusal and "memory cap" in canvas.refusal
    assert canvas.refusal_banner.isVisible() and "Refused" in canvas.refusal_banner.text()
    # the whole device tier refuses too (the capped node is one of its nodes)
    assert not drop_at(canvas.viewport(), mime, lane_pos(editor, "device")).isAccepted()  # type: ignore[arg-type]
    assert "cannot be placed on tier device" in canvas.refusal
    # and a fitting target is taken at once, clearing the message
    assert drop_at(canvas.viewport(), mime, card_pos(editor, live, "device-1")).isAccepted()  # type: ignore[arg-type]
    assert not canvas.refusal_banner.isVisible()
    leave(canvas.viewport())


def test_undo_and_redo_restore_the_pipeline_model(editor: PipelineEditor, live: LiveConsole, qtbot: QtBot) -> None:
    canvas = editor.canvas
    pipeline = editor.pipeline
    small = live.extra["small"]
    states = [pipeline.document.to_dict()]

    def snap() -> None:
        states.append(pipeline.document.to_dict())

    mime = palette_mime(editor, small.path)  # type: ignore[attr-defined]
    assert drop_at(canvas.viewport(), mime, lane_pos(editor, "device")).isAccepted()  # type: ignore[arg-type]
    snap()
    assert drop_at(canvas.viewport(), mime, lane_pos(editor, "edge")).isAccepted()  # type: ignore[arg-type]
    snap()
    assert [s.id for s in pipeline.stages()] == ["small", "small-2"]
    # in-place threshold edit on the link small → small-2 (F2, type, Enter)
    canvas.relayout()
    canvas.select_stage("small")
    editor.activateWindow()
    canvas.setFocus()
    QTest.keyClick(canvas, Qt.Key.Key_F2)
    editor_widget = canvas.editor()
    assert editor_widget is not None, "F2 opens the threshold editor on the link"
    editor_widget.selectAll()
    QTest.keyClicks(editor_widget, "0.42")
    QTest.keyClick(editor_widget, Qt.Key.Key_Return)
    assert canvas.editor() is None
    assert pipeline.stage("small").rule.confidence_below == pytest.approx(0.42)
    snap()
    # reorder from the keyboard
    canvas.select_stage("small-2")
    canvas.move_selected_earlier()
    assert [s.id for s in pipeline.stages()] == ["small-2", "small"]
    snap()
    # delete
    canvas.select_stage("small")
    canvas.delete_selected()
    assert [s.id for s in pipeline.stages()] == ["small-2"]
    snap()
    assert canvas.undo_stack.count() == 5

    # Ctrl+Z walks back through every state; Ctrl+Shift+Z walks forward again
    window = editor.window()
    for expected in reversed(states[:-1]):
        QTest.keySequence(window, QKeySequence("Ctrl+Z"))
        assert pipeline.document.to_dict() == expected
    assert not canvas.undo_stack.canUndo()
    for expected in states[1:]:
        QTest.keySequence(window, QKeySequence("Ctrl+Shift+Z"))
        assert pipeline.document.to_dict() == expected
    assert not canvas.undo_stack.canRedo()
    canvas.relayout()
    assert set(canvas.chips) == {"small-2"}, "the scene redraws from the model"


def test_escape_cancels_a_threshold_edit(editor: PipelineEditor, live: LiveConsole) -> None:
    canvas = editor.canvas
    mime = palette_mime(editor, live.extra["small"].path)  # type: ignore[attr-defined]
    drop_at(canvas.viewport(), mime, lane_pos(editor, "device"))  # type: ignore[arg-type]
    drop_at(canvas.viewport(), mime, lane_pos(editor, "cloud"))  # type: ignore[arg-type]
    canvas.relayout()
    before = editor.pipeline.document.to_dict()
    canvas.edit_threshold("small")
    widget = canvas.editor()
    assert widget is not None
    QTest.keyClicks(widget, "9")
    QTest.keyClick(widget, Qt.Key.Key_Escape)
    assert canvas.editor() is None and editor.pipeline.document.to_dict() == before
    canvas.edit_threshold("small-2")   # the last stage has no threshold: said so, nothing opens
    assert canvas.editor() is None and "last stage" in canvas.refusal


def test_keyboard_placement_lists_every_target_with_its_fit(editor: PipelineEditor, live: LiveConsole) -> None:
    canvas = editor.canvas
    menu = canvas.place_menu(StageDrag(model_path=str(live.extra["big"].path)))  # type: ignore[attr-defined]
    entries = {a.text(): a for a in menu.actions() if not a.isSeparator()}
    capped = next(a for t, a in entries.items() if t.startswith("Pin to capped-1"))
    assert not capped.isEnabled() and "memory cap" in capped.text() and "memory cap" in capped.toolTip()
    edge = next(a for t, a in entries.items() if t.startswith("Every edge node"))
    assert edge.isEnabled() and "fits" in edge.text()
    edge.trigger()
    assert editor.pipeline.stages()[0].placement == Placement(tier="edge")
    # Enter on a palette card opens the same menu (the keyboard's drag and drop)
    opened: list[str] = []
    editor.stage_palette.place_requested.connect(opened.append)
    editor.stage_palette.setCurrentItem(editor.stage_palette.item_for(str(live.extra["small"].path)))  # type: ignore[attr-defined]
    editor.stage_palette.setFocus()
    QTest.keyClick(editor.stage_palette, Qt.Key.Key_Return)
    assert opened == [str(live.extra["small"].path)]  # type: ignore[attr-defined]


def test_canvas_shows_live_nodes_in_their_lanes(editor: PipelineEditor, live: LiveConsole) -> None:
    canvas = editor.canvas
    for name, (tier, _) in AGENTS.items():
        card = canvas.cards[node_id(live, name)]
        assert isinstance(card, NodeCardItem)
        lane = canvas.lanes[tier]
        assert isinstance(lane, LaneItem) and lane.rect.contains(card.sceneBoundingRect().center())
    assert canvas.target_at(card_pos(editor, live, "edge-1")) is canvas.cards[node_id(live, "edge-1")]  # type: ignore[arg-type]
