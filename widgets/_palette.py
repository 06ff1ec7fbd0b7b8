"""The stage palette and the drag payload: model cards that can be dragged onto a tier lane or a node card.

A drag carries real mime data of type `STAGE_MIME`: JSON with either `model_path` (a model card
from the palette: a new stage) or `stage_id` (a stage already on the canvas: re-place or reorder).
The palette's own `mimeData()` builds it, so a test's QDropEvent and an operator's mouse drag carry
the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QMimeData, QSize, Qt, Signal
from PySide6.QtGui import QAction, QKeyEvent
from PySide6.QtWidgets import QAbstractItemView, QListWidget, QListWidgetItem, QWidget

from app.core import ModelCard
from widgets import _format as fmt
from widgets import _theme as theme

STAGE_MIME = "application/x-tierdeck-stage+json"
PATH_ROLE = Qt.ItemDataRole.UserRole + 1


@dataclass(frozen=True)
class StageDrag:
    """What is being dragged: a model card (new stage) or an existing stage."""

    model_path: str = ""
    stage_id: str = ""

    @property
    def is_new(self) -> bool:
        """True for a model card from the palette."""
        return bool(self.model_path)


def stage_mime(drag: StageDrag) -> QMimeData:
    """Mime data for a drag (custom type with JSON, plus plain text for other applications)."""
    mime = QMimeData()
    payload = {"model_path": drag.model_path} if drag.model_path else {"stage_id": drag.stage_id}
    mime.setData(STAGE_MIME, json.dumps(payload).encode("utf-8"))
    mime.setText(drag.model_path or drag.stage_id)
    return mime


def read_stage_mime(mime: QMimeData | None) -> StageDrag | None:
    """The drag payload, or None when the mime data is not ours or malformed."""
    if mime is None or not mime.hasFormat(STAGE_MIME):
        return None
    try:
        payload = json.loads(bytes(mime.data(STAGE_MIME).data()).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(payload, dict):
        return None
    path, stage_id = payload.get("model_path"), payload.get("stage_id")
    if isinstance(path, str) and path:
        return StageDrag(model_path=path)
    if isinstance(stage_id, str) and stage_id:
        return StageDrag(stage_id=stage_id)
    return None


def describe_card(card: ModelCard) -> str:
    """'image [-1,1,64,64] → probs [-1,2]'."""
    def tensors(items: tuple[object, ...]) -> str:
        return ", ".join(f"{t.name} [{','.join(str(d) for d in t.shape)}]" for t in items)  # type: ignore[attr-defined]
    return f"{tensors(card.inputs)} → {tensors(card.outputs)}"


def summary(card: ModelCard) -> str:
    """What a stage of this model decides on: 'rule on probs · 5 classes · card rule' (or the problem)."""
    hint = card.suggestion
    if hint is None:
        return describe_card(card)
    if hint.problems:
        return "⚠ " + hint.problems[0]
    classes = f"{hint.classes} class{'es' if hint.classes != 1 else ''}" if hint.scores != "raw" else "one score"
    origin = "card rule" if hint.source == "card" else "default rule"
    kind = "" if hint.scores == "probabilities" else f" ({hint.scores})"
    return f"→ {hint.output}{kind} · {classes} · {origin}"


class StagePalette(QListWidget):
    """Model cards to drag onto the canvas; Enter on a card asks where to place it (keyboard drop)."""

    place_requested = Signal(str)   # model path

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.cards: dict[str, ModelCard] = {}
        self.bundled: set[str] = set()
        self.show_bundled_action = QAction("Show &bundled demo models", self)
        self.show_bundled_action.setCheckable(True)
        self.show_bundled_action.setChecked(True)
        self.show_bundled_action.setShortcut("Ctrl+Shift+B")
        self.show_bundled_action.setToolTip("List the demo models that ship with tierdeck after your own")
        self.show_bundled_action.toggled.connect(self.set_show_bundled)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        self.addAction(self.show_bundled_action)
        self.setDragEnabled(True)
        self.setDragDropMode(QAbstractItemView.DragDropMode.DragOnly)
        self.setDefaultDropAction(Qt.DropAction.CopyAction)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setIconSize(QSize(22, 22))
        self.setWordWrap(False)
        self.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.setSpacing(2)
        self.setFlow(QListWidget.Flow.LeftToRight)
        self.setWrapping(False)
        self.setUniformItemSizes(True)
        self.setHorizontalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setAccessibleName("Stage palette")
        self.setToolTip("Drag a model onto a tier lane (every node of the tier) or onto a node card (pin to "
                        "that node). Keyboard: select it and press Enter.")

    def add_card(self, card: ModelCard, bundled: bool = False) -> QListWidgetItem:
        """Show a model card (replacing one with the same path); the operator's own models come before bundled ones."""
        key = str(Path(card.path).resolve())
        self.cards[key] = card
        if bundled:
            self.bundled.add(key)
        for row in range(self.count()):
            item = self.item(row)
            if item is not None and item.data(PATH_ROLE) == key:
                self._fill(item, card)
                return item
        item = QListWidgetItem(theme.icon("stage"), "")
        item.setData(PATH_ROLE, key)
        lines = self.fontMetrics().height()
        item.setSizeHint(QSize(262, lines * 2 + 10))
        item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsDragEnabled)
        self._fill(item, card)
        if bundled:
            self.addItem(item)
            item.setHidden(not self.show_bundled_action.isChecked())
        else:
            first_bundled = next((row for row in range(self.count())
                                  if (it := self.item(row)) is not None and it.data(PATH_ROLE) in self.bundled), None)
            if first_bundled is None:
                self.addItem(item)
            else:
                self.insertItem(first_bundled, item)
        return item

    def set_show_bundled(self, show: bool) -> None:
        """Show or hide the bundled demo models."""
        for row in range(self.count()):
            item = self.item(row)
            if item is not None and item.data(PATH_ROLE) in self.bundled:
                item.setHidden(not show)

    def _fill(self, item: QListWidgetItem, card: ModelCard) -> None:
        name = Path(card.path).name
        item.setText(f"{name} · {fmt.size(card.size_bytes)}\n{summary(card)}")
        hint = card.suggestion
        item.setToolTip(f"{card.path}\nopset {card.opset} · ~{fmt.size(card.memory_estimate_bytes)} RAM once loaded · "
                        f"providers: "
                        f"{fmt.providers(card.providers)}"
                        + (f"\ndeclared draw {card.watts:g} W" if card.watts else "")
                        + f"\nsha256 {card.sha256[:16]}…\n{describe_card(card)}"
                        + (f"\n{hint.words()}; labels from {hint.labels_from}: {', '.join(hint.labels[:12])}"
                           if hint is not None else "")
                        + "\nDrag onto a lane or a node card, or press Enter.")

    def card(self, path: str) -> ModelCard | None:
        """The card for a model path."""
        return self.cards.get(str(Path(path).resolve())) if path else None

    def item_for(self, path: str) -> QListWidgetItem | None:
        """The palette item showing a model path."""
        key = str(Path(path).resolve())
        for row in range(self.count()):
            item = self.item(row)
            if item is not None and item.data(PATH_ROLE) == key:
                return item
        return None

    def mimeTypes(self) -> list[str]:
        """The custom stage mime type."""
        return [STAGE_MIME]

    def mimeData(self, items: list[QListWidgetItem]) -> QMimeData:  # type: ignore[override]
        """The drag payload of the first dragged item."""
        path = items[0].data(PATH_ROLE) if items else ""
        return stage_mime(StageDrag(model_path=str(path or "")))

    def supportedDragActions(self) -> Qt.DropAction:
        """Copy: the card stays in the palette."""
        return Qt.DropAction.CopyAction

    def keyPressEvent(self, event: QKeyEvent) -> None:
        """Enter places the selected card (the keyboard's drag-and-drop)."""
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            item = self.currentItem()
            if item is not None:
                self.place_requested.emit(str(item.data(PATH_ROLE)))
                return
        super().keyPressEvent(event)
