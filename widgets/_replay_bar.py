"""The replay bar on the dashboard: Live / Replay, the window to replay, a time slider, play/pause, speed, step.

In replay an amber banner names the replayed instant and says that the view is not live (and,
when the rollups stand in for deleted raw samples, says so); the controls drive the replay
model (app._replay_qt.ReplayModel), which reads the database — this widget only shows it.

Keys while the dashboard has focus: Space plays/pauses, Left/Right step 10 s (Shift: 1 min),
[ and ] change the speed. The main window's Ctrl+Shift+R switches between Live and Replay.
"""

from __future__ import annotations

import time
from datetime import datetime

from PySide6.QtCore import QDateTime, Qt, Slot
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDateTimeEdit,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from app._replay import SPEEDS, ReplayHistory
from app._replay_qt import ReplayModel
from widgets import _theme as theme

# (title, seconds, from a chosen start?)
RANGES = (("Last 1 h", 3600.0, False), ("Last 6 h", 6 * 3600.0, False), ("Last 24 h", 86400.0, False),
          ("1 h from…", 3600.0, True), ("6 h from…", 6 * 3600.0, True), ("24 h from…", 86400.0, True))
STEP_S = 10.0
BIG_STEP_S = 60.0

_BANNER = (f"QLabel#replayBanner {{ background: {theme.WARN}; color: #111; font-weight: bold; padding: 3px 8px;"
           " border-radius: 3px; }")
_LIVE = f"QLabel#liveBadge {{ color: {theme.OK}; font-weight: bold; padding: 3px 4px; }}"
# The whole track visible (the platform style draws only the part left of the handle on this dark theme).
_SLIDER = (f"QSlider#replaySlider::groove:horizontal {{ height: 6px; background: {theme.BORDER}; border-radius: 3px; }}"
           f"QSlider#replaySlider::sub-page:horizontal {{ background: {theme.ACCENT}; border-radius: 3px; }}"
           f"QSlider#replaySlider::handle:horizontal {{ width: 14px; margin: -5px 0; background: {theme.TEXT};"
           " border-radius: 7px; }")


class ReplayBar(QFrame):
    """Live / Replay switch and, in replay, the slider and the play controls of one replayed window."""

    def __init__(self, replay: ReplayModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.replay = replay
        self.setObjectName("replayBar")
        self._dragging = False

        self.live_button = QPushButton("● Live", self)
        self.replay_button = QPushButton("⟲ Replay", self)
        self.modes = QButtonGroup(self)
        for i, button in enumerate((self.live_button, self.replay_button)):
            button.setCheckable(True)
            button.setObjectName("windowButton")
            self.modes.addButton(button, i)
        self.live_button.setChecked(True)
        self.live_button.setToolTip("Show live telemetry (Ctrl+Shift+R)")
        self.replay_button.setToolTip("Play back a past window from the console database (Ctrl+Shift+R)")
        self.range_box = QComboBox(self)
        for title, _seconds, _custom in RANGES:
            self.range_box.addItem(title)
        self.range_box.setAccessibleName("Window to replay")
        self.start_edit = QDateTimeEdit(QDateTime.currentDateTime().addSecs(-3600), self)
        self.start_edit.setDisplayFormat("yyyy-MM-dd HH:mm")
        self.start_edit.setCalendarPopup(True)
        self.start_edit.setAccessibleName("Replay from")
        self.start_edit.setEnabled(False)
        self.load_button = QPushButton("Load", self)
        self.load_button.setToolTip("Replay this window")
        self.live_badge = QLabel("LIVE", self)
        self.live_badge.setObjectName("liveBadge")
        self.banner = QLabel("", self)
        self.banner.setObjectName("replayBanner")
        self.banner.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.banner.setWordWrap(True)   # a narrow window: two lines rather than a cut-off note
        self.banner.setAccessibleName("Replay banner")
        self.banner.setToolTip("The view shows recorded history, not the fleet now. Live telemetry and events "
                               "keep being recorded meanwhile; Back to live shows them.")
        self.setStyleSheet(_BANNER + _LIVE + _SLIDER)
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.live_button)
        top.addWidget(self.replay_button)
        top.addSpacing(6)
        top.addWidget(self.range_box)
        top.addWidget(self.start_edit)
        top.addWidget(self.load_button)
        top.addSpacing(6)
        top.addWidget(self.live_badge)
        top.addStretch(1)

        self.back_button = QPushButton("◀◀", self)
        self.back_button.setToolTip(f"Step back {STEP_S:g} s (Left; Shift+Left: {BIG_STEP_S:g} s)")
        self.play_button = QPushButton("▶ Play", self)
        self.play_button.setToolTip("Play / pause (Space)")
        self.forward_button = QPushButton("▶▶", self)
        self.forward_button.setToolTip(f"Step forward {STEP_S:g} s (Right; Shift+Right: {BIG_STEP_S:g} s)")
        self.speed_box = QComboBox(self)
        for speed in SPEEDS:
            self.speed_box.addItem(f"{speed:g}×", speed)
        self.speed_box.setAccessibleName("Replay speed")
        self.speed_box.setToolTip("Replay speed: recorded time per real time ([ and ])")
        self.slider = QSlider(Qt.Orientation.Horizontal, self)
        self.slider.setAccessibleName("Replayed time")
        self.slider.setObjectName("replaySlider")
        self.slider.setSingleStep(1)
        self.slider.setPageStep(60)
        self.slider.setTracking(True)
        self.start_label = QLabel("", self)
        self.start_label.setProperty("muted", True)
        self.end_label = QLabel("", self)
        self.end_label.setProperty("muted", True)
        self.live_now_button = QPushButton("Back to live", self)
        self.live_now_button.setToolTip("Leave the replay and show live telemetry (Ctrl+Shift+R)")
        controls = QWidget(self)
        row = QHBoxLayout(controls)
        row.setContentsMargins(0, 0, 0, 0)
        for w in (self.back_button, self.play_button, self.forward_button, self.speed_box, self.start_label):
            row.addWidget(w)
        row.addWidget(self.slider, 1)
        row.addWidget(self.end_label)
        row.addWidget(self.live_now_button)
        self.controls = controls
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 2)
        layout.setSpacing(3)
        layout.addLayout(top)
        layout.addWidget(self.banner)   # a row of its own: the replayed instant and NOT LIVE are never cut off
        layout.addWidget(controls)

        self.play_actions: list[QAction] = []   # enabled only in replay (Space must click buttons when live)
        for keys, slot in (("Space", replay.toggle_play), ("Left", lambda: replay.step(-STEP_S)),
                           ("Right", lambda: replay.step(STEP_S)), ("Shift+Left", lambda: replay.step(-BIG_STEP_S)),
                           ("Shift+Right", lambda: replay.step(BIG_STEP_S)), ("[", lambda: self._speed_by(-1)),
                           ("]", lambda: self._speed_by(1))):
            self.play_actions.append(self._action(keys, keys, slot, Qt.ShortcutContext.WidgetWithChildrenShortcut,
                                                  parent_window=True))

        self.modes.idClicked.connect(self._mode_clicked)
        self.range_box.currentIndexChanged.connect(self._range_changed)
        self.load_button.clicked.connect(self.load)
        self.back_button.clicked.connect(lambda: replay.step(-STEP_S))
        self.forward_button.clicked.connect(lambda: replay.step(STEP_S))
        self.play_button.clicked.connect(replay.toggle_play)
        self.live_now_button.clicked.connect(replay.go_live)
        self.speed_box.currentIndexChanged.connect(self._speed_chosen)
        self.slider.valueChanged.connect(self._slider_moved)
        self.slider.sliderPressed.connect(self._drag_started)
        self.slider.sliderReleased.connect(self._drag_ended)
        replay.mode_changed.connect(self._mode_changed)
        replay.window_loaded.connect(self._window_loaded)
        replay.position_changed.connect(self._position_changed)
        replay.playing_changed.connect(self._playing_changed)
        replay.speed_changed.connect(self._speed_changed)
        replay.loading_changed.connect(self._loading_changed)
        replay.load_failed.connect(self._load_failed)
        self._mode_changed(replay.replaying)

    def _action(self, text: str, keys: str, slot: object, context: Qt.ShortcutContext,
                parent_window: bool = False) -> QAction:
        action = QAction(text, self)
        action.setShortcut(QKeySequence(keys))
        action.setShortcutContext(context)
        action.triggered.connect(slot)  # type: ignore[arg-type]
        # the play keys work anywhere on the dashboard (its parent), not only on the bar
        target = self.parentWidget() if parent_window and self.parentWidget() is not None else self
        assert target is not None
        target.addAction(action)
        return action

    # ----- intents -----------------------------------------------------------------------------------------------
    def window_ms(self) -> tuple[int, int]:
        """The window the controls name: (since, until) in Unix ms."""
        _title, seconds, custom = RANGES[max(0, self.range_box.currentIndex())]
        if custom:
            since = self.start_edit.dateTime().toMSecsSinceEpoch()
        else:
            since = int(time.time() * 1000) - int(seconds * 1000)
        return since, since + int(seconds * 1000)

    @Slot()
    def load(self) -> None:
        """Replay the window the controls name."""
        since, until = self.window_ms()
        self.replay.open_window(since, until)

    @Slot()
    def toggle_mode(self) -> None:
        """Live → replay the chosen window; replay → live."""
        if self.replay.replaying or self.replay.loading:
            self.replay.go_live()
        else:
            self.load()

    @Slot(int)
    def _mode_clicked(self, index: int) -> None:
        if index == 1 and not self.replay.replaying:
            self.load()
        elif index == 0:
            self.replay.go_live()

    @Slot(int)
    def _range_changed(self, index: int) -> None:
        self.start_edit.setEnabled(RANGES[index][2])

    def _speed_by(self, delta: int) -> None:
        self.speed_box.setCurrentIndex(min(len(SPEEDS) - 1, max(0, self.speed_box.currentIndex() + delta)))

    @Slot(int)
    def _speed_chosen(self, index: int) -> None:
        self.replay.set_speed(SPEEDS[index])

    @Slot(int)
    def _slider_moved(self, value: int) -> None:
        history = self.replay.history
        if history is not None:
            self.replay.seek(history.since_ms + value * 1000)

    @Slot()
    def _drag_started(self) -> None:
        self._dragging = True

    @Slot()
    def _drag_ended(self) -> None:
        self._dragging = False

    # ----- what the model says -----------------------------------------------------------------------------------
    @Slot(bool)
    def _mode_changed(self, replaying: bool) -> None:
        self.controls.setVisible(replaying)
        for action in self.play_actions:
            action.setEnabled(replaying)
        self.banner.setVisible(replaying or self.replay.loading)
        self.live_badge.setVisible(not replaying and not self.replay.loading)
        self.live_button.setChecked(not replaying)
        self.replay_button.setChecked(replaying)
        if not replaying:
            self.banner.setText("")

    @Slot(object)
    def _window_loaded(self, history: ReplayHistory) -> None:
        span = (history.until_ms - history.since_ms) // 1000
        self.slider.blockSignals(True)
        self.slider.setRange(0, int(span))
        self.slider.blockSignals(False)
        day = datetime.fromtimestamp(history.since_ms / 1000).date() != \
            datetime.fromtimestamp(history.until_ms / 1000).date()
        # a short record (a young fleet) reads to the second at both ends of the slider
        fmt = "%a %d %b %H:%M" if day else "%H:%M" if span > 3600 else "%H:%M:%S"
        start = datetime.fromtimestamp(history.since_ms / 1000).strftime(fmt)
        if history.clipped:
            asked = datetime.fromtimestamp(history.asked_since_ms / 1000).strftime(fmt)
            self.start_label.setText(f"{start} (first record)")
            self.start_label.setToolTip(f"Nothing was recorded from {asked} until {start}: the slider starts at "
                                        "the first recorded sample.")
        else:
            self.start_label.setText(start)
            self.start_label.setToolTip("")
        self.end_label.setText(datetime.fromtimestamp(history.until_ms / 1000).strftime(fmt))

    @Slot(object)
    def _position_changed(self, t_ms: int) -> None:
        history = self.replay.history
        if history is None:
            return
        if not self._dragging:
            self.slider.blockSignals(True)
            self.slider.setValue(int((t_ms - history.since_ms) // 1000))
            self.slider.blockSignals(False)
        self.banner.setText(self.banner_text())

    def banner_text(self) -> str:
        """'REPLAY · Thu 03 Dec 14:32:05 · not live (live telemetry is still recorded) · playing raw samples'."""
        history = self.replay.history
        if history is None:
            return "Loading history…" if self.replay.loading else ""
        at = datetime.fromtimestamp(self.replay.position_ms / 1000).strftime("%a %d %b %H:%M:%S")
        state = f"{self.replay.speed:g}×" if self.replay.playing else "paused"
        return f"REPLAY · {at} · {state} · NOT LIVE (still recording) · {history.note}"

    @Slot(bool)
    def _playing_changed(self, playing: bool) -> None:
        self.play_button.setText("❚❚ Pause" if playing else "▶ Play")
        self.banner.setText(self.banner_text())

    @Slot(float)
    def _speed_changed(self, speed: float) -> None:
        index = self.speed_box.findData(speed)
        if index >= 0 and index != self.speed_box.currentIndex():
            self.speed_box.setCurrentIndex(index)
        self.banner.setText(self.banner_text())

    @Slot(bool)
    def _loading_changed(self, loading: bool) -> None:
        if loading:
            self.banner.setVisible(True)
            self.live_badge.setVisible(False)
            if not self.replay.replaying:
                self.banner.setText("Loading history…")
        else:
            self._mode_changed(self.replay.replaying)
            if self.replay.replaying:
                self.banner.setText(self.banner_text())

    @Slot(str)
    def _load_failed(self, reason: str) -> None:
        self._mode_changed(self.replay.replaying)
        self.banner.setVisible(True)
        # replaying: the window shown stays, and so does the banner's NOT LIVE (until the replay moves on)
        self.banner.setText(f"{reason} Still showing: {self.banner_text()}" if self.replay.replaying else reason)
