"""The console's main window: fleet panel, pipeline canvas, live dashboard and event log.

Layout for a 1366×768 field laptop: the fleet panel docks left, the event log docks at the bottom,
the pipeline editor and the dashboard are tabs in the middle. F11 is wall mode: full screen,
dashboard only, large type; F11 or Escape leaves it. Every action is in a menu with its shortcut,
so the keyboard reaches everything; Help → Keyboard shortcuts (F1) lists them. Window geometry,
docks, the tab, the dashboard window and the splitter are remembered (QSettings).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, Slot
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence, QShowEvent
from PySide6.QtWidgets import (
    QDialog,
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app._problem_words import explain_all
from app._replay_qt import ReplayModel
from app.gallery import GalleryModel
from app.pipeline_file import PipelineError
from app.qt import QtConsole
from widgets import _theme as theme
from widgets._clock import FrameClock
from widgets._dashboard import Dashboard
from widgets._deploy_dialog import DeployDialog
from widgets._event_log import EventLog
from widgets._fleet_panel import FleetPanel
from widgets._gallery import Gallery
from widgets._node_dialogs import AddNodeDialog, EnrollDialog, Enroller, NodeDetailDialog
from widgets._pipeline_editor import PipelineEditor
from widgets._whatif import PolicyPusher

SETTINGS_VERSION = 1


class MainWindow(QMainWindow):
    """The whole console around one QtConsole."""

    def __init__(self, console: QtConsole, *, settings: QSettings | None = None,
                 palette_models: Sequence[Path | str] = (), enroller: Enroller | None = None,
                 policy_pusher: PolicyPusher | None = None, frame_hz: float = 15.0,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.console = console
        self.settings = settings if settings is not None else QSettings("tierdeck", "console")
        self.enroller = enroller
        self.wall = False
        self._before_wall: bytes | None = None
        self._restored = False
        self.dialogs: list[QDialog] = []
        self.unsaved_box: QMessageBox | None = None
        self._after_save: object = None
        self.setWindowTitle("tierdeck console")
        self.setWindowIcon(theme.icon("tierdeck"))
        self.setDockOptions(QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks)

        self.clock = FrameClock(console.telemetry, frame_hz, self)
        self.replay = ReplayModel(console)
        self.fleet_panel = FleetPanel(console.fleet, console.telemetry, self.clock, self, replay=self.replay)
        self.editor = PipelineEditor(console.pipeline, console.fleet, console.telemetry, self.clock, policy_pusher,
                                     self, replay=self.replay)
        self.canvas = self.editor.canvas
        self.dashboard = Dashboard(console.fleet, console.telemetry, self.clock, console.pipeline, console.files, self,
                                   replay=self.replay)
        self.event_log = EventLog(console.events, self, replay=self.replay)
        self.gallery_model = GalleryModel(console)
        self.gallery = Gallery(self.gallery_model, self)

        self.tabs = QTabWidget(self)
        self.tabs.addTab(self.editor, theme.icon("stage"), "&Pipeline")
        self.tabs.addTab(self.dashboard, theme.icon("running"), "&Dashboard")
        self.tabs.addTab(self.gallery, theme.icon("info"), "&Hard examples")
        self.tabs.setDocumentMode(True)
        self.setCentralWidget(self.tabs)
        self.fleet_dock = QDockWidget("Fleet", self)
        self.fleet_dock.setObjectName("fleet_dock")
        self.fleet_dock.setWidget(self.fleet_panel)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, self.fleet_dock)
        self.events_dock = QDockWidget("Events", self)
        self.events_dock.setObjectName("events_dock")
        self.events_dock.setWidget(self.event_log)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.events_dock)
        self.resizeDocks([self.fleet_dock], [330], Qt.Orientation.Horizontal)
        self.resizeDocks([self.events_dock], [130], Qt.Orientation.Vertical)

        self.fleet_label = QLabel(self)
        self.rate_label = QLabel(self)
        self.deploy_label = QLabel(self)
        for label in (self.deploy_label, self.rate_label, self.fleet_label):
            self.statusBar().addPermanentWidget(label)
        self._samples_seen = 0
        self._make_menus()
        self._connect()
        self._update_fleet_label()
        for path in palette_models:
            console.pipeline.import_model(path)
        self.resize(1366, 768)
        # Start on the canvas, not in the first text field of the focus chain (the fleet filter): a caret
        # blinking there repainted the fleet dock twice a second for as long as the console stayed open.
        self.canvas.setFocus(Qt.FocusReason.OtherFocusReason)

    # ----- menus -----------------------------------------------------------------------------------------------
    def _action(self, text: str, shortcut: str | Sequence[str] | None, slot: object, tip: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut:
            keys = [shortcut] if isinstance(shortcut, str) else list(shortcut)
            action.setShortcuts([QKeySequence(k) for k in keys])
        if tip:
            action.setStatusTip(tip)
            action.setToolTip(tip)
        action.triggered.connect(slot)  # type: ignore[arg-type]
        self.addAction(action)
        return action

    def _make_menus(self) -> None:
        bar = self.menuBar()
        self.open_action = self._action("&Open pipeline…", "Ctrl+O", self.open_pipeline_dialog,
                                        "Open a *.pipeline.json file")
        self.save_action = self._action("&Save pipeline", "Ctrl+S", self.save_pipeline, "Save the pipeline file")
        self.save_as_action = self._action("Save pipeline &as…", "Ctrl+Shift+S", self.save_pipeline_as,
                                           "Save the pipeline under a new name")
        self.import_action = self._action("&Import ONNX model…", "Ctrl+I", self.import_model_dialog,
                                          "Add an ONNX model to the stage palette")
        self.export_png_action = self.dashboard.export_png_action
        self.export_png_action.triggered.connect(self.export_png_dialog)
        self.export_csv_action = self.dashboard.export_csv_action
        self.export_csv_action.triggered.connect(self.export_csv_dialog)
        self.addAction(self.export_png_action)
        self.addAction(self.export_csv_action)
        self.quit_action = self._action("&Quit", "Ctrl+Q", self.close, "Close the console (the fleet keeps running)")
        file_menu = bar.addMenu("&File")
        for a in (self.open_action, self.save_action, self.save_as_action, self.import_action, None,
                  self.export_png_action, self.export_csv_action, None, self.quit_action):
            file_menu.addSeparator() if a is None else file_menu.addAction(a)

        edit_menu = bar.addMenu("&Edit")
        canvas_actions = self.canvas.edit_actions()
        for a in canvas_actions[:2]:
            edit_menu.addAction(a)
            self.addAction(a)
        edit_menu.addSeparator()
        for a in canvas_actions[2:]:
            edit_menu.addAction(a)
            self.addAction(a)

        fleet_menu = bar.addMenu("F&leet")
        for a in self.fleet_panel.actions_for_menu():
            fleet_menu.addAction(a)
            self.addAction(a)
        if self.enroller is None:
            self.fleet_panel.enroll_action.setToolTip("Enrolment needs the fleet CA: see Help (opens with an "
                                                      "explanation)")

        self.deploy_action = self._action("&Deploy pipeline…", "Ctrl+D", self.deploy_dialog,
                                          "Plan the pipeline onto the fleet, show the diff, deploy all or nothing")
        self.whatif_action = self._action("&What-if for the selected link", "Ctrl+T", self.focus_whatif,
                                          "Move to the what-if plot of the selected escalation link")
        deploy_menu = bar.addMenu("&Deploy")
        deploy_menu.addAction(self.deploy_action)
        deploy_menu.addAction(self.whatif_action)

        self.pipeline_tab_action = self._action("&Pipeline", "Ctrl+Shift+P", self.show_pipeline, "Show the canvas")
        self.dashboard_tab_action = self._action("Dash&board", "Ctrl+Shift+D", self.show_dashboard,
                                                 "Show the live dashboard")
        self.wall_action = self._action("&Wall mode", "F11", self.toggle_wall,
                                        "Full screen dashboard with large type (F11 or Esc to leave)")
        self.wall_action.setCheckable(True)
        self.leave_wall_action = QAction("Leave wall mode", self)
        self.leave_wall_action.setShortcut(QKeySequence("Esc"))
        self.leave_wall_action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        self.leave_wall_action.setEnabled(False)
        self.leave_wall_action.triggered.connect(self.leave_wall)
        self.addAction(self.leave_wall_action)
        self.events_focus_action = self._action("Go to &events", "Alt+3", self.focus_events, "Move to the event log")
        self.palette_focus_action = self._action("Go to stage p&alette", "Alt+4", self.focus_palette,
                                                 "Move to the stage palette (Enter on a model places it)")
        self.replay_action = self._action("&Replay history / back to live", "Ctrl+Shift+R", self.toggle_replay,
                                          "Play back a past window from the console database, or go back to live")
        view_menu = bar.addMenu("&View")
        self.gallery_tab_action = self._action("&Hard examples", "Ctrl+Shift+H", self.show_gallery,
                                               "Rows the cascade escalated or disagreed on: gallery and export")
        for a in (self.pipeline_tab_action, self.dashboard_tab_action, self.gallery_tab_action, None,
                  *self.dashboard.window_actions, self.replay_action, None,
                  self.fleet_panel.fleet_view_action, self.canvas.fit_action, self.canvas.focus_action,
                  self.events_focus_action,
                  self.palette_focus_action, self.editor.stage_palette.show_bundled_action, None):
            view_menu.addSeparator() if a is None else view_menu.addAction(a)
        for a in self.dashboard.window_actions:
            self.addAction(a)
        fleet_toggle = self.fleet_dock.toggleViewAction()
        fleet_toggle.setText("Show &fleet panel")
        fleet_toggle.setShortcut(QKeySequence("Ctrl+Shift+F"))
        events_toggle = self.events_dock.toggleViewAction()
        events_toggle.setText("Show &event log")
        events_toggle.setShortcut(QKeySequence("Ctrl+Shift+L"))
        for a in (fleet_toggle, events_toggle):
            view_menu.addAction(a)
            self.addAction(a)
        view_menu.addSeparator()
        view_menu.addAction(self.wall_action)

        self.shortcuts_action = self._action("&Keyboard shortcuts", "F1", self.show_shortcuts,
                                             "Every action and its keys")
        self.about_action = self._action("&About tierdeck", None, self.show_about)
        help_menu = bar.addMenu("&Help")
        help_menu.addAction(self.shortcuts_action)
        help_menu.addAction(self.about_action)

    def all_actions(self) -> list[QAction]:
        """Every action of the menus (for the shortcut list and tests)."""
        out: list[QAction] = []
        for menu_action in self.menuBar().actions():
            menu = menu_action.menu()
            if not isinstance(menu, QMenu):
                continue
            out += [a for a in menu.actions() if not a.isSeparator()]
        return out

    # ----- wiring ----------------------------------------------------------------------------------------------
    def _connect(self) -> None:
        c = self.console
        self.fleet_panel.add_node_requested.connect(self.add_node_dialog)
        self.fleet_panel.enroll_requested.connect(self.enroll_dialog)
        self.fleet_panel.details_requested.connect(self.node_details)
        self.fleet_panel.forget_requested.connect(self.confirm_forget)
        self.fleet_panel.nodes_selected.connect(self.dashboard.set_selected_nodes)
        for source in (self.canvas, self.dashboard, self.editor.whatif, self.gallery):
            source.status_message.connect(self._status)
        self.editor.whatif.deploy_requested.connect(self.deploy_dialog)
        self.canvas.deploy_requested.connect(self.deploy_dialog)
        self.editor.import_button.clicked.connect(self.import_model_dialog)
        c.fleet.node_added.connect(self._update_fleet_label)
        c.fleet.node_removed.connect(self._update_fleet_label)
        c.fleet.state_changed.connect(self._update_fleet_label)
        c.deployments.busy_changed.connect(self._busy)
        c.pipeline.pipeline_loaded.connect(self._loaded)
        c.pipeline.load_failed.connect(self._load_failed)
        c.pipeline.saved.connect(self._saved)
        c.pipeline.save_failed.connect(self._save_failed)
        c.pipeline.import_failed.connect(self._import_failed)
        self.canvas.undo_stack.cleanChanged.connect(self._clean_changed)
        self.clock.second_ticked.connect(self._second)
        self.tabs.currentChanged.connect(self._tab_changed)

    @Slot(str)
    def _status(self, text: str) -> None:
        self.statusBar().showMessage(text, 10_000)

    @Slot()
    def _update_fleet_label(self, *args: object) -> None:
        nodes = self.console.fleet.nodes()
        counts: dict[str, int] = {}
        for n in nodes:
            counts[str(n.state)] = counts.get(str(n.state), 0) + 1
        parts = [f"✔ {counts.get('online', 0)} online"]
        if counts.get("degraded"):
            parts.append(f"⚠ {counts['degraded']} degraded")
        if counts.get("offline"):
            parts.append(f"✖ {counts['offline']} offline")
        self.fleet_label.setText(f"{len(nodes)} nodes: " + "  ".join(parts))

    @Slot()
    def _second(self) -> None:
        samples = self.console.telemetry.samples
        rate = samples - self._samples_seen
        self._samples_seen = samples
        self.rate_label.setText(f"telemetry {rate:,} samples/s")

    @Slot(bool)
    def _busy(self, busy: bool) -> None:
        self.deploy_label.setText("⟳ deploying…" if busy else "")

    @Slot(int)
    def _tab_changed(self, _index: int) -> None:
        self.clock.request_frame()
        if self.tabs.currentWidget() is self.gallery:
            self.gallery_model.refresh()  # pulled on demand, never polled

    # ----- files -----------------------------------------------------------------------------------------------
    def _file_dialog(self, title: str, filters: str, save: bool, slot: object, suffix: str = "") -> QFileDialog:
        dialog = QFileDialog(self, title)
        dialog.setNameFilter(filters)
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave if save else QFileDialog.AcceptMode.AcceptOpen)
        dialog.setFileMode(QFileDialog.FileMode.AnyFile if save else QFileDialog.FileMode.ExistingFile)
        if suffix:
            dialog.setDefaultSuffix(suffix)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.fileSelected.connect(slot)  # type: ignore[arg-type]
        dialog.open()
        return dialog

    @Slot()
    def open_pipeline_dialog(self) -> QFileDialog | QMessageBox:
        """Choose a pipeline file (the model loads it off the GUI thread); unsaved changes are asked about first."""
        if self.is_dirty():
            return self.ask_unsaved("open", self.open_pipeline_dialog)
        return self._file_dialog("Open pipeline", "Pipelines (*.pipeline.json *.json)", False, self.open_pipeline)

    # ----- document safety -------------------------------------------------------------------------------------
    def is_dirty(self) -> bool:
        """True while the pipeline has edits that are not saved."""
        return not self.canvas.undo_stack.isClean()

    def ask_unsaved(self, doing: str, then: object) -> QMessageBox:
        """Save / Discard / Cancel before `doing` (close, open); `then()` runs after Save (once saved) or Discard."""
        doc = self.console.pipeline.document
        name = doc.path.name if doc.path else doc.name
        box = QMessageBox(QMessageBox.Icon.Warning, "Unsaved changes",
                          f"The pipeline {name} has changes that are not saved.\n"
                          f"Save them before you {'close the console' if doing == 'close' else 'open another'}?",
                          QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                          | QMessageBox.StandardButton.Cancel, self)
        box.setDefaultButton(QMessageBox.StandardButton.Save)
        box.setEscapeButton(QMessageBox.StandardButton.Cancel)
        box.setAccessibleName("Unsaved changes")
        box.finished.connect(lambda result, t=then: self._unsaved_answered(result, t))
        self.unsaved_box = box
        self._keep(box)
        return box

    def _unsaved_answered(self, result: int, then: object) -> None:
        self.unsaved_box = None
        if result == QMessageBox.StandardButton.Save:
            self._after_save = then
            self.save_pipeline()
        elif result == QMessageBox.StandardButton.Discard:
            self.canvas.undo_stack.setClean()
            then()  # type: ignore[operator]
        else:
            self._status("Kept the window and the unsaved changes")
            self.canvas.setFocus()

    @Slot(str)
    def open_pipeline(self, path: str) -> None:
        """Load a pipeline file."""
        self._status(f"Opening {path}…")
        self.console.pipeline.open(path)

    @Slot()
    def save_pipeline(self) -> None:
        """Save to the pipeline's file (Save as… when it has none)."""
        path = self.console.pipeline.document.path
        if path is None:
            self.save_pipeline_as()
        else:
            self.console.pipeline.save(path)

    @Slot()
    def save_pipeline_as(self) -> QFileDialog:
        """Choose where to save the pipeline."""
        dialog = self._file_dialog("Save pipeline as", "Pipelines (*.pipeline.json)", True,
                                   self.console.pipeline.save_as, "pipeline.json")
        dialog.rejected.connect(self._save_cancelled)
        return dialog

    @Slot()
    def _save_cancelled(self) -> None:
        self._after_save = None

    @Slot()
    def import_model_dialog(self) -> QFileDialog:
        """Choose an ONNX model for the palette."""
        return self._file_dialog("Import ONNX model", "ONNX models (*.onnx)", False, self.console.pipeline.import_model)

    @Slot()
    def export_png_dialog(self) -> QFileDialog:
        """Choose where to write the tab that is showing (pipeline canvas or dashboard) as PNG."""
        if self.tabs.currentWidget() is self.editor:
            return self._file_dialog("Export pipeline view as PNG", "PNG images (*.png)", True,
                                     self.export_pipeline_png, "png")
        return self._file_dialog("Export view as PNG", "PNG images (*.png)", True, self.dashboard.export_png, "png")

    @Slot(str)
    def export_pipeline_png(self, path: str) -> None:
        """Write the pipeline tab as PNG (the dashboard's writer encodes and writes it off the GUI thread)."""
        self.dashboard.writer.write_image(path, self.editor.grab().toImage())

    @Slot()
    def export_csv_dialog(self) -> QFileDialog:
        """Choose where to write the dashboard view's data as CSV."""
        return self._file_dialog("Export view as CSV", "CSV (*.csv)", True, self.dashboard.export_csv, "csv")

    @Slot(str)
    def _loaded(self, path: str) -> None:
        self._status(f"Opened {path}")
        self._title()
        self.show_pipeline()

    @Slot(str)
    def _load_failed(self, reason: str) -> None:
        self._status("Could not open the pipeline")
        self._message(QMessageBox.Icon.Critical, "Could not open the pipeline", reason)

    @Slot(str)
    def _saved(self, path: str) -> None:
        self.canvas.undo_stack.setClean()
        self._status(f"Saved {path}")
        self._title()
        then, self._after_save = self._after_save, None
        if then is not None:
            then()  # type: ignore[operator]

    @Slot(str)
    def _save_failed(self, reason: str) -> None:
        self._after_save = None
        self._message(QMessageBox.Icon.Critical, "Could not save the pipeline", reason)

    @Slot(str)
    def _import_failed(self, reason: str) -> None:
        self._message(QMessageBox.Icon.Warning, "Could not import the model", reason)

    @Slot(bool)
    def _clean_changed(self, clean: bool) -> None:
        self.setWindowModified(not clean)
        self._title()

    def _title(self) -> None:
        doc = self.console.pipeline.document
        name = doc.path.name if doc.path else doc.name
        self.setWindowTitle(f"{name}[*] — tierdeck console")

    def _message(self, icon: QMessageBox.Icon, title: str, text: str) -> QMessageBox:
        box = QMessageBox(icon, title, text, QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()
        return box

    # ----- fleet dialogs -----------------------------------------------------------------------------------------
    def _keep(self, dialog: QDialog) -> QDialog:
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.dialogs.append(dialog)
        dialog.finished.connect(lambda _=0, d=dialog: self.dialogs.remove(d) if d in self.dialogs else None)
        dialog.finished.connect(self._refocus)
        dialog.open()
        return dialog

    @Slot()
    def _refocus(self) -> None:
        """After a dialog the keys go back to where the work is: the canvas on the pipeline tab."""
        if self.tabs.currentWidget() is self.editor:
            self.canvas.setFocus(Qt.FocusReason.OtherFocusReason)
        else:
            self.tabs.currentWidget().setFocus(Qt.FocusReason.OtherFocusReason)

    @Slot()
    def add_node_dialog(self) -> AddNodeDialog:
        """Add a node by address."""
        dialog = AddNodeDialog(self.console.fleet, self)
        dialog.node_added.connect(lambda key: self._status(f"Added {key.removeprefix('addr:')}; connecting…"))
        self._keep(dialog)
        return dialog

    @Slot()
    def enroll_dialog(self) -> EnrollDialog:
        """Enrol a node with its pairing code."""
        keys = self.fleet_panel.selected_keys()
        node = self.console.fleet.node(keys[0]) if keys else None
        dialog = EnrollDialog(self.enroller, self, node.address if node is not None else "")
        dialog.enrolled.connect(self._status)
        self._keep(dialog)
        return dialog

    @Slot(str)
    def node_details(self, key: str) -> NodeDetailDialog:
        """A node's details (live)."""
        dialog = NodeDetailDialog(key, self.console.fleet, self.console.events, self.console.telemetry, self)
        self._keep(dialog)
        return dialog

    @Slot(str)
    def confirm_forget(self, key: str) -> QMessageBox | None:
        """Ask before forgetting a node."""
        node = self.console.fleet.node(key)
        if node is None:
            return None
        box = QMessageBox(QMessageBox.Icon.Question, "Forget node",
                          f"Forget {node.name} ({node.address})?\nThe node keeps running; the console stops "
                          "watching it until it is discovered or added again.",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel, self)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.finished.connect(lambda result, k=key: self._forget_answered(k, result))
        self._keep(box)
        return box

    def _forget_answered(self, key: str, result: int) -> None:
        if result == QMessageBox.StandardButton.Yes:
            self.console.fleet.forget(key)
            self._status(f"Forgot {key}")

    # ----- deploy ------------------------------------------------------------------------------------------------
    @Slot()
    def deploy_dialog(self) -> DeployDialog | None:
        """Plan and deploy the pipeline on the canvas."""
        try:
            pipeline = self.console.pipeline.pipeline()
        except PipelineError as exc:
            self.show_pipeline()
            advice = explain_all(exc.problems, self.console.pipeline.document.stage_ids())
            box = self._message(QMessageBox.Icon.Warning, "The pipeline cannot be deployed yet",
                                "\n".join(f"• {a}" for a in advice))
            box.setDetailedText(str(exc))
            first = next((a.stage_id for a in advice if a.stage_id), "")
            if first:
                self.canvas.select_stage(first)
            return None
        dialog = DeployDialog(self.console.deployments, pipeline, self)
        self._keep(dialog)
        return dialog

    @Slot()
    def focus_whatif(self) -> None:
        """Show the what-if plot of the selected link and move the focus there."""
        self.show_pipeline()
        self.editor.whatif.set_link(self.canvas.selected_stage() if self.canvas.selected_stage() in self.canvas.links
                                    else self.editor.whatif.stage_id)
        self.editor.whatif.proposal.setFocus()

    # ----- view --------------------------------------------------------------------------------------------------
    @Slot()
    def show_pipeline(self) -> None:
        """The pipeline tab."""
        self.tabs.setCurrentWidget(self.editor)

    @Slot()
    def show_dashboard(self) -> None:
        """The dashboard tab."""
        self.tabs.setCurrentWidget(self.dashboard)

    @Slot()
    def show_gallery(self) -> None:
        """The hard-example gallery tab (pulls the nodes' ledgers)."""
        self.tabs.setCurrentWidget(self.gallery)

    @Slot()
    def focus_palette(self) -> None:
        """Focus the stage palette (its first model when none is current)."""
        self.show_pipeline()
        palette = self.editor.stage_palette
        if palette.currentItem() is None and palette.count():
            palette.setCurrentRow(0)
        palette.setFocus(Qt.FocusReason.ShortcutFocusReason)

    @Slot()
    def focus_events(self) -> None:
        """Focus the event log."""
        self.events_dock.show()
        self.event_log.view.setFocus()

    @Slot()
    def toggle_replay(self) -> None:
        """Ctrl+Shift+R: replay the window chosen on the dashboard's replay bar, or go back to live."""
        self.show_dashboard()
        if self.dashboard.replay_bar is not None:
            self.dashboard.replay_bar.toggle_mode()

    @Slot()
    def toggle_wall(self) -> None:
        """F11: enter or leave wall mode."""
        if self.wall:
            self.leave_wall()
        else:
            self.enter_wall()

    def enter_wall(self) -> None:
        """Full screen dashboard, large type, no docks or menus."""
        if self.wall:
            return
        self.wall = True
        self._before_wall = bytes(self.saveState(SETTINGS_VERSION).data())
        self._was_maximized = self.isMaximized()
        self.fleet_dock.hide()
        self.events_dock.hide()
        self.menuBar().hide()
        self.tabs.tabBar().hide()
        self.show_dashboard()
        self.dashboard.set_wall(True)
        self.wall_action.setChecked(True)
        self.leave_wall_action.setEnabled(True)
        self._status("Wall mode: F11 or Esc to leave")
        self.showFullScreen()
        self.clock.request_frame()

    @Slot()
    def leave_wall(self) -> None:
        """Back to the normal layout."""
        if not self.wall:
            return
        self.wall = False
        self.dashboard.set_wall(False)
        self.menuBar().show()
        self.tabs.tabBar().show()
        if self._before_wall is not None:
            self.restoreState(self._before_wall, SETTINGS_VERSION)
        self.wall_action.setChecked(False)
        self.leave_wall_action.setEnabled(False)
        if getattr(self, "_was_maximized", False):
            self.showMaximized()
        else:
            self.showNormal()
        self.clock.request_frame()

    @Slot()
    def show_shortcuts(self) -> QDialog:
        """A dialog listing every action with its keys."""
        dialog = QDialog(self)
        dialog.setWindowTitle("Keyboard shortcuts")
        text = QPlainTextEdit(dialog)
        text.setReadOnly(True)
        lines = []
        for menu_action in self.menuBar().actions():
            menu = menu_action.menu()
            if not isinstance(menu, QMenu):
                continue
            lines.append(menu_action.text().replace("&", ""))
            for a in menu.actions():
                if a.isSeparator():
                    continue
                keys = ", ".join(k.toString(QKeySequence.SequenceFormat.NativeText) for k in a.shortcuts())
                # undo/redo actions carry the last edit in their text ("Redo Add stage …"): list the action
                name = {id(self.canvas.undo_action): "Undo", id(self.canvas.redo_action): "Redo"}.get(
                    id(a), a.text().replace("&", ""))
                lines.append(f"    {name:<40} {keys}")
        lines += ["Canvas", "    Tab / Shift+Tab                          next / previous stage",
                  "    Enter in the palette                     place the model (menu of targets with fit)",
                  "    Enter / Esc in the threshold editor      apply / cancel",
                  "Dashboard replay", "    Space                                    play / pause",
                  "    Left / Right (Shift: 1 min)              step 10 s back / forward",
                  "    [ / ]                                    slower / faster (1× … 60×)"]
        text.setPlainText("\n".join(lines))
        font = text.font()
        font.setFamily("DejaVu Sans Mono")
        text.setFont(font)
        layout = QVBoxLayout(dialog)
        layout.addWidget(text)
        dialog.resize(720, 560)
        self._keep(dialog)
        return dialog

    @Slot()
    def show_about(self) -> QMessageBox:
        """About the console."""
        return self._message(QMessageBox.Icon.Information, "About tierdeck",
                             "tierdeck: operations console for cascaded inference at the edge.\n"
                             "Find nodes, place stages on tiers, deploy, watch the system live.")

    # ----- settings ----------------------------------------------------------------------------------------------
    def restore_settings(self) -> None:
        """Geometry, docks, tab, dashboard window and splitter from the last session."""
        s = self.settings
        geometry = s.value("main/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)  # type: ignore[arg-type]
        state = s.value("main/state")
        if state is not None:
            self.restoreState(state, SETTINGS_VERSION)  # type: ignore[arg-type]
        splitter = s.value("main/splitter")
        if splitter is not None:
            self.editor.splitter.restoreState(splitter)  # type: ignore[arg-type]
        tab = s.value("main/tab")
        if tab is not None:
            self.tabs.setCurrentIndex(int(tab))  # type: ignore[call-overload]
        window = s.value("dashboard/window")
        if window is not None:
            self.dashboard.set_window(float(window))  # type: ignore[arg-type]

    def save_settings(self) -> None:
        """Remember geometry, docks, tab, dashboard window and splitter."""
        if self.wall:
            self.leave_wall()
        s = self.settings
        s.setValue("main/geometry", self.saveGeometry())
        s.setValue("main/state", self.saveState(SETTINGS_VERSION))
        s.setValue("main/splitter", self.editor.splitter.saveState())
        s.setValue("main/tab", self.tabs.currentIndex())
        s.setValue("dashboard/window", self.dashboard.window_s)
        s.sync()

    def showEvent(self, event: QShowEvent) -> None:
        """First show: restore the settings and start the frame clock."""
        if not self._restored:
            self._restored = True
            self.restore_settings()
        super().showEvent(event)
        if not self.clock.running:
            self.clock.start()
            self.clock.request_frame()

    def closeEvent(self, event: QCloseEvent) -> None:
        """Ask about unsaved changes (Save / Discard / Cancel), then remember the layout and stop the clock."""
        if self.is_dirty():
            event.ignore()
            if self.unsaved_box is None:
                self.ask_unsaved("close", self.close)
            return
        self.save_settings()
        self.clock.stop()
        super().closeEvent(event)
