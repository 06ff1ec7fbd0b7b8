"""The main window: keyboard reach, remembered layout, wall mode, file dialogs opened with open(), the what-if
plot's arithmetic and wiring, and the `tierdeck console` entry point on a live node."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from agents import running_agent
from PySide6.QtCore import QSettings
from PySide6.QtGui import QKeySequence
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QFileDialog, QMessageBox, QPlainTextEdit
from pytestqt.qtbot import QtBot
from test_app_support import started_core, synthetic_sample, write_pipeline
from test_widgets_support import assert_not_blank, dispose, small_model

from app.pipeline_file import Rule, load_pipeline
from app.qt import QtConsole
from cli import build_parser
from widgets import MainWindow, apply_theme, escalation_curve

ALLOWED_WITHOUT_SHORTCUT = {"About tierdeck"}


@pytest.fixture
def console(tmp_path: Path, qapp: QApplication) -> Iterator[QtConsole]:
    """A console core with no nodes (fast), and its Qt models."""
    apply_theme(qapp)
    with started_core(tmp_path / "console.sqlite") as core:
        qt = QtConsole(core)
        yield qt
        qt.close()


def make_window(console: QtConsole, settings: QSettings, qtbot: QtBot, **kwargs: object) -> MainWindow:
    window = MainWindow(console, settings=settings, **kwargs)  # type: ignore[arg-type]
    window.show()
    qtbot.waitExposed(window)
    return window


def ini(tmp_path: Path) -> QSettings:
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


def test_every_action_is_in_a_menu_with_a_unique_shortcut(console: QtConsole, qtbot: QtBot, tmp_path: Path) -> None:
    window = make_window(console, ini(tmp_path), qtbot)
    try:
        actions = window.all_actions()
        assert len(actions) > 30
        seen: dict[str, str] = {}
        for action in actions:
            name = action.text().replace("&", "")
            if name in ALLOWED_WITHOUT_SHORTCUT:
                continue
            keys = [k.toString() for k in action.shortcuts()]
            assert keys, f"{name} has no shortcut"
            for key in keys:
                assert key not in seen or seen[key] == name, f"{key} is both {seen.get(key)} and {name}"
                seen[key] = name
        for expected in ("Ctrl+Z", "Ctrl+Shift+Z", "F11", "Ctrl+D", "Ctrl+N", "Ctrl+Shift+N", "Ctrl+O", "Ctrl+S",
                         "Ctrl+E", "Ctrl+Shift+E", "Ctrl+1", "Ctrl+4", "F2", "Ctrl+P", "Del", "F1"):
            assert expected in seen, expected
        # the help lists them
        dialog = window.show_shortcuts()
        text = dialog.findChild(QPlainTextEdit).toPlainText()
        assert "Wall mode" in text and "F11" in text and "Undo" in text
    finally:
        dispose(window)


def test_layout_is_remembered(console: QtConsole, qtbot: QtBot, tmp_path: Path) -> None:
    settings = ini(tmp_path)
    first = make_window(console, settings, qtbot)
    first.resize(790, 660)
    first.show_dashboard()
    first.dashboard.set_window(600.0)
    first.events_dock.hide()
    dispose(first)   # closeEvent saves
    second = make_window(console, ini(tmp_path), qtbot)
    try:
        assert (second.width(), second.height()) == (790, 660)
        assert second.tabs.currentWidget() is second.dashboard
        assert second.dashboard.window_s == 600.0 and second.dashboard.window_buttons.checkedId() == 1
        assert not second.events_dock.isVisible() and second.fleet_dock.isVisible()
    finally:
        dispose(second)


def test_wall_mode_with_f11_and_back(console: QtConsole, qtbot: QtBot, tmp_path: Path) -> None:
    window = make_window(console, ini(tmp_path), qtbot)
    try:
        window.activateWindow()
        qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5_000)
        normal = window.dashboard.tiles["nodes"].value.font().pointSizeF()
        QTest.keySequence(window, QKeySequence("F11"))
        assert window.wall and window.isFullScreen()
        assert not window.menuBar().isVisible() and not window.fleet_dock.isVisible()
        assert window.tabs.currentWidget() is window.dashboard
        assert window.dashboard.tiles["nodes"].value.font().pointSizeF() > normal * 1.5, "large type"
        QTest.keySequence(window, QKeySequence("Esc"))
        assert not window.wall and not window.isFullScreen()
        assert window.menuBar().isVisible() and window.fleet_dock.isVisible()
        assert window.dashboard.tiles["nodes"].value.font().pointSizeF() == pytest.approx(normal)
    finally:
        dispose(window)


def test_open_pipeline_through_a_file_dialog_opened_with_open(console: QtConsole, qtbot: QtBot,
                                                              tmp_path: Path) -> None:
    path = write_pipeline(tmp_path / "p")
    window = make_window(console, ini(tmp_path), qtbot)
    try:
        dialog = window.open_pipeline_dialog()
        assert isinstance(dialog, QFileDialog) and dialog.isVisible(), "open() returned at once: no nested loop"
        with qtbot.waitSignal(console.pipeline.pipeline_loaded, timeout=20_000):
            dialog.fileSelected.emit(str(path))   # what the dialog emits when the operator picks the file
            dialog.close()
        assert [s.id for s in console.pipeline.stages()] == ["detector", "classifier", "heavy"]
        qtbot.waitUntil(lambda: set(window.canvas.chips) == {"detector", "classifier", "heavy"}, timeout=5_000)
        assert "test-chain.pipeline.json" in window.windowTitle()
        # save as…, and import a model into the palette, through the same kind of dialog
        target = tmp_path / "saved" / "copy.pipeline.json"
        target.parent.mkdir()
        save = window.save_pipeline_as()
        with qtbot.waitSignal(console.pipeline.saved, timeout=20_000):
            save.fileSelected.emit(str(target))
            save.close()
        # Save As names the pipeline after its new file (#18: it stayed "untitled" in the file and the deploy dialog)
        assert load_pipeline(target).name == "copy" and "copy.pipeline.json" in window.windowTitle()
        assert console.pipeline.document.name == "copy"
        model = small_model(tmp_path / "models", "extra.onnx")
        pick = window.import_model_dialog()
        with qtbot.waitSignal(console.pipeline.model_imported, timeout=20_000):
            pick.fileSelected.emit(str(model))
            pick.close()
        assert window.editor.stage_palette.card(str(model)) is not None
        # Ctrl+D opens the deploy dialog (the fleet is empty: the plan says why it cannot deploy)
        window.activateWindow()
        qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5_000)
        QTest.keySequence(window, QKeySequence("Ctrl+D"))
        deploy = [d for d in window.dialogs if d.windowTitle().startswith("Deploy")]
        assert deploy and deploy[0].isVisible()
        qtbot.waitUntil(lambda: "no reachable node in tier device" in deploy[0].banner_text(), timeout=20_000)
    finally:
        dispose(window)


# ----- what-if ---------------------------------------------------------------------------------------------

def test_escalation_curve_is_the_histogram_mass_on_the_escalating_side() -> None:
    uniform = np.ones(20)
    t = np.array([0.0, 0.25, 0.5, 0.6, 1.0])
    assert np.allclose(escalation_curve(uniform, "confidence_below", t), t)
    assert np.allclose(escalation_curve(uniform, "score_above", t), 1 - t)
    spike = np.zeros(20)
    spike[19] = 10     # every score in [0.95, 1.0]
    assert escalation_curve(spike, "confidence_below", [0.95])[0] == pytest.approx(0.0)
    assert escalation_curve(spike, "confidence_below", [0.975])[0] == pytest.approx(0.5)  # half the bin
    assert escalation_curve(np.zeros(20), "confidence_below", [0.5])[0] == 0.0


def test_what_if_plot_marks_the_threshold_and_prices_a_new_one(console: QtConsole, qtbot: QtBot,
                                                               tmp_path: Path) -> None:
    pushed: list[tuple[str, Rule]] = []

    def pusher(stage_id: str, rule: Rule) -> concurrent.futures.Future[dict[str, str]]:
        pushed.append((stage_id, rule))
        future: concurrent.futures.Future[dict[str, str]] = concurrent.futures.Future()
        future.set_result({"edge-1": ""})
        return future

    window = make_window(console, ini(tmp_path), qtbot, policy_pusher=pusher)
    try:
        with qtbot.waitSignal(console.pipeline.pipeline_loaded, timeout=20_000):
            window.open_pipeline(str(write_pipeline(tmp_path / "p", edge_threshold=0.6)))
        hist = np.zeros(20)
        hist[8:16] = [5, 10, 20, 40, 60, 80, 100, 85]   # confidences 0.40 .. 0.80
        base = synthetic_sample("edge-node", 1, 1_000, stage_id="classifier", inferences=400)
        stage = base.stages[0]._replace(score_kind="confidence", score_histogram=tuple(int(h) for h in hist),
                                        inferences_per_s=200.0)
        import time

        now_ms = int(time.time() * 1000)
        for seq in range(1, 4):
            console.telemetry.live.add(base._replace(seq=seq, ts_ms=now_ms - 3000 + seq * 500, stages=(stage,)))
        whatif = window.editor.whatif
        window.canvas.relayout()
        window.canvas.select_stage("classifier")
        assert whatif.stage_id == "classifier", "selecting a stage shows its outgoing link"
        assert whatif.current_line.isVisible() and whatif.current_line.value() == pytest.approx(0.6)
        x, _ = whatif.curve.getData()
        assert x is not None and len(x) == 201
        expected = escalation_curve(hist * 3, "confidence_below", [0.6])[0]
        assert whatif.escalation_at(0.6) == pytest.approx(expected)
        assert f"Now 0.60: {expected * 100:.1f} % escalate" in whatif.readout.text()
        whatif.proposal.setValue(0.7)
        assert whatif.proposal_line.value() == pytest.approx(0.7)
        new = escalation_curve(hist, "confidence_below", [0.7])[0]
        assert f"At 0.70: {new * 100:.1f} %" in whatif.readout.text()
        assert f"≈ {new * 200:,.1f}/s" in whatif.readout.text()
        # set it in the pipeline: an undoable SetRule
        whatif.set_button.click()
        assert console.pipeline.stage("classifier").rule.confidence_below == pytest.approx(0.7)
        window.canvas.undo_stack.undo()
        assert console.pipeline.stage("classifier").rule.confidence_below == pytest.approx(0.6)
        # push live: through the seam, with the same change in the pipeline
        whatif.proposal.setValue(0.65)
        whatif.push_button.click()
        # asked first: Cancel pushes nothing
        box = whatif.confirm_box
        assert box is not None and box.isVisible() and "0.650" in box.text()
        box.button(QMessageBox.StandardButton.Cancel).click()
        assert not pushed and console.pipeline.stage("classifier").rule.confidence_below == pytest.approx(0.6)
        whatif.push_button.click()
        assert whatif.confirm_box is not None
        whatif.confirm_box.button(QMessageBox.StandardButton.Yes).click()
        assert pushed and pushed[0][0] == "classifier" and pushed[0][1].confidence_below == pytest.approx(0.65)
        qtbot.waitUntil(lambda: "updated live on 1 node" in window.statusBar().currentMessage(), timeout=5_000)
        assert console.pipeline.stage("classifier").rule.confidence_below == pytest.approx(0.65)
    finally:
        dispose(window)


# ----- the entry point --------------------------------------------------------------------------------------

def test_tierdeck_console_command_starts_on_a_live_node(tmp_path: Path) -> None:
    # Its own process, as an operator starts it: a QApplication that ran exec() and quit() inside the test
    # process would leave later tests' queued deliveries unserved.
    with running_agent(tmp_path / "node", tier="edge", name="edge-1") as agent:
        shot = tmp_path / "console.png"
        env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
        done = subprocess.run([sys.executable, "-m", "cli", "console", "--db", str(tmp_path / "c.sqlite"),
                               "--node", agent.address, "--pipeline", str(write_pipeline(tmp_path / "p")),
                               "--exit-after", "4", "--screenshot", str(shot)],
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert_not_blank(shot)
    help_text = build_parser().format_help()
    assert "console" in help_text and "operations console" in help_text
