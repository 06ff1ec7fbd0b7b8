"""The fleet panel: nodes grouped by tier with state (and for how long), hardware, providers, power and stages.

Each node row says its state three ways — an icon whose shape differs per state, the word, and for
how long — and marks insecure nodes with an open-padlock icon and the word INSECURE. Filter by text
or by state; add a node by address, enrol one with its pairing code, forget one, reconnect, open a
node's details. The panel observes `FleetModel` (and `TelemetryModel` for power now) and sends
intents back; the slow text ("offline for 2 min") is refreshed by the frame clock's second tick.
During a replay (app._replay_qt.ReplayModel) each node row shows the node's state, link states and
power as the history holds them at the replayed instant, under a banner saying so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime

from PySide6.QtCore import (
    QModelIndex,
    QPersistentModelIndex,
    QPoint,
    QRect,
    QSize,
    QSortFilterProxyModel,
    Qt,
    Signal,
    Slot,
)
from PySide6.QtGui import QAction, QFont, QFontMetrics, QKeySequence, QPainter, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from app._replay_qt import ReplayModel
from app.core import NodeSample, NodeSnapshot, NodeState
from app.qt import FleetModel, TelemetryModel
from widgets import _format as fmt
from widgets import _theme as theme
from widgets._clock import FrameClock

KEY_ROLE = Qt.ItemDataRole.UserRole + 1
TIER_ROLE = Qt.ItemDataRole.UserRole + 2
SEARCH_ROLE = Qt.ItemDataRole.UserRole + 3

STATE_FILTERS = (("All nodes", ()), ("Needs attention", ("degraded", "offline")), ("Online", ("online",)),
                 ("Degraded", ("degraded",)), ("Offline", ("offline",)),
                 ("Connecting", ("connecting", "discovered")), ("Insecure", ("insecure",)))

_Index = QModelIndex | QPersistentModelIndex


def security_words(node: NodeSnapshot) -> str:
    """The transport security of a node in a sentence (for tooltips)."""
    icon_name, words = fmt.security(node)
    return {"insecure": "INSECURE: no TLS, no enrolment (development mode); anyone on the network can use it",
            "unenrolled": "NOT ENROLLED: enrol it with its pairing code (Fleet → Enroll node…)",
            "secure": "mutual TLS with this fleet's certificates"}.get(icon_name, words)


class _FleetFilter(QSortFilterProxyModel):
    """Keeps node rows whose search text holds every word typed and whose state is wanted; tier rows follow."""

    def __init__(self, panel: FleetPanel) -> None:
        super().__init__(panel)
        self._panel = panel
        self.words: list[str] = []
        self.states: tuple[str, ...] = ()
        self.setRecursiveFilteringEnabled(True)

    def set_filter(self, text: str, states: tuple[str, ...]) -> None:
        """Filter by words (all must match) and by states (any)."""
        self.beginFilterChange()
        self.words = text.lower().split()
        self.states = states
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, source_row: int, source_parent: _Index) -> bool:
        """Node rows by text and state; tier rows only through their children (recursive filtering)."""
        index = self.sourceModel().index(source_row, 0, source_parent)
        key = index.data(KEY_ROLE)
        if not key:
            return not self.words and not self.states
        node = self._panel.fleet.node(key)
        if node is None:
            return False
        if self.states:
            insecure = node.info is not None and node.info.insecure
            if str(node.state) not in self.states and not ("insecure" in self.states and insecure):
                return False
        text = self._panel.search_text(node)
        return all(w in text for w in self.words)


class NodeDelegate(QStyledItemDelegate):
    """Paints a node row in three lines (name and badges; state and why; power, hardware, stages) and tier headers."""

    def __init__(self, panel: FleetPanel) -> None:
        super().__init__(panel)
        self._panel = panel
        self.painted: dict[str, tuple[str, str]] = {}   # node key → (state line, details line) last painted
        self.paints: dict[str, int] = {}                # node key → rows painted

    def _metrics(self, option: QStyleOptionViewItem) -> tuple[QFont, QFont, int]:
        bold = QFont(option.font)
        bold.setBold(True)
        line = QFontMetrics(option.font).height()
        return bold, option.font, line

    def sizeHint(self, option: QStyleOptionViewItem, index: _Index) -> QSize:
        """Three text lines for nodes, one and a half for tier headers."""
        _, _, line = self._metrics(option)
        if not index.data(KEY_ROLE):
            return QSize(200, int(line * 1.9))
        return QSize(200, line * 3 + 12)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: _Index) -> None:
        """Draw the row."""
        painter.save()
        try:
            key = index.data(KEY_ROLE)
            if key:
                node = self._panel.shown_node(key)
                if node is not None:
                    self._paint_node(painter, option, node)
            else:
                self._paint_tier(painter, option, index.data(TIER_ROLE) or "")
        finally:
            painter.restore()

    def _paint_tier(self, painter: QPainter, option: QStyleOptionViewItem, tier: str) -> None:
        rect = option.rect
        painter.fillRect(rect, theme.colour(theme.PANEL))
        bold, _normal, line = self._metrics(option)
        size = line
        icon_rect = QRect(rect.left() + 4, rect.top() + (rect.height() - size) // 2, size, size)
        if tier in theme.TIERS:
            theme.icon(f"tier-{tier}").paint(painter, icon_rect)
        painter.setFont(bold)
        painter.setPen(theme.colour(theme.TEXT))
        text_rect = rect.adjusted(size + 10, 0, -4, 0)
        nodes = [n for n in (self._panel.shown_node(m.key) for m in self._panel.fleet.by_tier(tier)) if n]
        counts: dict[str, int] = {}
        for n in nodes:
            counts[str(n.state)] = counts.get(str(n.state), 0) + 1
        title = theme.TIER_TITLES.get(tier, tier).upper()
        summary = f"{title}  ·  {len(nodes)} node{'s' if len(nodes) != 1 else ''}"
        for state in ("online", "degraded", "offline", "connecting"):
            if counts.get(state):
                summary += f"  ·  {counts[state]} {state}"
        painter.drawText(text_rect, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                         QFontMetrics(bold).elidedText(summary, Qt.TextElideMode.ElideRight, text_rect.width()))
        if option.state & QStyle.StateFlag.State_HasFocus:
            painter.setPen(theme.colour(theme.ACCENT))
            painter.drawRect(rect.adjusted(0, 0, -1, -1))

    def _paint_node(self, painter: QPainter, option: QStyleOptionViewItem, node: NodeSnapshot) -> None:
        rect = option.rect
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        painter.fillRect(rect, theme.colour(theme.SELECT if selected else "#0e1217"))
        painter.setPen(theme.colour(theme.BORDER))
        painter.drawLine(rect.bottomLeft(), rect.bottomRight())
        bold, normal, line = self._metrics(option)
        x = rect.left() + 6
        top = rect.top() + 5
        size = line
        theme.state_icon(str(node.state)).paint(painter, QRect(x, top, size, size))
        text_left = x + size + 6
        right = rect.right() - 6
        # badges, right-aligned on the first line
        icon_name, words = fmt.security(node)
        if icon_name:
            badge_font = QFont(normal)
            badge_font.setBold(icon_name != "secure")
            fm = QFontMetrics(badge_font)
            width = fm.horizontalAdvance(words)
            painter.setFont(badge_font)
            colour = theme.WARN if icon_name == "insecure" else theme.ACCENT if icon_name == "unenrolled" else theme.OK
            painter.setPen(theme.colour("#ffffff" if selected else colour))
            painter.drawText(QRect(right - width, top, width, line), Qt.AlignmentFlag.AlignVCenter, words)
            theme.icon(icon_name).paint(painter, QRect(right - width - size - 3, top, size, size))
            right = right - width - size - 10
        painter.setFont(bold)
        painter.setPen(theme.colour(theme.TEXT if not selected else "#ffffff"))
        name = node.name or node.address
        painter.drawText(QRect(text_left, top, right - text_left, line), Qt.AlignmentFlag.AlignVCenter,
                         QFontMetrics(bold).elidedText(name, Qt.TextElideMode.ElideRight, right - text_left))
        painter.setFont(normal)
        width = rect.right() - 6 - text_left
        state_colour = {NodeState.DEGRADED: theme.WARN, NodeState.OFFLINE: theme.BAD}.get(node.state, theme.MUTED)
        painter.setPen(theme.colour("#ffffff" if selected else state_colour))
        state_text, details = lines = self._panel.row_lines(node)
        self.painted[node.key] = lines
        self.paints[node.key] = self.paints.get(node.key, 0) + 1
        painter.drawText(QRect(text_left, top + line + 1, width, line), Qt.AlignmentFlag.AlignVCenter,
                         QFontMetrics(normal).elidedText(state_text, Qt.TextElideMode.ElideRight, width))
        painter.setPen(theme.colour("#ffffff" if selected else theme.MUTED))
        painter.drawText(QRect(text_left, top + 2 * line + 2, width, line), Qt.AlignmentFlag.AlignVCenter,
                         QFontMetrics(normal).elidedText(details, Qt.TextElideMode.ElideRight, width))
        if option.state & QStyle.StateFlag.State_HasFocus:
            painter.setPen(theme.colour(theme.ACCENT))
            painter.drawRect(rect.adjusted(1, 1, -2, -2))


class FleetPanel(QWidget):
    """Nodes grouped by tier, with filter and search, and the node actions (add, enrol, forget, details)."""

    node_activated = Signal(str)              # key: the operator opened a node's details
    nodes_selected = Signal(object)           # list[str]: keys of the selected nodes
    add_node_requested = Signal()
    enroll_requested = Signal()
    forget_requested = Signal(str)            # key
    details_requested = Signal(str)           # key

    def __init__(self, fleet: FleetModel, telemetry: TelemetryModel | None = None, clock: FrameClock | None = None,
                 parent: QWidget | None = None, replay: ReplayModel | None = None) -> None:
        super().__init__(parent)
        self.fleet = fleet
        self.telemetry = telemetry
        self.replay = replay
        self.replay_banner = QLabel("", self)
        self.replay_banner.setObjectName("replayBanner")
        self.replay_banner.setStyleSheet(f"QLabel#replayBanner {{ background: {theme.WARN}; color: #111; "
                                         "font-weight: bold; padding: 2px 6px; }")
        self.replay_banner.setWordWrap(True)
        self.replay_banner.setVisible(False)
        self._items: dict[str, QStandardItem] = {}
        self._tiers: dict[str, QStandardItem] = {}
        self.tree_model = QStandardItemModel(self)
        self.proxy = _FleetFilter(self)
        self.proxy.setSourceModel(self.tree_model)
        self.proxy.setSortRole(Qt.ItemDataRole.DisplayRole)

        self.search = QLineEdit(self)
        self.search.setPlaceholderText("Filter: name, address, tier, state, stage…")
        self.search.setClearButtonEnabled(True)
        self.search.setAccessibleName("Filter nodes")
        self.state_filter = QComboBox(self)
        self.state_filter.setAccessibleName("Show nodes in state")
        for title, _ in STATE_FILTERS:
            self.state_filter.addItem(title)
        self.view = QTreeView(self)
        self.view.setModel(self.proxy)
        self.view.setHeaderHidden(True)
        self.view.setRootIsDecorated(False)
        self.view.setIndentation(0)
        self.view.setUniformRowHeights(False)
        self.delegate = NodeDelegate(self)
        self.view.setItemDelegate(self.delegate)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.setAccessibleName("Fleet")
        self.view.setSortingEnabled(False)
        self.summary = QLabel(self)
        self.summary.setProperty("muted", True)
        self.summary.setWordWrap(True)

        filters = QHBoxLayout()
        filters.setContentsMargins(0, 0, 0, 0)
        filters.addWidget(self.search, 3)
        filters.addWidget(self.state_filter, 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.replay_banner)
        layout.addLayout(filters)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.summary)

        self._make_actions()
        self.search.textChanged.connect(self._filter_changed)
        self.state_filter.currentIndexChanged.connect(self._filter_changed)
        self.view.activated.connect(self._activated)
        self.view.customContextMenuRequested.connect(self._context_menu)
        self.view.selectionModel().selectionChanged.connect(self._selection_changed)

        fleet.node_added.connect(self._node_added)
        fleet.node_removed.connect(self._node_removed)
        fleet.node_changed.connect(self._node_changed)
        fleet.node_rekeyed.connect(self._node_rekeyed)
        fleet.state_changed.connect(self._state_changed)
        if clock is not None:
            clock.second_ticked.connect(self._second)
        for node in fleet.nodes():
            self._node_added(node.key)
        self._update_summary()
        if replay is not None:
            replay.mode_changed.connect(self._replay_moved)
            replay.position_changed.connect(self._replay_moved)

    # ----- replay ------------------------------------------------------------------------------------
    def shown_node(self, key: str) -> NodeSnapshot | None:
        """The node as shown: live, or during a replay with its state and reasons at the replayed instant."""
        node = self.fleet.node(key)
        view = self.replay.view if self.replay is not None else None
        if node is None or view is None or not node.node_id:
            return node
        then = view.node(node.node_id)
        if then is None:
            return dataclasses.replace(node, state=NodeState.DISCOVERED, state_since_ms=0,
                                       reasons=("not in the replayed history",))
        return dataclasses.replace(node, state=then.state, state_since_ms=then.state_since_ms, reasons=then.reasons)

    def latest(self, node_id: str) -> NodeSample | None:
        """The node's latest sample as shown (live, or at the replayed instant)."""
        view = self.replay.view if self.replay is not None else None
        source = view if view is not None else self.telemetry
        return source.latest(node_id) if source is not None and node_id else None

    def now_ms(self) -> int:
        """Now, or the replayed instant (what 'offline for 42 s' counts from)."""
        view = self.replay.view if self.replay is not None else None
        return view.position_ms if view is not None else fmt.now_ms()

    @Slot()
    def _replay_moved(self) -> None:
        view = self.replay.view if self.replay is not None else None
        self.replay_banner.setVisible(view is not None)
        if view is not None:
            at = datetime.fromtimestamp(view.position_ms / 1000)
            self.replay_banner.setText(f"REPLAY · node states at {at:%H:%M:%S} as recorded · live nodes are still "
                                       "watched")
        self.view.viewport().update()

    # ----- actions -----------------------------------------------------------------------------------
    def _make_actions(self) -> None:
        def action(text: str, shortcut: str | QKeySequence.StandardKey | None, slot: Callable[[], None],
                   tip: str) -> QAction:
            a = QAction(text, self)
            if shortcut is not None:
                a.setShortcut(QKeySequence(shortcut))
                a.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            a.setStatusTip(tip)
            a.setToolTip(tip)
            a.triggered.connect(slot)
            return a

        self.add_action = action("&Add node by address…", "Ctrl+N", self.add_node_requested.emit,
                                 "Add a node that mDNS cannot see (HOST:PORT)")
        self.enroll_action = action("&Enroll node…", "Ctrl+Shift+N", self.enroll_requested.emit,
                                    "Enrol an unenrolled node with the pairing code it printed")
        self.details_action = action("Node &details…", "Ctrl+Return", self._details,
                                     "Info, stages and recent events of the selected node")
        self.reconnect_action = action("&Reconnect node", "Ctrl+R", self._reconnect,
                                       "Open a fresh connection to the selected node now")
        self.forget_action = action("&Forget node…", "Ctrl+Shift+Delete", self._forget,
                                    "Stop watching the selected node (it keeps running)")
        self.find_action = action("&Filter fleet…", "Ctrl+F", self.focus_search, "Filter nodes by text")
        self.fleet_view_action = action("Go to &fleet list", "Alt+1", self.focus_list, "Move the focus to the fleet")
        for a in (self.details_action, self.reconnect_action, self.forget_action):
            a.setEnabled(False)
            self.view.addAction(a)

    def actions_for_menu(self) -> list[QAction]:
        """The panel's actions in menu order (None-free)."""
        return [self.add_action, self.enroll_action, self.details_action, self.reconnect_action,
                self.forget_action, self.find_action, self.fleet_view_action]

    @Slot()
    def focus_search(self) -> None:
        """Move the keyboard focus to the search field."""
        self.search.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.search.selectAll()

    @Slot()
    def focus_list(self) -> None:
        """Move the keyboard focus to the node list (first node selected when none is)."""
        self.view.setFocus(Qt.FocusReason.ShortcutFocusReason)
        if not self.view.currentIndex().isValid() and self.proxy.rowCount() > 0:
            first = self.proxy.index(0, 0)
            if self.proxy.rowCount(first) > 0:
                first = self.proxy.index(0, 0, first)
            self.view.setCurrentIndex(first)

    def selected_keys(self) -> list[str]:
        """Keys of the selected nodes (the current node when nothing is selected)."""
        keys = [i.data(KEY_ROLE) for i in self.view.selectionModel().selectedIndexes() if i.data(KEY_ROLE)]
        if not keys:
            current = self.view.currentIndex().data(KEY_ROLE)
            keys = [current] if current else []
        return keys

    def select(self, key: str) -> None:
        """Select and show one node."""
        item = self._items.get(key)
        if item is None:
            return
        index = self.proxy.mapFromSource(item.index())
        if index.isValid():
            self.view.setCurrentIndex(index)
            self.view.scrollTo(index)

    @Slot()
    def _details(self) -> None:
        keys = self.selected_keys()
        if keys:
            self.details_requested.emit(keys[0])

    @Slot()
    def _reconnect(self) -> None:
        for key in self.selected_keys():
            self.fleet.reconnect(key)

    @Slot()
    def _forget(self) -> None:
        keys = self.selected_keys()
        if keys:
            self.forget_requested.emit(keys[0])

    @Slot(QModelIndex)
    def _activated(self, index: QModelIndex) -> None:
        key = index.data(KEY_ROLE)
        if key:
            self.node_activated.emit(key)
            self.details_requested.emit(key)

    @Slot(QPoint)
    def _context_menu(self, pos: QPoint) -> None:
        menu = QMenu(self)
        for a in (self.details_action, self.reconnect_action, self.forget_action):
            menu.addAction(a)
        menu.addSeparator()
        menu.addAction(self.add_action)
        menu.addAction(self.enroll_action)
        menu.popup(self.view.viewport().mapToGlobal(pos))

    @Slot()
    def _selection_changed(self) -> None:
        keys = self.selected_keys()
        for a in (self.details_action, self.reconnect_action, self.forget_action):
            a.setEnabled(bool(keys))
        self.nodes_selected.emit(keys)

    # ----- filtering ---------------------------------------------------------------------------------
    @Slot()
    def _filter_changed(self) -> None:
        states = STATE_FILTERS[max(0, self.state_filter.currentIndex())][1]
        self.proxy.set_filter(self.search.text(), states)
        self.view.expandAll()
        self._update_summary()

    def search_text(self, node: NodeSnapshot) -> str:
        """Everything a filter word may match, lower case."""
        parts = [node.name, node.address, node.tier, str(node.state), node.node_id, node.reason,
                 fmt.hardware(node), fmt.stages(node), fmt.security(node)[1]]
        return " ".join(parts).lower()

    # ----- following the model -----------------------------------------------------------------------
    def _tier_item(self, tier: str) -> QStandardItem:
        item = self._tiers.get(tier)
        if item is None:
            item = QStandardItem(theme.TIER_TITLES.get(tier, tier))
            item.setData(tier, TIER_ROLE)
            item.setData("", KEY_ROLE)
            item.setEditable(False)
            item.setDragEnabled(False)
            order = (*theme.TIERS, "")
            position = sum(1 for t in self._tiers if order.index(t if t in order else "") < order.index(
                tier if tier in order else ""))
            self.tree_model.insertRow(position, item)
            self._tiers[tier] = item
            self.view.expand(self.proxy.mapFromSource(item.index()))
        return item

    def _tier_of(self, node: NodeSnapshot) -> str:
        return node.tier if node.tier in theme.TIERS else ""

    @Slot(str)
    def _node_added(self, key: str) -> None:
        node = self.fleet.node(key)
        if node is None or key in self._items:
            return
        parent = self._tier_item(self._tier_of(node))
        item = QStandardItem(node.name)
        item.setData(key, KEY_ROLE)
        item.setData(self._tier_of(node), TIER_ROLE)
        item.setEditable(False)
        item.setToolTip(self._tooltip(node))
        item.setAccessibleText(self._accessible(node))
        row = self._sorted_row(parent, node.name)
        parent.insertRow(row, item)
        self._items[key] = item
        self.view.expand(self.proxy.mapFromSource(parent.index()))
        self._update_summary()

    def _sorted_row(self, parent: QStandardItem, name: str) -> int:
        for row in range(parent.rowCount()):
            child = parent.child(row)
            if child is not None and child.text().lower() > name.lower():
                return row
        return parent.rowCount()

    @Slot(str)
    def _node_removed(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is None:
            return
        parent = item.parent()
        if parent is not None:
            parent.removeRow(item.row())
            if parent.rowCount() == 0:
                tier = parent.data(TIER_ROLE) or ""
                self.tree_model.removeRow(parent.row())
                self._tiers.pop(tier, None)
        self._update_summary()

    @Slot(str, str)
    def _node_rekeyed(self, old: str, new: str) -> None:
        item = self._items.pop(old, None)
        if item is None:
            self._node_added(new)
            return
        item.setData(new, KEY_ROLE)
        self._items[new] = item
        self._node_changed(new)

    @Slot(str)
    def _node_changed(self, key: str) -> None:
        node = self.fleet.node(key)
        item = self._items.get(key)
        if node is None or item is None:
            return
        tier = self._tier_of(node)
        if item.data(TIER_ROLE) != tier or item.text() != node.name:
            # tier or name learned from the node: move the row to its group, in name order
            self._items.pop(key)
            parent = item.parent()
            if parent is not None:
                parent.takeRow(item.row())
                if parent.rowCount() == 0:
                    old_tier = parent.data(TIER_ROLE) or ""
                    self._tiers.pop(old_tier, None)
                    self.tree_model.removeRow(parent.row())
            self._node_added(key)
            return
        item.setToolTip(self._tooltip(node))
        item.setAccessibleText(self._accessible(node))
        item.emitDataChanged()
        parent = item.parent()
        if parent is not None:
            parent.emitDataChanged()
        self._update_summary()

    @Slot(str, str, str)
    def _state_changed(self, key: str, _old: str, _new: str) -> None:
        self._node_changed(key)
        if self.proxy.states:
            self.proxy.set_filter(self.search.text(), self.proxy.states)

    @Slot()
    def _second(self) -> None:
        """Repaint the shown rows whose words moved on since they were painted ('online for 42 s', the power of
        the latest sample), and only those: a quiet node in a state an hour old ('online for 2 h 05 min') is
        repainted once a minute, not every second."""
        if not self.isVisible():
            return
        viewport = self.view.viewport()
        bottom = viewport.rect().bottom()
        now = self.now_ms()
        index = self.view.indexAt(QPoint(0, 0))
        while index.isValid():
            rect = self.view.visualRect(index)
            if rect.top() > bottom:
                break
            key = index.data(KEY_ROLE)
            node = self.shown_node(key) if key else None
            if node is not None and self.row_lines(node, now) != self.delegate.painted.get(key):
                viewport.update(rect)
            index = self.view.indexBelow(index)

    def _tooltip(self, node: NodeSnapshot) -> str:
        runtime = "".join(f"{line}\n" for line in fmt.runtime_lines(node))
        return (f"{node.name} — {node.address}\n{fmt.state_text(node)}\n{fmt.hardware(node)}\n{runtime}"
                f"stages: {fmt.stages(node)}\n{security_words(node)}\nnode id: {node.node_id or 'not known yet'}")

    def _accessible(self, node: NodeSnapshot) -> str:
        return f"{node.name}, {node.tier or 'no tier'}, {fmt.state_text(node)}, {fmt.security(node)[1]}"

    def _update_summary(self) -> None:
        nodes = self.fleet.nodes()
        counts: dict[str, int] = {}
        for n in nodes:
            counts[str(n.state)] = counts.get(str(n.state), 0) + 1
        insecure = sum(1 for n in nodes if n.info is not None and n.info.insecure)
        parts = [f"{len(nodes)} nodes"] + [f"{counts[s]} {s}" for s in ("online", "degraded", "offline", "connecting")
                                           if counts.get(s)]
        if insecure:
            parts.append(f"{insecure} insecure")
        shown = sum(self.proxy.rowCount(self.proxy.index(r, 0)) for r in range(self.proxy.rowCount()))
        if shown != len(nodes):
            parts.append(f"{shown} shown")
        self.summary.setText(" · ".join(parts) if nodes else
                             "No nodes yet. Nodes on this network segment appear by themselves (mDNS); "
                             "add others with Ctrl+N.")

    def row_lines(self, node: NodeSnapshot, now_ms: int | None = None) -> tuple[str, str]:
        """The second and third lines of a node's row: its state and for how long; power (or what callers see of an
        engine), hardware and stages."""
        state = fmt.state_text(node, self.now_ms() if now_ms is None else now_ms)
        if node.source == "endpoint":
            callers = fmt.callers_view(node, self.fleet.nodes(), self.telemetry.latest) if self.telemetry else ""
            return state, f"{callers} · {fmt.hardware(node)} · model {fmt.stages(node)}"
        return state, f"{fmt.power(self.latest(node.node_id))} · {fmt.hardware(node)} · stages: {fmt.stages(node)}"

    def row_text(self, key: str) -> str:
        """What the row of a node says, as text (for tests and screen readers)."""
        node = self.shown_node(key)
        if node is None:
            return ""
        state, details = self.row_lines(node)
        return f"{node.name} [{node.state}] {fmt.security(node)[1]} | {state} | {details}"
