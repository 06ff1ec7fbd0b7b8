"""Node dialogs: add by address, enrol with a pairing code, a node's details. All opened with `open()`.

The enrolment call is a seam: the core has no enrol intent yet, so the dialog takes an `Enroller`
(`(address, code) -> concurrent Future[str]`) from the console's entry point, which runs
`app.fleet_ca.FleetCA.enroll` on the core's I/O loop. Without one the action explains why it is off.
"""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Callable

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core import NodeSnapshot
from app.qt import Dispatcher, EventLogModel, FleetModel, TelemetryModel
from widgets import _format as fmt
from widgets import _theme as theme

Enroller = Callable[[str, str], "concurrent.futures.Future[str]"]

ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")
PAIRING_CODE = re.compile(r"^[A-Za-z0-9]{4}(-?[A-Za-z0-9]{4}){3}$")


def address_problem(text: str) -> str:
    """Why `text` is not HOST:PORT ('' when it is)."""
    text = text.strip()
    if not text:
        return "enter the node's address as HOST:PORT"
    match = ADDRESS.match(text)
    if match is None:
        return "the address must be HOST:PORT, e.g. 10.0.0.7:50051"
    if not 0 < int(match.group(2)) < 65536:
        return "the port must be between 1 and 65535"
    return ""


def _banner(label: QLabel, kind: str, text: str) -> None:
    label.setProperty("banner", kind)
    label.style().unpolish(label)
    label.style().polish(label)
    label.setText(text)
    label.setVisible(bool(text))


class AddNodeDialog(QDialog):
    """Add a node by HOST:PORT (optionally with tier and name); stays open until the core accepted it."""

    node_added = Signal(str)   # key

    def __init__(self, fleet: FleetModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Add node by address")
        self.fleet = fleet
        self._dispatcher = Dispatcher(self)
        self.address = QLineEdit(self)
        self.address.setPlaceholderText("10.0.0.7:50051")
        self.address.setAccessibleName("Node address")
        self.tier = QComboBox(self)
        self.tier.addItem("Ask the node", "")
        for tier in theme.TIERS:
            self.tier.addItem(theme.TIER_TITLES[tier], tier)
        self.name = QLineEdit(self)
        self.name.setPlaceholderText("optional: the node says its own name")
        self.message = QLabel(self)
        self.message.setWordWrap(True)
        self.message.setVisible(False)
        form = QFormLayout()
        form.addRow("&Address (HOST:PORT):", self.address)
        form.addRow("&Tier:", self.tier)
        form.addRow("&Name:", self.name)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel,
                                        self)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("&Add node")
        self.buttons.accepted.connect(self._submit)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.message)
        layout.addWidget(self.buttons)
        self.address.textChanged.connect(self._validate)
        self._validate()

    @Slot()
    def _validate(self) -> None:
        problem = address_problem(self.address.text()) if self.address.text() else ""
        self.address.setProperty("invalid", bool(problem))
        self.address.style().unpolish(self.address)
        self.address.style().polish(self.address)
        _banner(self.message, "error", f"✖ {problem}" if problem else "")
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(
            not address_problem(self.address.text()))

    @Slot()
    def _submit(self) -> None:
        problem = address_problem(self.address.text())
        if problem:
            _banner(self.message, "error", f"✖ {problem}")
            return
        self.buttons.setEnabled(False)
        _banner(self.message, "info", "Adding…")
        future = self.fleet.add_address(self.address.text().strip(), self.tier.currentData() or "",
                                        self.name.text().strip())
        self._dispatcher.when_done(future, self._added, self._failed)

    def _added(self, key: object) -> None:
        self.node_added.emit(str(key))
        self.accept()

    def _failed(self, exc: BaseException) -> None:
        self.buttons.setEnabled(True)
        _banner(self.message, "error", f"✖ Could not add the node: {exc}")


class EnrollDialog(QDialog):
    """Enrol an unenrolled node: its address and the pairing code it printed; the result stays on screen."""

    enrolled = Signal(str)   # message from the enroller

    def __init__(self, enroller: Enroller | None, parent: QWidget | None = None, address: str = "") -> None:
        super().__init__(parent)
        self.setWindowTitle("Enroll node")
        self.enroller = enroller
        self._dispatcher = Dispatcher(self)
        self.address = QLineEdit(address, self)
        self.address.setPlaceholderText("10.0.0.7:50051")
        self.code = QLineEdit(self)
        self.code.setPlaceholderText("ABCD-EFGH-JKLM-NPQR (printed by the node at start)")
        self.code.setAccessibleName("Pairing code")
        explain = QLabel("The node prints a pairing code when it starts unenrolled. Enrolment proves both sides "
                         "know the code, then issues the node a fleet certificate: from then on it accepts only "
                         "mutual TLS with this fleet.", self)
        explain.setWordWrap(True)
        explain.setProperty("muted", True)
        self.message = QLabel(self)
        self.message.setWordWrap(True)
        self.message.setVisible(False)
        form = QFormLayout()
        form.addRow("&Address (HOST:PORT):", self.address)
        form.addRow("Pairing &code:", self.code)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Close,
                                        self)
        self.enroll_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.enroll_button.setText("&Enroll")
        self.buttons.accepted.connect(self._submit)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(explain)
        layout.addLayout(form)
        layout.addWidget(self.message)
        layout.addWidget(self.buttons)
        if enroller is None:
            self.enroll_button.setEnabled(False)
            _banner(self.message, "warning", "⚠ Enrolment is not available in this console: start it with "
                                            "`tierdeck console` (which passes the fleet CA), or use "
                                            "`tierdeck fleet enroll ADDRESS CODE`.")

    @Slot()
    def _submit(self) -> None:
        problem = address_problem(self.address.text())
        code = self.code.text().strip().upper()
        if not problem and not PAIRING_CODE.match(code):
            problem = "the pairing code is four groups of four letters or digits, e.g. ABCD-EFGH-JKLM-NPQR"
        if problem:
            _banner(self.message, "error", f"✖ {problem}")
            return
        if self.enroller is None:
            return
        self.enroll_button.setEnabled(False)
        _banner(self.message, "info", "Enrolling… (proving the pairing code both ways)")
        self._dispatcher.when_done(self.enroller(self.address.text().strip(), code), self._done, self._failed)

    def _done(self, message: object) -> None:
        self.enroll_button.setEnabled(True)
        _banner(self.message, "ok", f"✔ {message}")
        self.enrolled.emit(str(message))

    def _failed(self, exc: BaseException) -> None:
        self.enroll_button.setEnabled(True)
        _banner(self.message, "error", f"✖ Enrolment failed: {exc}")


class NodeDetailDialog(QDialog):
    """One node: identity, state and why, hardware, power now, deployed stages and its recent events (live)."""

    def __init__(self, key: str, fleet: FleetModel, events: EventLogModel | None = None,
                 telemetry: TelemetryModel | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.key = key
        self.fleet = fleet
        self.events = events
        self.telemetry = telemetry
        self.setWindowTitle("Node details")
        self.resize(640, 560)
        self.header = QLabel(self)
        self.header.setTextFormat(Qt.TextFormat.PlainText)
        font = theme.scaled_font(self.font(), 1.3, bold=True)
        self.header.setFont(font)
        self.state = QLabel(self)
        self.state.setWordWrap(True)
        self.info = QLabel(self)
        self.info.setWordWrap(True)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.stages = QTableWidget(0, 4, self)
        self.stages.setHorizontalHeaderLabels(["Stage", "Version", "State", "Rule / next hop"])
        self.stages.horizontalHeader().setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.stages.verticalHeader().setVisible(False)
        self.stages.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.recent = QTableWidget(0, 3, self)
        self.recent.setHorizontalHeaderLabels(["Time", "Severity", "Event"])
        self.recent.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.recent.verticalHeader().setVisible(False)
        self.recent.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        close = QPushButton("&Close", self)
        close.clicked.connect(self.accept)
        layout = QVBoxLayout(self)
        layout.addWidget(self.header)
        layout.addWidget(self.state)
        layout.addWidget(self.info)
        layout.addWidget(QLabel("<b>Deployed stages</b>", self))
        layout.addWidget(self.stages, 1)
        layout.addWidget(QLabel("<b>Recent events</b>", self))
        layout.addWidget(self.recent, 1)
        layout.addWidget(close, 0, Qt.AlignmentFlag.AlignRight)
        fleet.node_changed.connect(self._changed)
        fleet.state_changed.connect(self._state_changed)
        fleet.node_rekeyed.connect(self._rekeyed)
        if events is not None:
            events.event_added.connect(self._event)
        self.refresh()

    @Slot(str, str)
    def _rekeyed(self, old: str, new: str) -> None:
        if old == self.key:
            self.key = new
            self.refresh()

    @Slot(str)
    def _changed(self, key: str) -> None:
        if key == self.key:
            self.refresh()

    @Slot(str, str, str)
    def _state_changed(self, key: str, _old: str, _new: str) -> None:
        self._changed(key)

    @Slot(object)
    def _event(self, event: object) -> None:
        node = self.fleet.node(self.key)
        if node is not None and getattr(event, "node_id", "") == node.node_id:
            self._fill_events(node)

    def refresh(self) -> None:
        """Re-read the node from the fleet model."""
        node = self.fleet.node(self.key)
        if node is None:
            self.header.setText("Node forgotten")
            return
        _icon_name, words = fmt.security(node)
        self.header.setText(f"{node.name}  ·  {theme.TIER_TITLES.get(node.tier, node.tier or 'no tier')}"
                            + (f"  ·  {words}" if words else ""))
        self.state.setText(f"State: {fmt.state_text(node)}")
        sample = self.telemetry.latest(node.node_id) if self.telemetry and node.node_id else None
        info = node.info
        lines = [f"Address: {node.address}   (found by {node.source})", f"Node id: {node.node_id or 'not known yet'}",
                 f"Hardware: {fmt.hardware(node)}", f"Power now: {fmt.power(sample)}"]
        if info is not None:
            lines += [f"Execution providers: {fmt.providers(info.provider_preference or info.execution_providers)}"
                      f" (in the agent's order)",
                      f"Agent {info.agent_version} · {info.onnxruntime_build or 'onnxruntime'} · {info.platform}",
                      *[f"⚠ {problem}" for problem in info.runtime_problems],
                      f"Host: {info.hostname}"]
            if info.insecure:
                lines.append("⚠ INSECURE: this node serves without TLS or enrolment (development mode).")
        self.info.setText("\n".join(lines))
        self.stages.setRowCount(len(node.stages))
        for row, st in enumerate(node.stages):
            hop = f" → {st.next_model}@{st.next_hop}" if st.next_hop else " (last tier)"
            ran = f" · {st.runs_on_text}" if st.runs_on else ""
            values = [st.stage_id, st.version, ("✔ " if st.serving else "✖ ") + st.state + ran, (st.rule or "—") + hop]
            for col, value in enumerate(values):
                self.stages.setItem(row, col, QTableWidgetItem(value))
        self.stages.resizeColumnsToContents()
        self._fill_events(node)

    def _fill_events(self, node: NodeSnapshot) -> None:
        if self.events is None:
            return
        mine = [e for e in self.events.events() if node.node_id and e.node_id == node.node_id][-50:]
        self.recent.setRowCount(len(mine))
        for row, ev in enumerate(reversed(mine)):
            sev = QTableWidgetItem(str(ev.severity))
            sev.setIcon(theme.icon(theme.SEVERITY_ICONS.get(str(ev.severity), "info")))
            self.recent.setItem(row, 0, QTableWidgetItem(fmt.clock(ev.ts_ms / 1000)))
            self.recent.setItem(row, 1, sev)
            self.recent.setItem(row, 2, QTableWidgetItem(ev.message))
        self.recent.resizeColumnToContents(0)
        self.recent.resizeColumnToContents(1)
