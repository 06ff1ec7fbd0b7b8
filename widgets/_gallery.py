"""The hard-example gallery: thumbnails of the rows the cascade escalated (or shadow rows that disagreed), filters,
a detail pane with every stage's scores along the row's way, and export of a selection as a dataset.

The view observes app.gallery.GalleryModel and sends it intents (refresh, filter, export); it never reads a node
or a file itself. Thumbnails are the nodes' own previews: images as grey or colour pictures, any other tensor as a
heat strip. A row whose stages disagreed carries a "≠" badge and an amber frame (never colour alone).
"""

from __future__ import annotations

import time

import numpy as np
from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRect, QSize, Qt, Signal, Slot
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPaintEvent, QPen, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListView,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSplitter,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QVBoxLayout,
    QWidget,
)

from app._hard_examples import TIME_WINDOWS, HardRow, NodeEntry, RowFilter
from app.gallery import DatasetWritten, GalleryModel
from widgets import _theme as theme

_Index = QModelIndex | QPersistentModelIndex
THUMB = 96
ALL = ""
# Heat strip colours (dark blue → teal → yellow): readable on the dark theme and without red/green.
_HEAT = np.array([[13, 8, 135], [33, 145, 140], [253, 231, 37]], dtype=np.float32)


def preview_image(data: bytes, shape: tuple[int, ...]) -> QImage:
    """A node's uint8 preview as an image: [H, W] grey, [H, W, 3] colour, [N] a one-pixel-high heat strip."""
    if len(shape) == 2 and len(data) == shape[0] * shape[1]:
        return QImage(data, shape[1], shape[0], shape[1], QImage.Format.Format_Grayscale8).copy()
    if len(shape) == 3 and shape[2] == 3 and len(data) == shape[0] * shape[1] * 3:
        return QImage(data, shape[1], shape[0], shape[1] * 3, QImage.Format.Format_RGB888).copy()
    if len(shape) == 1 and shape[0] and len(data) == shape[0]:
        t = np.frombuffer(data, np.uint8).astype(np.float32) / 255.0 * (len(_HEAT) - 1)
        low = np.minimum(t.astype(int), len(_HEAT) - 2)
        mix = (t - low)[:, None]
        rgb = np.ascontiguousarray(((1 - mix) * _HEAT[low] + mix * _HEAT[low + 1]).astype(np.uint8))
        return QImage(rgb.tobytes(), shape[0], 1, shape[0] * 3, QImage.Format.Format_RGB888).copy()
    return QImage()


def preview_pixmap(data: bytes, shape: tuple[int, ...], size: int) -> QPixmap:
    """The preview scaled into a `size` square (a strip keeps a quarter of the height)."""
    image = preview_image(data, shape)
    if image.isNull():
        return QPixmap()
    if len(shape) == 1:
        return QPixmap.fromImage(image.scaled(size, max(8, size // 4), Qt.AspectRatioMode.IgnoreAspectRatio))
    return QPixmap.fromImage(image.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio,
                                          Qt.TransformationMode.SmoothTransformation))


class ThumbnailDelegate(QStyledItemDelegate):
    """Thumbnail, caption under it, a '≠' badge and amber frame when the stages disagreed."""

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self._cache: dict[str, QPixmap] = {}

    def sizeHint(self, option: QStyleOptionViewItem, index: _Index) -> QSize:
        """A square and a line of text."""
        return QSize(THUMB + 16, THUMB + option.fontMetrics.height() + 14)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: _Index) -> None:
        """Draw one cell."""
        row = index.data(GalleryModel.RowRole)
        if not isinstance(row, HardRow):
            return
        painter.save()
        rect = QRect(option.rect)  # type: ignore[attr-defined]
        selected = bool(option.state & QStyle.StateFlag.State_Selected)  # type: ignore[attr-defined]
        painter.fillRect(rect.adjusted(2, 2, -2, -2), QColor(theme.SELECT if selected else theme.CARD))
        key = row.key
        pixmap = self._cache.get(key)
        if pixmap is None:
            data, shape = index.data(GalleryModel.PreviewRole)
            pixmap = self._cache[key] = preview_pixmap(data, shape, THUMB)
        if not pixmap.isNull():
            x = rect.x() + (rect.width() - pixmap.width()) // 2
            y = rect.y() + 6 + (THUMB - pixmap.height()) // 2
            painter.drawPixmap(x, y, pixmap)
        if row.disagreed:
            painter.setPen(QPen(QColor(theme.WARN), 2))
            painter.drawRect(rect.adjusted(3, 3, -4, -4))
            badge = QRect(rect.x() + 6, rect.y() + 6, 18, 18)
            painter.fillRect(badge, QColor(theme.WARN))
            painter.setPen(QColor(theme.BG))
            painter.drawText(badge, Qt.AlignmentFlag.AlignCenter, "≠")
        painter.setPen(QColor(theme.TEXT))
        text_rect = QRect(rect.x() + 4, rect.y() + THUMB + 8, rect.width() - 8, option.fontMetrics.height() + 2)
        text = option.fontMetrics.elidedText(str(index.data()), Qt.TextElideMode.ElideRight, text_rect.width())
        painter.drawText(text_rect, Qt.AlignmentFlag.AlignCenter, text)
        painter.restore()

    def forget(self) -> None:
        """Drop cached thumbnails (after a refresh)."""
        self._cache.clear()


class ScoreBars(QWidget):
    """A stage's scores as horizontal bars, the top class marked (bold and '◀'), values printed."""

    def __init__(self, scores: dict[str, float], top: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.scores = scores
        self.top = top
        line = self.fontMetrics().height() + 4
        self.setMinimumHeight(line * max(1, len(scores)))
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def paintEvent(self, event: QPaintEvent) -> None:
        """Draw the bars."""
        painter = QPainter(self)
        metrics = self.fontMetrics()
        line = metrics.height() + 4
        name_w = max((metrics.horizontalAdvance(k) for k in self.scores), default=0) + 10
        value_w = metrics.horizontalAdvance("0.000 ◀") + 8
        bar_w = max(20, self.width() - name_w - value_w)
        for i, (label, value) in enumerate(self.scores.items()):
            y = i * line
            is_top = label == self.top
            font = QFont(self.font())
            font.setBold(is_top)
            painter.setFont(font)
            painter.setPen(QColor(theme.TEXT if is_top else theme.MUTED))
            painter.drawText(QRect(0, y, name_w - 6, line), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                             label)
            painter.fillRect(QRect(name_w, y + 3, bar_w, line - 6), QColor(theme.PANEL))
            filled = int(bar_w * min(1.0, max(0.0, value)))
            painter.fillRect(QRect(name_w, y + 3, filled, line - 6), QColor(theme.ACCENT if is_top else theme.BORDER))
            painter.drawText(QRect(name_w + bar_w + 6, y, value_w, line), Qt.AlignmentFlag.AlignVCenter,
                             f"{value:.3f}" + (" ◀" if is_top else ""))
        painter.end()


class RowDetail(QScrollArea):
    """One row, stage by stage along its way: what each node saw, its scores, and what came back."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # labels wrap instead
        self.row: HardRow | None = None
        self._show_empty()

    def _show_empty(self) -> None:
        label = QLabel("Select a thumbnail to see what each stage made of it.")
        label.setWordWrap(True)
        label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        label.setContentsMargins(12, 12, 12, 12)
        self.setWidget(label)

    def show_row(self, row: HardRow | None) -> None:
        """Show this row (None: the hint)."""
        self.row = row
        if row is None:
            self._show_empty()
            return
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(12, 8, 12, 8)
        root = row.root.example
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(root.created_unix_ms / 1000))
        title = QLabel(f"<b style='font-size:large'>{row.label}</b> &nbsp;answered by {root.final_stage}"
                       f" ({root.final_confidence:.2f}){'' if root.final else ' — provisional'}")
        title.setWordWrap(True)
        title.setObjectName("gallery_detail_title")
        layout.addWidget(title)
        facts = QLabel(f"{row.link} · {'shadow row, disagreed' if row.kind == 'shadow_disagreed' else 'escalated'}"
                       f"{' · stages disagreed ≠' if row.disagreed else ''}<br>{when}")
        facts.setStyleSheet(f"color: {theme.MUTED}")
        facts.setWordWrap(True)
        layout.addWidget(facts)
        for i, entry in enumerate(row.entries):
            layout.addWidget(self._stage_box(entry, row.disagreed_at(i)))
        layout.addStretch(1)
        self.setWidget(body)

    def _stage_box(self, entry: NodeEntry, disagreed: bool) -> QFrame:
        e = entry.example
        box = QFrame()
        box.setFrameShape(QFrame.Shape.StyledPanel)
        box.setObjectName("gallery_stage")
        outer = QHBoxLayout(box)
        picture = QLabel()
        picture.setPixmap(preview_pixmap(bytes(e.preview), tuple(e.preview_shape), 88))
        picture.setFixedWidth(94)
        picture.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignHCenter)
        outer.addWidget(picture)
        text = QVBoxLayout()
        tier_colour = theme.TIER_COLOURS.get(entry.tier, theme.MUTED)
        version = e.stage_version if len(e.stage_version) <= 12 else e.stage_version[:12] + "…"
        head = QLabel(f"<b>{e.stage_id}</b> on {entry.node_name} "
                      f"<span style='color:{tier_colour}'>({theme.TIER_TITLES.get(entry.tier, entry.tier)})</span>"
                      f" <span style='color:{theme.MUTED}'>v{version}</span>")
        head.setToolTip(f"version {e.stage_version}")
        head.setWordWrap(True)
        text.addWidget(head)
        answer = f"said <b>{e.stage_label}</b> ({e.stage_confidence:.2f})"
        if e.hop_label:
            mark = f" <span style='color:{theme.WARN}'>≠ disagreed</span>" if disagreed else ""
            answer += f" → {e.hop_stage} answered <b>{e.hop_label}</b> ({e.hop_confidence:.2f}){mark}"
        elif e.row_id:
            answer += " → sent up, no answer yet (queued)"
        said = QLabel(answer)
        said.setWordWrap(True)
        text.addWidget(said)
        text.addWidget(ScoreBars(entry.scores(), e.stage_label))
        ids = QLabel(f"row {e.row_id or '—'}" + (f" · arrived as {e.origin_row_id}" if e.origin_row_id else ""))
        ids.setStyleSheet(f"color: {theme.MUTED}")
        ids.setWordWrap(True)
        ids.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        ids.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        text.addWidget(ids)
        outer.addLayout(text, 1)
        return box


class Gallery(QWidget):
    """Hard examples: filter bar, thumbnail grid, detail pane, export of the selection."""

    status_message = Signal(str)

    def __init__(self, model: GalleryModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.refresh_button = QPushButton(theme.icon("running"), "&Refresh")
        self.refresh_button.setToolTip("Pull the newest hard examples from every node")
        self.link_box = QComboBox()
        self.class_box = QComboBox()
        self.time_box = QComboBox()
        for label in TIME_WINDOWS:
            self.time_box.addItem(label, TIME_WINDOWS[label])
        self.time_box.setCurrentText("any time")
        self.kind_box = QComboBox()
        for label, kind in (("escalated and shadow", ""), ("escalated", "escalated"),
                            ("shadow, disagreed", "shadow_disagreed")):
            self.kind_box.addItem(label, kind)
        self.disagreed_box = QCheckBox("Disagreed only (≠)")
        self.older_button = QPushButton("&Older")
        self.older_button.setToolTip("Pull the next older page from the nodes that hold more")
        self.older_button.setEnabled(False)
        self.export_button = QPushButton("E&xport selected…")
        self.export_button.setToolTip("Write the selected rows as a dataset: FILE.npz (inputs, labels) + FILE.json "
                                      "(labels, every stage's scores, provenance). Ctrl+A selects all shown")
        self.export_button.setEnabled(False)
        self.count_label = QLabel()
        # Three short rows rather than one long one: the tab must fit beside the fleet panel on a small laptop.
        first = QHBoxLayout()
        first.addWidget(self.refresh_button)
        first.addWidget(self.older_button)
        first.addWidget(self.export_button)
        first.addStretch(1)
        first.addWidget(self.count_label)
        second = QHBoxLayout()
        third = QHBoxLayout()
        for line, text, box in ((second, "Link", self.link_box), (second, "Class", self.class_box),
                                (third, "Time", self.time_box), (third, "Kind", self.kind_box)):
            box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            box.setMinimumContentsLength(10)
            label = QLabel(f"{text}:")
            label.setBuddy(box)
            line.addWidget(label)
            line.addWidget(box, 1)
        third.addWidget(self.disagreed_box)
        bar = QVBoxLayout()
        for line in (first, second, third):
            bar.addLayout(line)

        self.view = QListView()
        self.view.setObjectName("gallery_grid")
        self.view.setViewMode(QListView.ViewMode.IconMode)
        self.view.setResizeMode(QListView.ResizeMode.Adjust)
        self.view.setMovement(QListView.Movement.Static)
        self.view.setUniformItemSizes(True)
        self.view.setSpacing(4)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.delegate = ThumbnailDelegate(self.view)
        self.view.setItemDelegate(self.delegate)
        self.view.setModel(model)
        self.empty_label = QLabel("No hard examples yet. A node records the rows its stages escalate (and shadow "
                                  "rows that disagree) in its ledger; press Refresh to pull them.")
        self.empty_label.setWordWrap(True)
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.detail = RowDetail()
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.empty_label)
        left_layout.addWidget(self.view, 1)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.detail)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 1)
        self.summary_label = QLabel()
        self.summary_label.setWordWrap(True)
        self.summary_label.setStyleSheet(f"color: {theme.MUTED}")
        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(self.splitter, 1)
        layout.addWidget(self.summary_label)
        self._dialog: QFileDialog | None = None

        self.refresh_button.clicked.connect(model.refresh)
        self.older_button.clicked.connect(model.load_older)
        for box in (self.link_box, self.class_box, self.time_box, self.kind_box):
            box.currentIndexChanged.connect(self._filters_changed)
        self.disagreed_box.toggled.connect(self._filters_changed)
        self.export_button.clicked.connect(self.export_dialog)
        model.refreshed.connect(self._refreshed)
        model.refresh_failed.connect(self._refresh_failed)
        model.busy_changed.connect(self._busy)
        model.exported.connect(self._exported)
        model.export_failed.connect(self._export_failed)
        self.view.selectionModel().selectionChanged.connect(self._selection_changed)
        self._refreshed()

    # ----- filters ---------------------------------------------------------------------------------------------
    def current_filter(self) -> RowFilter:
        """The filter the bar shows."""
        return RowFilter.window(float(self.time_box.currentData() or 0), link=self.link_box.currentData() or "",
                                label=self.class_box.currentData() or "", kind=self.kind_box.currentData() or "",
                                disagreed_only=self.disagreed_box.isChecked())

    @Slot()
    def _filters_changed(self) -> None:
        self.model.set_filter(self.current_filter())

    def _fill(self, box: QComboBox, everything: str, values: list[str]) -> None:
        current = box.currentData() or ""
        box.blockSignals(True)
        box.clear()
        box.addItem(everything, ALL)
        for value in values:
            box.addItem(value, value)
        box.setCurrentIndex(max(0, box.findData(current)))
        box.blockSignals(False)

    # ----- model → view ----------------------------------------------------------------------------------------
    @Slot()
    def _refreshed(self) -> None:
        self.delegate.forget()
        self._fill(self.link_box, "all links", self.model.links())
        self._fill(self.class_box, "all classes", self.model.classes())
        shown, pulled = self.model.rowCount(), len(self.model.all_rows)
        self.count_label.setText(f"{shown} of {pulled} rows" if shown != pulled else f"{shown} rows")
        self.empty_label.setVisible(pulled == 0)
        self.view.setVisible(pulled > 0)
        self.summary_label.setText(self.model.summary())
        self.older_button.setEnabled(self.model.has_older and not self.model.busy)
        selected = self.detail.row
        keep = next((r for r in self.model.rows if selected is not None and r.key == selected.key), None)
        self.detail.show_row(keep)
        self._selection_changed()

    @Slot(str)
    def _refresh_failed(self, reason: str) -> None:
        self.status_message.emit(f"Hard examples not pulled: {reason}")

    @Slot(bool)
    def _busy(self, busy: bool) -> None:
        self.refresh_button.setEnabled(not busy)
        self.older_button.setEnabled(not busy and self.model.has_older)
        self.refresh_button.setText("Pulling…" if busy else "&Refresh")

    @Slot()
    def _selection_changed(self, *args: object) -> None:
        rows = self.selected_rows()
        self.export_button.setEnabled(bool(rows))
        self.export_button.setText(f"E&xport {len(rows)} selected…" if rows else "E&xport selected…")
        current = self.view.currentIndex()
        if rows:
            row = current.data(GalleryModel.RowRole) if current.isValid() and \
                self.view.selectionModel().isSelected(current) else rows[0]
            self.detail.show_row(row if isinstance(row, HardRow) else rows[0])

    def selected_rows(self) -> list[HardRow]:
        """The selected rows, in the order shown."""
        indexes = sorted(self.view.selectionModel().selectedIndexes(), key=lambda i: i.row())
        return [self.model.row(i.row()) for i in indexes]

    def select_all(self) -> None:
        """Select every row shown."""
        self.view.selectAll()

    # ----- export ----------------------------------------------------------------------------------------------
    def export_dialog(self) -> QFileDialog:
        """Ask where to write the selection (non-blocking); the dataset is written when a file is chosen."""
        dialog = QFileDialog(self, "Export hard examples as a dataset", "hard-examples.npz",
                             "Datasets (*.npz)")
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setDefaultSuffix("npz")
        dialog.fileSelected.connect(self.export_to)
        self._dialog = dialog
        dialog.open()
        return dialog

    @Slot(str)
    def export_to(self, path: str) -> None:
        """Write the selected rows to PATH (.npz and .json next to it)."""
        self.model.export(self.selected_rows(), path)

    @Slot(object)
    def _exported(self, written: DatasetWritten) -> None:
        gone = f"; {len(written.skipped)} left out (gone from their node or another input shape)" \
            if written.skipped else ""
        self.status_message.emit(f"Exported {written.rows} hard examples to {written.npz} and {written.manifest.name}"
                                 f"{gone}")

    @Slot(str)
    def _export_failed(self, reason: str) -> None:
        self.status_message.emit(f"Export failed: {reason}")
