"""The event log: deployments, rollbacks, node state changes, database trouble — newest at the bottom.

Each row is time, a severity icon with its word (INFO / WARNING / ERROR), the kind and the message.
Filter by severity or text. The view follows new events while it is scrolled to the bottom.
During a replay (app._replay_qt.ReplayModel) it shows the replayed window's events up to the
replayed instant under a banner; the live log keeps collecting and is shown again on return to live.
"""

from __future__ import annotations

from datetime import datetime

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRect, QSize, QSortFilterProxyModel, Qt, Slot
from PySide6.QtGui import QFont, QFontMetrics, QPainter
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QVBoxLayout,
    QWidget,
)

from app._replay_qt import ReplayModel
from app.core import ConsoleEvent
from app.qt import EventLogModel
from widgets import _format as fmt
from widgets import _theme as theme

_Index = QModelIndex | QPersistentModelIndex
SEVERITIES = (("All events", ()), ("Warnings and errors", ("warning", "error")), ("Errors", ("error",)))


class _EventFilter(QSortFilterProxyModel):
    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.words: list[str] = []
        self.severities: tuple[str, ...] = ()

    def set_filter(self, text: str, severities: tuple[str, ...]) -> None:
        self.beginFilterChange()
        self.words = text.lower().split()
        self.severities = severities
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, source_row: int, source_parent: _Index) -> bool:
        """Events of the wanted severities holding every word typed."""
        event = self.sourceModel().index(source_row, 0, source_parent).data(EventLogModel.EventRole)
        if not isinstance(event, ConsoleEvent):
            return False
        if self.severities and str(event.severity) not in self.severities:
            return False
        text = f"{event.kind} {event.message} {event.node_id}".lower()
        return all(w in text for w in self.words)


class EventDelegate(QStyledItemDelegate):
    """time · icon SEVERITY · kind · message, on one line."""

    def sizeHint(self, option: QStyleOptionViewItem, index: _Index) -> QSize:
        """One line of text plus padding."""
        return QSize(300, QFontMetrics(option.font).height() + 6)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: _Index) -> None:
        """Draw one event."""
        event = index.data(EventLogModel.EventRole)
        if not isinstance(event, ConsoleEvent):
            return
        painter.save()
        rect = option.rect
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        if selected:
            painter.fillRect(rect, theme.colour(theme.SELECT))
        fm = QFontMetrics(option.font)
        x = rect.left() + 4
        painter.setPen(theme.colour(theme.MUTED if not selected else "#ffffff"))
        mono = QFont("DejaVu Sans Mono", option.font.pointSize())
        painter.setFont(mono)
        clock = fmt.clock(event.ts_ms / 1000)
        width = QFontMetrics(mono).horizontalAdvance("00:00:00 ")
        painter.drawText(QRect(x, rect.top(), width, rect.height()), Qt.AlignmentFlag.AlignVCenter, clock)
        x += width
        severity = str(event.severity)
        size = fm.height() - 2
        theme.icon(theme.SEVERITY_ICONS.get(severity, "info")).paint(
            painter, QRect(x, rect.top() + (rect.height() - size) // 2, size, size))
        x += size + 4
        bold = QFont(option.font)
        bold.setBold(True)
        painter.setFont(bold)
        colour = {"warning": theme.WARN, "error": theme.BAD}.get(severity, theme.ACCENT)
        painter.setPen(theme.colour(colour if not selected else "#ffffff"))
        word = severity.upper()
        width = QFontMetrics(bold).horizontalAdvance("WARNING ")
        painter.drawText(QRect(x, rect.top(), width, rect.height()), Qt.AlignmentFlag.AlignVCenter, word)
        x += width
        painter.setFont(option.font)
        painter.setPen(theme.colour(theme.MUTED if not selected else "#ffffff"))
        kind_w = fm.horizontalAdvance("deploy_step  ")
        painter.drawText(QRect(x, rect.top(), kind_w, rect.height()), Qt.AlignmentFlag.AlignVCenter,
                         fm.elidedText(event.kind, Qt.TextElideMode.ElideRight, kind_w - 6))
        x += kind_w
        painter.setPen(theme.colour(theme.TEXT if not selected else "#ffffff"))
        painter.drawText(QRect(x, rect.top(), rect.right() - x - 4, rect.height()), Qt.AlignmentFlag.AlignVCenter,
                         fm.elidedText(event.message, Qt.TextElideMode.ElideRight, rect.right() - x - 4))
        painter.restore()


class EventLog(QWidget):
    """The console's audit log with severity and text filters; follows new events at the bottom."""

    def __init__(self, events: EventLogModel, parent: QWidget | None = None, replay: ReplayModel | None = None
                 ) -> None:
        super().__init__(parent)
        self.events = events
        self.replay = replay
        self.shown: EventLogModel = events
        self.replay_banner = QLabel("", self)
        self.replay_banner.setObjectName("replayBanner")
        self.replay_banner.setStyleSheet(f"QLabel#replayBanner {{ background: {theme.WARN}; color: #111; "
                                         "font-weight: bold; padding: 2px 6px; }")
        self.replay_banner.setVisible(False)
        self.proxy = _EventFilter(self)
        self.proxy.setSourceModel(events)
        self.search = QLineEdit(self)
        self.search.setPlaceholderText("Filter events…")
        self.search.setClearButtonEnabled(True)
        self.severity = QComboBox(self)
        for title, _ in SEVERITIES:
            self.severity.addItem(title)
        self.view = QListView(self)
        self.view.setModel(self.proxy)
        self.view.setItemDelegate(EventDelegate(self.view))
        self.view.setUniformItemSizes(True)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setAccessibleName("Event log")
        self.view.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        filters = QHBoxLayout()
        filters.setContentsMargins(0, 0, 0, 0)
        filters.addWidget(self.search, 2)
        filters.addWidget(self.severity, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 4)
        layout.setSpacing(2)
        layout.addWidget(self.replay_banner)
        layout.addLayout(filters)
        layout.addWidget(self.view, 1)
        self.search.textChanged.connect(self._filter)
        self.severity.currentIndexChanged.connect(self._filter)
        events.rowsAboutToBeInserted.connect(self._about_to_insert)
        events.rowsInserted.connect(self._inserted)
        self._follow = True
        if replay is not None:
            replay.events.rowsAboutToBeInserted.connect(self._about_to_insert)
            replay.events.rowsInserted.connect(self._inserted)
            replay.events.modelReset.connect(self.view.scrollToBottom)
            replay.mode_changed.connect(self._replay_mode)
            replay.position_changed.connect(self._replay_position)

    @Slot(bool)
    def _replay_mode(self, replaying: bool) -> None:
        """Show the replayed events (up to the replayed instant) or the live log again."""
        assert self.replay is not None
        self.shown = self.replay.events if replaying else self.events
        self.proxy.setSourceModel(self.shown)
        self.replay_banner.setVisible(replaying)
        self.view.scrollToBottom()

    @Slot(object)
    def _replay_position(self, t_ms: int) -> None:
        self.replay_banner.setText(f"REPLAY · events up to {datetime.fromtimestamp(t_ms / 1000):%H:%M:%S} · "
                                   "not live (new events are still recorded)")
        self.view.scrollToBottom()   # the newest event at the replayed instant (the slider jumps, rows come in bursts)

    @Slot()
    def _filter(self) -> None:
        self.proxy.set_filter(self.search.text(), SEVERITIES[max(0, self.severity.currentIndex())][1])

    @Slot()
    def _about_to_insert(self) -> None:
        if self.sender() is not self.shown:
            return   # the live log while a replay is shown (or the other way round)
        bar = self.view.verticalScrollBar()
        self._follow = bar.value() >= bar.maximum() - 2

    @Slot()
    def _inserted(self) -> None:
        if self._follow and self.sender() is self.shown:
            self.view.scrollToBottom()
