"""The hard-example gallery's model (QtCore only): pulls the nodes' ledgers on demand, joins, filters, exports.

`refresh()` asks every connected node for the newest page of its ledger (app/_console.py, on the I/O loop; the
nodes read their SQLite off their event loop), joins a row's entries across nodes (app/_hard_examples.join) and
shows the rows that pass the filter, newest first. Nothing is polled: the operator pulls (the gallery tab pulls
when it is shown, and on Refresh). `export(rows, path)` writes a dataset through the core; the outcome comes back
as `exported` or `export_failed` on the GUI thread.
"""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import QAbstractListModel, QModelIndex, QObject, QPersistentModelIndex, Qt, Signal

from app._hard_examples import DatasetWritten, HardExamplePull, HardRow, RowFilter
from app.qt import QtConsole
from runners._proto import tierdeck_control_pb2 as ctl

log = logging.getLogger(f"tierdeck.{__name__}")

_Index = QModelIndex | QPersistentModelIndex


class GalleryModel(QAbstractListModel):
    """The rows the nodes' ledgers hold, joined and filtered; one list row per input row."""

    RowRole = Qt.ItemDataRole.UserRole + 1        # HardRow
    PreviewRole = Qt.ItemDataRole.UserRole + 2    # (bytes, shape) of the first stage's thumbnail
    KeyRole = Qt.ItemDataRole.UserRole + 3

    refreshed = Signal()                  # rows, choices and the ledger summary changed
    refresh_failed = Signal(str)
    busy_changed = Signal(bool)
    exported = Signal(object)             # DatasetWritten
    export_failed = Signal(str)

    def __init__(self, console: QtConsole, per_node: int = 500, parent: QObject | None = None) -> None:
        super().__init__(parent or console)
        self._console = console
        self.per_node = per_node
        self.filter = RowFilter()
        self.all_rows: list[HardRow] = []
        self._rows: list[HardRow] = []
        self.pull = HardExamplePull()
        self.busy = False

    # Qt model API
    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        """Rows passing the filter."""
        return 0 if parent.isValid() else len(self._rows)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        """Caption, tooltip, the joined row, its thumbnail bytes."""
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        row = self._rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return caption(row)
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{row.link} · {row.kind}" + (" · disagreed" if row.disagreed else "") + \
                f"\n{' / '.join(f'{e.node_name}: {e.example.stage_label}' for e in row.entries)}"
        if role == self.RowRole:
            return row
        if role == self.PreviewRole:
            root = row.root.example
            return bytes(root.preview), tuple(root.preview_shape)
        if role == self.KeyRole:
            return row.key
        return None

    def row(self, i: int) -> HardRow:
        """The i-th visible row."""
        return self._rows[i]

    @property
    def rows(self) -> list[HardRow]:
        """The visible rows, newest first."""
        return list(self._rows)

    # intents
    def refresh(self) -> None:
        """Pull the newest `per_node` entries of every node's ledger (no-op while a pull is running)."""
        if self.busy:
            return
        self._set_busy(True)
        future = self._console.core.hard_examples(ctl.ListHardExamplesRequest(limit=self.per_node))
        self._console.dispatcher.when_done(future, self._pulled, self._pull_failed)

    def load_older(self) -> None:
        """Pull the next older page of every node that has more (rows already shown stay)."""
        older = self.pull.older()
        if self.busy or not older:
            return
        self._set_busy(True)
        future = self._console.core.hard_examples(ctl.ListHardExamplesRequest(limit=self.per_node), older)
        self._console.dispatcher.when_done(future, self._pulled_older, self._pull_failed)

    @property
    def has_older(self) -> bool:
        """Do the nodes hold older entries than those pulled?"""
        return bool(self.pull.older())

    def set_filter(self, wanted: RowFilter) -> None:
        """Show only the rows that pass `wanted` (applied here: link, class and disagreement are the joined row's)."""
        self.filter = wanted
        self._apply()

    def export(self, rows: list[HardRow], path: str) -> None:
        """Write these rows as a dataset (PATH.npz + PATH.json); `exported` or `export_failed` follows."""
        if not rows:
            self.export_failed.emit("nothing selected to export")
            return
        future = self._console.core.export_hard_examples(rows, path, source="tierdeck console gallery")
        self._console.dispatcher.when_done(future, self.exported.emit,
                                           lambda exc: self.export_failed.emit(f"{type(exc).__name__}: {exc}"))

    # what the filters can offer
    def links(self) -> list[str]:
        """Every link a pulled row crossed."""
        return sorted({r.link for r in self.all_rows})

    def classes(self) -> list[str]:
        """Every class a stage answered for a pulled row."""
        return sorted({c for r in self.all_rows for c in r.classes})

    def summary(self) -> str:
        """What was pulled from where, each ledger's fill and what its bounds cost, and who did not answer."""
        parts = []
        for name, ledger in sorted(self.pull.ledgers.items()):
            if not ledger.max_bytes:
                parts.append(f"{name}: ledger off")
                continue
            fill = f"{name}: {ledger.rows} rows, {ledger.bytes / 2**20:.1f}/{ledger.max_bytes / 2**20:.0f} MiB"
            lost = [f"{n} {what}" for n, what in ((ledger.evicted_total, "evicted"), (ledger.expired_total, "expired"),
                                                 (ledger.dropped_total, "dropped")) if n]
            parts.append(fill + (f" ({', '.join(lost)})" if lost else ""))
        parts += [f"{name}: not read ({why})" for name, why in sorted(self.pull.errors.items())]
        return " · ".join(parts)

    # results (GUI thread)
    def _pulled(self, pull: HardExamplePull) -> None:
        self.pull = pull
        self.all_rows = pull.rows()
        self._set_busy(False)
        self._apply()

    def _pulled_older(self, page: HardExamplePull) -> None:
        self._pulled(self.pull.merge(page))

    def _pull_failed(self, exc: BaseException) -> None:
        self._set_busy(False)
        self.refresh_failed.emit(f"{type(exc).__name__}: {exc}")

    def _apply(self) -> None:
        self.beginResetModel()
        self._rows = [r for r in self.all_rows if self.filter.matches(r)]
        self.endResetModel()
        self.refreshed.emit()

    def _set_busy(self, busy: bool) -> None:
        if busy != self.busy:
            self.busy = busy
            self.busy_changed.emit(busy)


def caption(row: HardRow) -> str:
    """The thumbnail's caption: the first stage's answer → the final one (just the class when they are the same)."""
    said = row.root.example.stage_label
    return f"{said} → {row.label}" if said and said != row.label else row.label


__all__ = ["DatasetWritten", "GalleryModel", "HardRow", "RowFilter", "caption"]
