"""What stands between the canvas and a deployment, in words: problems (blocking) and warnings (odd placements).

Each row says which stage, what is wrong and the key that fixes it; clicking a row (or Enter on it)
selects that stage on the canvas. The JSON path of a problem is the row's tooltip.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import QListWidget, QListWidgetItem, QWidget

from app._problem_words import Advice

STAGE_ROLE = Qt.ItemDataRole.UserRole + 1


class ProblemList(QListWidget):
    """Problems then warnings, one per row; a click selects the stage the row is about."""

    stage_clicked = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("problemList")
        self.setAccessibleName("Pipeline problems")
        self.setWordWrap(True)
        self.setVisible(False)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.itemClicked.connect(self._clicked)
        self.itemActivated.connect(self._clicked)
        self.problems: list[Advice] = []
        self.warnings: list[tuple[str, str]] = []

    def show_items(self, problems: Sequence[Advice], warnings: Sequence[tuple[str, str]]) -> None:
        """Replace the rows (hidden when there is nothing to say)."""
        self.problems, self.warnings = list(problems), list(warnings)
        self.clear()
        if problems:
            head = QListWidgetItem(f"✖ The pipeline cannot be deployed yet ({len(problems)} "
                                   f"problem{'s' if len(problems) != 1 else ''}) — click one to select its stage")
            head.setFlags(Qt.ItemFlag.ItemIsEnabled)
            head.setForeground(Qt.GlobalColor.white)
            self.addItem(head)
        for advice in problems:
            item = QListWidgetItem(f"  ✖ {advice}")
            item.setData(STAGE_ROLE, advice.stage_id)
            item.setToolTip(f"In the file: {advice.detail}")
            self.addItem(item)
        for stage_id, words in warnings:
            item = QListWidgetItem(f"  ⚠ {words}")
            item.setData(STAGE_ROLE, stage_id)
            item.setToolTip("Deploys, but probably not what you meant. Click to select the stage.")
            self.addItem(item)
        rows = self.count()
        self.setVisible(rows > 0)
        line = self.fontMetrics().height() + 6
        self.setFixedHeight(min(rows, 5) * line + 8 if rows else 0)

    @Slot(QListWidgetItem)
    def _clicked(self, item: QListWidgetItem) -> None:
        stage_id = item.data(STAGE_ROLE)
        if stage_id:
            self.stage_clicked.emit(str(stage_id))
