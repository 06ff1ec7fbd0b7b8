"""Drag and drop on the pipeline canvas, with fit checks: a part of `PipelineCanvas` (widgets/_canvas.py).

A drag carries `STAGE_MIME` (see `_palette`). When it enters the canvas, every target is fit-checked
through the fleet model (`FleetModel.fit`, no I/O): a node card for pinning, a lane for "every
reachable node of the tier". Each target then shows ✔/✖ with words, the hovered one its full reason
next to the cursor; a drop where the stage does not fit is refused and the reason stays on screen.
A palette model dropped makes a new stage (rule from the model, see app/_model_inspect.py); a stage
dragged to another lane or a node card is moved there (`Retier`, one undoable edit), never copied.
The keyboard does the same through "Place stage…" (Ctrl+P): a menu of the targets with their fit.
"""

from __future__ import annotations

import re

from PySide6.QtCore import QPoint, QPointF, Qt, Slot
from PySide6.QtGui import QAction, QDragEnterEvent, QDragLeaveEvent, QDragMoveEvent, QDropEvent, QPainter, QPixmap
from PySide6.QtWidgets import QGraphicsItem, QMenu, QStyleOptionGraphicsItem, QWidget

from app._routing import REACHABLE, TIER_ORDER
from app.core import (
    InsertStage,
    ModelCard,
    MoveStage,
    NodeSnapshot,
    Requirements,
    Retier,
    rule_origin,
    stage_from_card,
)
from app.pipeline_file import Placement
from widgets import _format as fmt
from widgets import _theme as theme
from widgets._canvas_items import STAGE_H, STAGE_W, FitMark, LaneItem, NodeCardItem, StageChipItem
from widgets._palette import StageDrag, read_stage_mime, stage_mime

_TIER_ORDER = TIER_ORDER


def new_stage_id(card: ModelCard, taken: set[str]) -> str:
    """A stage id from the model file name, unique in the pipeline (a-z 0-9 _ . -)."""
    base = re.sub(r"[^a-z0-9_.-]+", "-", card.path.stem.lower()).strip("-._") or "stage"
    if not base[0].isalnum():
        base = "s" + base
    base = base[:56]
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}-{n}", n + 1
    return candidate


class CanvasDragDrop:
    """Drag-and-drop and keyboard placement of `PipelineCanvas` (a mixin: it uses the canvas's models and items)."""

    # ----- drag and drop ---------------------------------------------------------------------------------
    def start_stage_drag(self, chip: StageChipItem, widget: QWidget | None) -> None:
        """Drag an existing stage (re-place it on a lane or a node card, or drop it on another stage to reorder)."""
        from PySide6.QtGui import QDrag

        drag = QDrag(widget or self.viewport())
        drag.setMimeData(stage_mime(StageDrag(stage_id=chip.stage_id)))
        pixmap = QPixmap(int(STAGE_W), int(STAGE_H))
        pixmap.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pixmap)
        chip.paint(painter, QStyleOptionGraphicsItem(), None)
        painter.end()
        drag.setPixmap(pixmap.scaledToWidth(int(STAGE_W * 0.8)))
        drag.setHotSpot(QPoint(20, 20))
        drag.exec(Qt.DropAction.MoveAction | Qt.DropAction.CopyAction, Qt.DropAction.MoveAction)

    def requirements_for(self, drag: StageDrag) -> Requirements | None:
        """What the dragged stage needs from a node (None when unknown)."""
        if drag.is_new:
            card = self.stage_palette.card(drag.model_path)
            return Requirements.from_card(card) if card is not None else None
        try:
            self.pipeline.stage(drag.stage_id)
        except KeyError:
            return None
        return self.pipeline.requirements(drag.stage_id)

    def fit_node(self, req: Requirements | None, key: str) -> FitMark:
        """Fit of the dragged stage on one node card (pin)."""
        node = self.fleet.node(key)
        if node is None:
            return FitMark(False, f"node {key} is gone", "gone")
        if not node.node_id:
            return FitMark(False, f"{node.name} has not answered yet: its node id is unknown, so nothing can be "
                                  "pinned to it", "not answered yet")
        if req is None:
            return FitMark(False, "the model card is not read yet (cannot check memory or providers)",
                           "model not read yet")
        result = self.fleet.fit(req, key)
        if result.fits:
            return FitMark(True, f"{result.hint} — pin the stage to this node",
                           f"fits: {fmt.providers((result.provider,))}")
        return FitMark(False, result.reason, _short(result.reasons))

    def fit_lane(self, req: Requirements | None, tier: str) -> FitMark:
        """Fit of the dragged stage on a whole tier: every reachable node of it must take the stage."""
        nodes = self.fleet.by_tier(tier)
        reachable = [n for n in nodes if n.state in REACHABLE]
        if not reachable:
            why = "it has no nodes" if not nodes else "none of its nodes is reachable"
            return FitMark(False, f"tier {tier}: {why}, so a stage placed here could not be deployed",
                           "no reachable node")
        if req is None:
            return FitMark(False, "the model card is not read yet (cannot check memory or providers)",
                           "model not read yet")
        results = [self.fleet.fit(req, n.key) for n in reachable]
        bad = [r for r in results if not r.fits]
        skipped = len(nodes) - len(reachable)
        note = f"; {skipped} unreachable node{'s' if skipped != 1 else ''} will be skipped" if skipped else ""
        if not bad:
            hints = "; ".join(r.hint for r in results)
            return FitMark(True, f"fits on all {len(reachable)} reachable {tier} node"
                                 f"{'s' if len(reachable) != 1 else ''} ({hints}){note}", f"fits on {len(reachable)}")
        return FitMark(False, f"{len(bad)} of {len(reachable)} {tier} nodes cannot take it: "
                              + "; ".join(r.reason for r in bad[:3]) + ("; …" if len(bad) > 3 else ""),
                       f"{len(bad)}/{len(reachable)} refuse")

    def target_at(self, pos: QPoint) -> QGraphicsItem | None:
        """The drop target under a viewport position: a node card, a stage chip, else a lane."""
        lane = None
        for item in self.items(pos):
            if isinstance(item, NodeCardItem | StageChipItem):
                return item
            if isinstance(item, LaneItem) and lane is None:
                lane = item
        return lane

    def _mark_targets(self, drag: StageDrag) -> None:
        req = self.requirements_for(drag)
        self._drag_req = req
        for key, card in self.cards.items():
            card.mark = self.fit_node(req, key)
            card.update()
        for tier, lane in self.lanes.items():
            lane.mark = self.fit_lane(req, tier)
            lane.update()

    def _clear_marks(self) -> None:
        for card in self.cards.values():
            card.mark = None
            card.hovered = False
            card.update()
        for lane in self.lanes.values():
            lane.mark = None
            lane.hovered = False
            lane.update()
        self.hint.setVisible(False)
        self._drag = None
        self._hover = None

    def mark_of(self, target: QGraphicsItem | None) -> FitMark | None:
        """The fit mark a target shows during the current drag."""
        if isinstance(target, NodeCardItem | LaneItem):
            return target.mark
        return None

    def _describe_drop(self, drag: StageDrag, target: QGraphicsItem | None) -> tuple[bool, str]:
        """(allowed, words) for dropping `drag` on `target`."""
        what = (f"new stage from {drag.model_path.rsplit('/', 1)[-1]}" if drag.is_new else f"stage {drag.stage_id}")
        if isinstance(target, StageChipItem):
            if drag.is_new or target.stage_id == drag.stage_id:
                return False, "drop on a lane or a node card (drop a stage on another stage to reorder)"
            index = self.pipeline.document.index(target.stage_id)
            return True, f"move {what} to position {index + 1} (before/after {target.stage_id})"
        if isinstance(target, NodeCardItem):
            mark = target.mark or self.fit_node(self._drag_req, target.key)
            node = target.node()
            name = node.name if node is not None else target.key
            if mark.fits:
                return True, f"pin {what} to {name}\n{mark.reason}"
            return False, f"{what} cannot be pinned to {name}: {mark.reason}"
        if isinstance(target, LaneItem):
            mark = target.mark or self.fit_lane(self._drag_req, target.tier)
            if mark.fits:
                return True, f"place {what} on every {target.tier} node\n{mark.reason}"
            return False, f"{what} cannot be placed on tier {target.tier}: {mark.reason}"
        return False, "drop on a tier lane or a node card"

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        """Accept our mime type and fit-check every target."""
        drag = read_stage_mime(event.mimeData())
        if drag is None:
            event.ignore()
            return
        self._drag = drag
        self._mark_targets(drag)
        event.setDropAction(Qt.DropAction.CopyAction if drag.is_new else Qt.DropAction.MoveAction)
        event.accept()
        self._hover_at(event.position().toPoint(), event)

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        """Highlight the target under the cursor and say what a drop would do (or why not)."""
        if self._drag is None:
            drag = read_stage_mime(event.mimeData())
            if drag is None:
                event.ignore()
                return
            self._drag = drag
            self._mark_targets(drag)
        self._hover_at(event.position().toPoint(), event)

    def _hover_at(self, pos: QPoint, event: QDragMoveEvent) -> None:
        assert self._drag is not None
        target = self.target_at(pos)
        if target is not self._hover:
            for item in (self._hover, target):
                if isinstance(item, NodeCardItem | LaneItem):
                    item.hovered = item is target
                    item.update()
            self._hover = target
        allowed, words = self._describe_drop(self._drag, target)
        self.hint.show_text(words, allowed, self.mapToScene(pos))
        visible = self.mapToScene(self.viewport().rect()).boundingRect()
        box = self.hint.sceneBoundingRect()
        dx = min(0.0, visible.right() - box.right() - 4)
        dy = min(0.0, visible.bottom() - box.bottom() - 4)
        if dx or dy:
            at = self.mapToScene(pos)
            self.hint.setPos(self.hint.pos().x() + dx if dx == 0 else at.x() - box.width() - 12,
                             self.hint.pos().y() + dy if dy == 0 else at.y() - box.height() - 12)
        self.status_message.emit(words.replace("\n", " — "))
        # A refused target still accepts the move event, so the drop arrives and can say why it was refused.
        event.setDropAction(Qt.DropAction.CopyAction if self._drag.is_new else Qt.DropAction.MoveAction)
        event.accept()

    def dragLeaveEvent(self, event: QDragLeaveEvent) -> None:
        """Forget the marks."""
        self._clear_marks()
        event.accept()

    def dropEvent(self, event: QDropEvent) -> None:
        """Apply the drop as an undoable edit, or refuse it and show why."""
        drag = read_stage_mime(event.mimeData())
        if drag is None:
            event.ignore()
            self._clear_marks()
            return
        if self._drag is None:
            self._mark_targets(drag)
        self._drag = drag
        target = self.target_at(event.position().toPoint())
        ok = self.drop_on(drag, target)
        self._clear_marks()
        if ok:
            event.setDropAction(Qt.DropAction.CopyAction if drag.is_new else Qt.DropAction.MoveAction)
            event.accept()
        else:
            event.setDropAction(Qt.DropAction.IgnoreAction)
            event.ignore()

    def drop_on(self, drag: StageDrag, target: QGraphicsItem | None) -> bool:
        """Perform (or refuse) dropping `drag` on `target`; True when the pipeline changed."""
        if self._drag_req is None or self._drag != drag:
            self._drag_req = self.requirements_for(drag)
        allowed, words = self._describe_drop(drag, target)
        if not allowed:
            self.refuse(words)
            return False
        if isinstance(target, StageChipItem):
            return self.push(MoveStage(drag.stage_id, self.pipeline.document.index(target.stage_id)))
        if isinstance(target, NodeCardItem):
            node = target.node()
            assert node is not None
            return self._place(drag, Placement(nodes=(node.node_id,)), self.stage_lane_tier(node), node.name)
        if isinstance(target, LaneItem):
            return self._place(drag, Placement(tier=target.tier), target.tier, f"the {target.tier} tier")
        return False

    def stage_lane_tier(self, node: NodeSnapshot) -> str:
        """The tier a pinned stage on this node belongs to (for insertion order)."""
        return node.tier if node.tier in theme.TIERS else "device"

    def _place(self, drag: StageDrag, placement: Placement, tier: str, where: str) -> bool:
        """A new stage from the palette, or an existing stage moved (re-tiered or pinned) — never a copy."""
        if not drag.is_new:
            stage = self.pipeline.stage(drag.stage_id)
            if stage.placement == placement:
                self.status_message.emit(f"{drag.stage_id} is already on {where}")
                return False
            ok = self.push(Retier(drag.stage_id, placement, self._retier_index(drag.stage_id, tier), where))
            if ok:
                self.select_stage(drag.stage_id)
                self._say_routing(drag.stage_id, f"Moved {drag.stage_id} to {where}")
            return ok
        card = self.stage_palette.card(drag.model_path)
        if card is None:
            self.refuse(f"model {drag.model_path} is not in the palette (import it first)")
            return False
        stage_id = new_stage_id(card, set(self.pipeline.document.stage_ids()))
        stage = stage_from_card(card, stage_id, placement)
        index = self._insert_index(tier)
        ok = self.push(InsertStage(index, stage, card))
        if ok:
            self.select_stage(stage_id)
            origin = rule_origin(card) + ("" if index < len(self.pipeline.stages()) - 1 else
                                          " (it gives the final answer until a stage follows it)")
            problems = card.suggestion.problems if card.suggestion is not None else ()
            self._say_routing(stage_id, f"Added {stage_id} on {where}; {origin}"
                              + "".join(f"; ⚠ {p}" for p in problems))
        return ok

    def _say_routing(self, stage_id: str, text: str) -> None:
        """Status line after a placement: what was done, where its escalations now go, any warning in words."""
        self.relayout()
        words = self.route_words()
        ids = [s.id for s in self.pipeline.stages()]
        i = ids.index(stage_id) if stage_id in ids else -1
        parts = [text]
        if i > 0 and words.get(ids[i - 1]):
            parts.append("escalations into it: " + "; ".join(words[ids[i - 1]]))
        if words.get(stage_id):
            parts.append("it escalates: " + "; ".join(words[stage_id]))
        parts += [f"⚠ {w}" for sid, w in self.warnings if sid == stage_id]
        self.status_message.emit(" — ".join(parts))

    def _insert_index(self, tier: str, exclude: str = "") -> int:
        """After the last stage of the same or a lower tier: device stages come first, cloud last."""
        order = _TIER_ORDER.get(tier, 0)
        index = 0
        others = [s for s in self.pipeline.stages() if s.id != exclude]
        for i, s in enumerate(others):
            if _TIER_ORDER.get(self.stage_lane(s.id), 0) <= order:
                index = i + 1
        return index

    def _retier_index(self, stage_id: str, tier: str) -> int:
        """Where a stage moved to `tier` goes in the chain: where it is, when the tiers stay in order there."""
        ids = [s.id for s in self.pipeline.stages()]
        i = ids.index(stage_id)
        order = _TIER_ORDER.get(tier, 0)
        before = _TIER_ORDER.get(self.stage_lane(ids[i - 1]), 0) if i > 0 else -1
        after = _TIER_ORDER.get(self.stage_lane(ids[i + 1]), 0) if i + 1 < len(ids) else 99
        if before <= order <= after:
            return i
        return self._insert_index(tier, exclude=stage_id)

    # ----- the keyboard's drag and drop --------------------------------------------------------------------
    @Slot()
    def place_selected(self) -> None:
        """Ctrl+P: place the selected palette model (when the palette has focus) or the selected stage."""
        if self.stage_palette.hasFocus() and self.stage_palette.currentItem() is not None:
            self._place_card_by_keyboard(str(self.stage_palette.currentItem().data(Qt.ItemDataRole.UserRole + 1)))
            return
        stage_id = self.selected_stage()
        if stage_id:
            self.show_place_menu(StageDrag(stage_id=stage_id))
        elif self.stage_palette.currentItem() is not None:
            self._place_card_by_keyboard(str(self.stage_palette.currentItem().data(Qt.ItemDataRole.UserRole + 1)))
        else:
            self.status_message.emit("Select a stage on the canvas or a model in the palette first")

    @Slot(str)
    def _place_card_by_keyboard(self, path: str) -> None:
        self.show_place_menu(StageDrag(model_path=path))

    def place_menu(self, drag: StageDrag) -> QMenu:
        """A menu of every target with its fit (targets that do not fit are listed, disabled, with the reason)."""
        req = self.requirements_for(drag)
        self._drag_req = req
        menu = QMenu(self)
        menu.setToolTipsVisible(True)
        menu.setTitle("Place stage")
        for tier, _lane in self.lanes.items():
            mark = self.fit_lane(req, tier)
            a = menu.addAction(theme.icon("fit-ok" if mark.fits else "fit-no"),
                               f"Every {tier} node — {'fits' if mark.fits else 'refused: ' + mark.short}")
            a.setToolTip(mark.reason)
            a.setEnabled(mark.fits)
            a.setData(("lane", tier))
        menu.addSeparator()
        for key, card in self.cards.items():
            node = card.node()
            if node is None:
                continue
            mark = self.fit_node(req, key)
            verdict = "fits" if mark.fits else "refused: " + mark.short
            a = menu.addAction(theme.icon("fit-ok" if mark.fits else "fit-no"),
                               f"Pin to {node.name} ({node.tier}) — {verdict}")
            a.setToolTip(mark.reason)
            a.setEnabled(mark.fits)
            a.setData(("node", key))
        menu.triggered.connect(lambda action: self._menu_drop(drag, action))
        return menu

    def show_place_menu(self, drag: StageDrag) -> None:
        """Pop the place menu up near the focus."""
        menu = self.place_menu(drag)
        anchor = self.mapToGlobal(QPoint(40, 40))
        chip = self.chips.get(drag.stage_id)
        if chip is not None:
            anchor = self.mapToGlobal(self.mapFromScene(chip.pos() + QPointF(20, STAGE_H)))
        menu.popup(anchor)

    def _menu_drop(self, drag: StageDrag, action: QAction) -> None:
        kind, value = action.data()
        target: QGraphicsItem | None = self.lanes.get(value) if kind == "lane" else self.cards.get(value)
        self.drop_on(drag, target)


def _short(reasons: tuple[str, ...]) -> str:
    """A few words of the first reason for a card-sized label."""
    if not reasons:
        return ""
    first = reasons[0]
    for key, words in (("memory cap", "memory cap"), ("of memory", "not enough memory"),
                       ("execution provider", "missing provider"), ("power budget", "over power budget"),
                       ("offline", "offline"), ("cannot check fit", "hardware unknown")):
        if key in first:
            return words
    return first[:40]
