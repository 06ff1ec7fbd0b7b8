"""Composing a cascade on the canvas over real agents: drops that deploy as they stand, re-tiering, pinning and the
routing it shows (offscreen; tests/test_display.py does the same with a real mouse on a real X server)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt
from PySide6.QtWidgets import QApplication, QPlainTextEdit
from pytestqt.qtbot import QtBot
from test_widgets_support import LiveConsole, drop_at, live_console, save_screenshot

from app.core import NodeState, read_model_card
from app.pipeline_file import Placement
from app.qt import PipelineModel
from widgets import StageDrag, apply_theme, stage_mime
from widgets._pipeline_editor import PipelineEditor

AGENTS = {"device-1": ("device", ()), "device-2": ("device", ()), "edge-1": ("edge", ()), "cloud-1": ("cloud", ())}
BUNDLED = Path(__file__).resolve().parent.parent / "resources" / "models"


@pytest.fixture(scope="module")
def live(qapp: QApplication, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveConsole]:
    """Four real agents on three tiers and a console watching them."""
    import time

    apply_theme(qapp)
    folder = tmp_path_factory.mktemp("compose")
    with live_console(folder, AGENTS) as live:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                len(live.console.fleet.nodes()) == 4 and all(
                    n.state == NodeState.ONLINE and n.info is not None and n.node_id
                    for n in live.console.fleet.nodes())):
            qapp.processEvents()
            time.sleep(0.01)
        assert all(n.state == NodeState.ONLINE for n in live.console.fleet.nodes())
        yield live


@pytest.fixture
def editor(live: LiveConsole, qtbot: QtBot) -> PipelineEditor:
    """An empty pipeline editor with the bundled models in its palette, at laptop size."""
    ed = PipelineEditor(PipelineModel(live.console), live.console.fleet, live.console.telemetry)
    qtbot.addWidget(ed)
    for name in ("detector", "classifier", "heavy"):
        ed.stage_palette.add_card(read_model_card(BUNDLED / f"{name}.onnx"))
    ed.addActions(ed.canvas.edit_actions())
    ed.resize(1280, 720)
    ed.show()
    qtbot.waitExposed(ed)
    ed.canvas.relayout()
    return ed


def fresh_window(live: LiveConsole, qtbot: QtBot) -> object:
    """A main window on the module's console, its pipeline emptied first (the console is shared by the tests)."""
    doc = live.console.pipeline.document
    doc.stages.clear()
    doc.cards.clear()
    window = live.window(qtbot)
    window.canvas.undo_stack.clear()
    window.canvas.relayout()
    return window


def lane_pos(editor: PipelineEditor, tier: str) -> object:
    return editor.canvas.mapFromScene(editor.canvas.lanes[tier].rect.topLeft() + QPointF(60, 50))


def card_pos(editor: PipelineEditor, live: LiveConsole, name: str) -> object:
    card = editor.canvas.cards[live.agents[name].node_id]
    return editor.canvas.mapFromScene(card.sceneBoundingRect().center())


def drop_model(editor: PipelineEditor, path: Path, pos: object) -> bool:
    item = editor.stage_palette.item_for(str(path))
    assert item is not None
    ok = drop_at(editor.canvas.viewport(), editor.stage_palette.mimeData([item]), pos).isAccepted()  # type: ignore[arg-type]
    editor.canvas.relayout()
    return ok


def drop_stage(editor: PipelineEditor, stage_id: str, pos: object) -> bool:
    ok = drop_at(editor.canvas.viewport(), stage_mime(StageDrag(stage_id=stage_id)), pos).isAccepted()  # type: ignore[arg-type]
    editor.canvas.relayout()
    return ok


def build_ship_finder(editor: PipelineEditor) -> list[str]:
    said: list[str] = []
    editor.canvas.status_message.connect(said.append)
    for name, tier in (("detector", "device"), ("classifier", "edge"), ("heavy", "cloud")):
        assert drop_model(editor, BUNDLED / f"{name}.onnx", lane_pos(editor, tier))
        assert editor.pipeline.problems() == [], f"after dropping {name}: {editor.pipeline.problems()}"
    return said


def test_three_palette_drops_on_an_empty_canvas_make_a_deployable_cascade(editor: PipelineEditor, live: LiveConsole,
                                                                         tmp_path: Path) -> None:
    said = build_ship_finder(editor)
    pipeline = editor.pipeline
    assert [s.id for s in pipeline.stages()] == ["detector", "classifier", "heavy"]
    detector, classifier, heavy = pipeline.stages()
    # the model cards' recommended rules, on the probabilities, with the cards' class names
    assert (detector.rule.output, detector.rule.labels) == ("probs", ("water", "vessel"))
    assert detector.rule.class_in == ("vessel",) and detector.rule.confidence_below == pytest.approx(0.95)
    assert classifier.rule.confidence_below == pytest.approx(0.8)
    assert heavy.rule.labels == ("water", "cargo", "tanker", "fishing", "patrol")
    assert any("rule from the model card" in line for line in said), said
    assert editor.canvas.chips["classifier"].view.note == "rule from model card"
    # the file the canvas would save is the pipeline the deployer plans: no problem, a stage on every node
    plan = live.core.plan(pipeline.pipeline()).result(30)
    assert plan.ok, plan.problems
    per_stage = {sid: sorted(n.name for n in plan.nodes if any(a.stage_id == sid for a in n.actions))
                 for sid in ("detector", "classifier", "heavy")}
    assert per_stage == {"detector": ["device-1", "device-2"], "classifier": ["edge-1"], "heavy": ["cloud-1"]}
    # the canvas names where escalations go, node by node
    assert editor.canvas.route_words() == {"detector": ["device-1, device-2 → edge-1 (edge)"],
                                           "classifier": ["edge-1 → cloud-1 (cloud)"]}
    assert editor.canvas.links["detector"].view.routes == ("device-1, device-2 → edge-1 (edge)",)
    assert editor.canvas.warnings == []
    save_screenshot(editor, tmp_path, "compose-three-drops")


def test_a_stage_dragged_to_another_lane_moves_there_and_undo_brings_it_back(editor: PipelineEditor) -> None:
    build_ship_finder(editor)
    canvas = editor.canvas
    before = editor.pipeline.document.to_dict()
    assert drop_stage(editor, "classifier", lane_pos(editor, "cloud"))
    stages = editor.pipeline.stages()
    assert [s.id for s in stages] == ["detector", "classifier", "heavy"], "moved, not copied; order kept"
    assert stages[1].placement == Placement(tier="cloud")
    assert canvas.undo_stack.undoText() == "Move classifier to the cloud tier"
    assert editor.pipeline.problems() == []
    canvas.undo_stack.undo()
    assert editor.pipeline.document.to_dict() == before
    # heavy onto the device tier: it moves ahead of the classifier, and the canvas says why that is odd
    assert drop_stage(editor, "heavy", lane_pos(editor, "device"))
    assert [s.id for s in editor.pipeline.stages()] == ["detector", "heavy", "classifier"]
    canvas.relayout()
    warned = dict(canvas.warnings)
    assert "heavy" in warned and "ahead of lighter model classifier" in warned["heavy"]
    assert canvas.chips["heavy"].view.warning
    canvas.undo_stack.undo()
    assert editor.pipeline.document.to_dict() == before
    canvas.relayout()
    assert canvas.warnings == []


def test_a_drop_on_a_node_card_pins_it_and_the_canvas_shows_where_escalations_go(
        editor: PipelineEditor, live: LiveConsole, tmp_path: Path) -> None:
    canvas = editor.canvas
    assert drop_model(editor, BUNDLED / "detector.onnx", lane_pos(editor, "device"))
    said: list[str] = []
    canvas.status_message.connect(said.append)
    assert drop_model(editor, BUNDLED / "heavy.onnx", card_pos(editor, live, "device-1"))
    device_1 = live.agents["device-1"].node_id
    assert [s.id for s in editor.pipeline.stages()] == ["detector", "heavy"]
    assert editor.pipeline.stage("heavy").placement == Placement(nodes=(device_1,))
    # both device nodes escalate to device-1: shown on the link, as lines between the cards, and warned in words
    assert canvas.route_words()["detector"] == ["device-1, device-2 → device-1 (device)"]
    assert len(canvas.routes["detector"].lines) == 1, "device-2's card → device-1's card (device-1 is itself)"
    warned = dict(canvas.warnings)
    assert "all 2 nodes running detector escalate to one node, device-1" in warned["heavy"]
    assert any("escalations into it: device-1, device-2 → device-1" in s for s in said), said
    save_screenshot(editor, tmp_path, "compose-pinned")
    # the deployer plans exactly the routing the canvas shows, and the plan warns in the same words
    plan = live.core.plan(editor.pipeline.pipeline()).result(30)
    assert plan.ok, plan.problems
    hops = {n.name: a.next_node for n in plan.nodes for a in n.actions if a.stage_id == "detector"}
    assert hops == {"device-1": device_1, "device-2": device_1}
    assert any("escalate to one node, device-1" in w for w in plan.warnings)
    # dragging the pinned stage to the cloud lane un-pins it: the fan-in goes to cloud-1
    assert drop_stage(editor, "heavy", lane_pos(editor, "cloud"))
    assert editor.pipeline.stage("heavy").placement == Placement(tier="cloud")
    assert canvas.route_words()["detector"] == ["device-1, device-2 → cloud-1 (cloud)"]
    assert canvas.warnings == []


def test_an_operators_skl2onnx_model_gets_a_rule_on_its_probabilities(editor: PipelineEditor, live: LiveConsole,
                                                                      qtbot: QtBot, tmp_path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    from app._document import import_model_file

    rng = np.random.default_rng(2)
    x = rng.random((200, 6)).astype(np.float32)
    y = (x[:, 0] * 3).astype(np.int64)
    model = LogisticRegression(max_iter=300).fit(x, y)
    path = tmp_path / "digits.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path.write_bytes(to_onnx(model, x[:1], target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString())  # ZipMap
    # what PipelineModel.import_model runs off the GUI thread (File → Import ONNX model…)
    card = import_model_file(path)
    editor.stage_palette.add_card(card)
    assert card.path.name == "digits.nozipmap.onnx"
    assert drop_model(editor, card.path, lane_pos(editor, "device"))
    assert drop_model(editor, card.path, lane_pos(editor, "cloud"))
    first = editor.pipeline.stages()[0]
    assert first.rule.output == "probabilities" and first.rule.labels == ("0", "1", "2")
    assert first.rule.confidence_below == pytest.approx(0.9)
    assert editor.pipeline.problems() == []
    assert editor.canvas.chips[first.id].view.note == "default rule: F2 to tune"
    plan = live.core.plan(editor.pipeline.pipeline()).result(30)
    assert plan.ok, plan.problems
    # deployed as dropped, every answer is the one onnxruntime gives, and the rows the rule escalates (on the
    # probabilities, below 0.9) are the ones the cloud stage answered
    import asyncio

    import onnxruntime as ort

    from runners.client import NodeClient

    result = live.core.apply(plan).result(120)
    assert result.ok, result.reason
    try:
        session = ort.InferenceSession(str(card.path), providers=["CPUExecutionProvider"])
        probabilities = session.run(["probabilities"], {"X": x})[0]
        decision = first.rule.evaluate(probabilities)
        assert 0 < decision.escalate.sum() < len(x), "the data must exercise both tiers"
        expected = [first.rule.labels[i] for i in decision.top_class]
        last = editor.pipeline.stages()[1].id

        async def ask() -> tuple[list[str], list[str]]:
            async with NodeClient(live.agents["device-1"].address) as client:
                out = await client.infer(first.id, {"X": x})
            return ([v.decode() for v in out.outputs["decision_label"]],
                    [v.decode() for v in out.outputs["decision_stage"]])

        labels, stages = asyncio.run(ask())
        assert labels == expected
        assert [s == last for s in stages] == list(decision.escalate)
    finally:
        for node in live.console.fleet.nodes():
            for stage in node.stages:
                live.core.submit(live.core.fleet.client(node.key).undeploy(stage.stage_id, timeout=10)).result(20)
            live.core.submit(live.core.fleet.async_refresh(node.key)).result(20)


def test_problems_speak_in_operator_words_and_a_click_selects_the_stage(editor: PipelineEditor,
                                                                        qtbot: QtBot) -> None:
    from dataclasses import replace

    from PySide6.QtWidgets import QDialogButtonBox

    from app.core import SetRule

    build_ship_finder(editor)
    canvas = editor.canvas
    detector = editor.pipeline.stage("detector")
    canvas.push(SetRule("detector", rule=replace(detector.rule, class_in=(), confidence_below=None)))
    problems = editor.problems
    assert problems.isVisible() or not editor.isVisible()
    rows = [problems.item(i).text() for i in range(problems.count())]
    assert any("'detector' passes what it cannot settle to 'classifier'" in r and "press F2 on 'detector'" in r
               for r in rows), rows
    assert not any("stages[0]" in r for r in rows), "the JSON path is a detail (tooltip), not the words"
    row = next(problems.item(i) for i in range(problems.count()) if "detector" in problems.item(i).text())
    assert "stages[0].rule" in row.toolTip()
    canvas.select_stage("heavy")
    problems.itemClicked.emit(row)
    assert canvas.selected_stage() == "detector"
    # Shift+F2: the rule editor; a wrong label count is refused in words, OK only once the rule is valid
    dialog = canvas.edit_selected_rule()
    assert dialog is not None and dialog.isVisible()
    ok = dialog.buttons.button(QDialogButtonBox.StandardButton.Ok)
    assert dialog.kind.currentData() == "confidence_below" and ok.isEnabled(), "a middle stage is offered a threshold"
    dialog.kind.setCurrentIndex(dialog.kind.findData(""))
    assert not ok.isEnabled() and "never escalates" in dialog.problems.text()
    dialog.kind.setCurrentIndex(dialog.kind.findData("confidence_below"))
    dialog.threshold.setValue(0.7)
    dialog.labels.setText("water, vessel, rock")
    assert not ok.isEnabled() and "3 labels for output 'probs' of 2 classes" in dialog.problems.text()
    dialog.labels.setText("water, vessel")
    assert ok.isEnabled()
    ok.click()
    assert editor.pipeline.stage("detector").rule.confidence_below == pytest.approx(0.7)
    assert editor.pipeline.problems() == [] and not problems.isVisible()
    assert canvas.undo_stack.undoText() == "Change rule of detector"


def test_closing_with_unsaved_changes_asks_and_cancel_keeps_the_window(live: LiveConsole, qtbot: QtBot) -> None:
    from PySide6.QtWidgets import QMessageBox

    from app.core import InsertStage, stage_from_card

    window = fresh_window(live, qtbot)
    assert window.console.pipeline.stages() == []
    card = read_model_card(BUNDLED / "detector.onnx")
    assert window.canvas.push(InsertStage(0, stage_from_card(card, "detector", Placement(tier="device")), card))
    assert window.is_dirty() and window.isWindowModified()
    window.close()
    box = window.unsaved_box
    assert window.isVisible() and box is not None and box.isVisible(), "closing asked first"
    assert {QMessageBox.StandardButton.Save, QMessageBox.StandardButton.Discard,
            QMessageBox.StandardButton.Cancel} == {box.standardButton(b) for b in box.buttons()}
    box.button(QMessageBox.StandardButton.Cancel).click()
    assert window.isVisible() and window.is_dirty(), "Cancel keeps the window and the edit"
    assert window.unsaved_box is None
    # Ctrl+Q is the same close; Open asks too
    opened = window.open_pipeline_dialog()
    assert isinstance(opened, QMessageBox) and opened.isVisible()
    opened.button(QMessageBox.StandardButton.Cancel).click()
    window.quit_action.trigger()
    assert window.unsaved_box is not None
    window.unsaved_box.button(QMessageBox.StandardButton.Discard).click()
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=5_000)


def test_drift_after_a_live_push_is_marked_and_the_live_values_can_be_taken(editor: PipelineEditor,
                                                                          live: LiveConsole, qtbot: QtBot) -> None:
    from dataclasses import replace

    build_ship_finder(editor)
    pipeline = editor.pipeline.pipeline()
    result = live.core.apply(live.core.plan(pipeline).result(30)).result(120)
    assert result.ok, result.reason
    canvas = editor.canvas
    qtbot.waitUntil(lambda: all(n.stages for n in live.console.fleet.nodes()), timeout=20_000)
    canvas.relayout()
    assert canvas.drifts == {}, "just deployed: the fleet runs the file"
    # someone pushes 0.6 to the classifier's nodes live; the file still says 0.8
    live_rule = replace(editor.pipeline.stage("classifier").rule, confidence_below=0.6)
    assert live.core.update_policy("classifier", live_rule).result(30) == {"edge-1": ""}
    qtbot.waitUntil(lambda: "classifier" in canvas.drifts, timeout=20_000)
    found = canvas.drifts["classifier"]
    assert found.nodes == ("edge-1",) and "fleet runs confidence < 0.60, the file says confidence < 0.80" in found.words
    assert canvas.chips["classifier"].view.warning and "drift" in canvas.chips["classifier"].view.note
    rows = [editor.problems.item(i).text() for i in range(editor.problems.count())]
    assert any("drift on 'classifier'" in r and "Ctrl+Alt+L" in r for r in rows), rows
    menu = canvas.chip_menu("classifier")
    assert canvas.take_live_action in menu.actions() and canvas.redeploy_action in menu.actions()
    assert canvas.take_live_selected()
    assert editor.pipeline.stage("classifier").rule.confidence_below == pytest.approx(0.6)
    canvas.relayout()
    assert canvas.drifts == {}
    canvas.undo_stack.undo()   # back to the file's value: drift again, and "re-deploy the file" is the way out
    canvas.relayout()
    assert "classifier" in canvas.drifts
    asked: list[bool] = []
    canvas.deploy_requested.connect(lambda: asked.append(True))
    canvas.redeploy_action.trigger()
    assert asked == [True]
    for node in live.console.fleet.nodes():   # leave the fleet empty for the other tests
        for stage in node.stages:
            live.core.submit(live.core.fleet.client(node.key).undeploy(stage.stage_id, timeout=10)).result(20)
        live.core.submit(live.core.fleet.async_refresh(node.key)).result(20)


def test_the_palette_lists_the_operators_models_first_and_can_hide_the_bundled_ones(
        live: LiveConsole, qtbot: QtBot, tmp_path: Path) -> None:
    from test_widgets_support import small_model

    ed = PipelineEditor(PipelineModel(live.console), live.console.fleet, live.console.telemetry)
    qtbot.addWidget(ed)
    palette = ed.stage_palette
    for name in ("detector", "heavy"):
        ed._imported(read_model_card(BUNDLED / f"{name}.onnx"))
    mine = read_model_card(small_model(tmp_path, "mine.onnx", classes=3))
    ed._imported(mine)
    names = [Path(str(palette.item(r).data(Qt.ItemDataRole.UserRole + 1))).name for r in range(palette.count())]
    assert names == ["mine.onnx", "detector.onnx", "heavy.onnx"], "imported models come first"
    text = palette.item(0).text()
    assert "3 classes" in text and "→ " in text and "default rule" in text, text
    assert "card rule" in palette.item(1).text() and "2 classes" in palette.item(1).text()
    palette.show_bundled_action.setChecked(False)
    assert [palette.item(r).isHidden() for r in range(3)] == [False, True, True]
    palette.show_bundled_action.setChecked(True)
    assert not any(palette.item(r).isHidden() for r in range(3))


def test_six_stages_three_in_one_lane_nothing_overlaps_and_the_lanes_fit_the_default_window(
        live: LiveConsole, qtbot: QtBot, tmp_path: Path) -> None:
    from itertools import combinations

    from PySide6.QtCore import QRectF

    from app.core import InsertStage, stage_from_card

    window = fresh_window(live, qtbot)
    window.resize(1366, 768)
    canvas = window.canvas
    card = read_model_card(BUNDLED / "detector.onnx")
    for i, tier in enumerate(("device", "device", "device", "edge", "edge", "cloud")):
        stage = stage_from_card(card, f"s{i + 1}", Placement(tier=tier))
        assert canvas.push(InsertStage(i, stage, card))
    qtbot.waitUntil(lambda: len(canvas.chips) == 6, timeout=5_000)
    canvas.relayout()
    boxes: list[tuple[str, QRectF]] = []
    boxes += [(f"chip {sid}", chip.sceneBoundingRect()) for sid, chip in canvas.chips.items()]
    boxes += [(f"label {sid}", link.label_rect()) for sid, link in canvas.links.items()]
    boxes += [(f"card {key[:8]}", c.sceneBoundingRect()) for key, c in canvas.cards.items()]
    overlaps = [(a, b) for (a, ra), (b, rb) in combinations(boxes, 2) if ra.adjusted(1, 1, -1, -1).intersects(rb)]
    assert overlaps == [], overlaps
    # all three lanes are on screen at the default window size (fitted, not cut off)
    shown = canvas.mapToScene(canvas.viewport().rect()).boundingRect()
    for tier, lane in canvas.lanes.items():
        assert shown.contains(lane.rect.adjusted(1, 1, -1, -1)), (tier, lane.rect, shown)
    for key, node_card in canvas.cards.items():
        assert shown.contains(node_card.sceneBoundingRect()), f"node card {key[:8]} cut off"
    assert canvas.transform().m11() >= 0.6
    save_screenshot(window, tmp_path, "compose-six-stages")
    window.console.pipeline.document.stages.clear()   # leave the shared console's pipeline empty
    canvas.undo_stack.setClean()


def test_small_things_f1_lists_actions_export_uses_the_tab_showing_focus_returns_to_the_canvas(
        live: LiveConsole, qtbot: QtBot, tmp_path: Path) -> None:
    from PySide6.QtGui import QImage

    from app.core import InsertStage, stage_from_card

    window = fresh_window(live, qtbot)
    canvas = window.canvas
    card = read_model_card(BUNDLED / "detector.onnx")
    assert canvas.push(InsertStage(0, stage_from_card(card, "detector-2", Placement(tier="device")), card))
    canvas.undo_stack.undo()
    text = window.show_shortcuts().findChild(QPlainTextEdit).toPlainText()
    assert "Add stage" not in text and "    Undo " in text and "    Redo " in text
    # the dialog closes: the keys go back to the canvas
    window.dialogs[-1].close()
    qtbot.waitUntil(lambda: window.focusWidget() is canvas, timeout=5_000)
    # export on the pipeline tab writes the pipeline tab, not the dashboard
    window.show_pipeline()
    dialog = window.export_png_dialog()
    assert "pipeline" in dialog.windowTitle().lower()
    target = tmp_path / "pipeline.png"
    dialog.fileSelected.emit(str(target))
    dialog.close()
    qtbot.waitUntil(target.exists, timeout=10_000)
    assert window.tabs.currentWidget() is window.editor, "exporting did not switch tabs"
    assert QImage(str(target)).size() == window.editor.size()
    window.console.pipeline.document.stages.clear()
    canvas.undo_stack.clear()
