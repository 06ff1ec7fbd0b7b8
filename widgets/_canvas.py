"""The pipeline canvas: tier lanes with live node cards, the stages in hop order, escalation links, drag and drop.

Every change is a `QUndoCommand` wrapping one of the core's reversible `Edit`s (InsertStage,
RemoveStage, MoveStage, SetPlacement, SetRule); its redo()/undo() call the pipeline model, and the
scene redraws from the model's signals — undo/redo (Ctrl+Z / Ctrl+Shift+Z) comes for free.

The canvas in parts, each readable on its own: this module lays the scene out from the models (lanes,
node cards, stage chips, links, routing lines; fitted to the view) and edits (undo commands, the
threshold editor, the rule editor, drift); `_canvas_dnd` is drag and drop with fit checks and the
keyboard's placement menu; `_canvas_live` the live overlay; `_canvas_items` the items, which are told
what to draw (`ChipView`, `LinkView`, `FitMark`, route lines) and never reach into the models.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, Signal, Slot
from PySide6.QtGui import (
    QAction,
    QKeyEvent,
    QKeySequence,
    QPainter,
    QResizeEvent,
    QTransform,
    QUndoCommand,
    QUndoStack,
    QWheelEvent,
)
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QGraphicsItem,
    QGraphicsProxyWidget,
    QGraphicsScene,
    QGraphicsView,
    QLabel,
    QMenu,
    QWidget,
)

from app._drift import Drift, drift
from app._routing import links as route_links
from app._routing import placement_warnings
from app.core import (
    Edit,
    MoveStage,
    NodeSnapshot,
    NodeState,
    RemoveStage,
    Requirements,
    SetRule,
)
from app.pipeline_file import Rule
from app.qt import FleetModel, PipelineModel, TelemetryModel
from widgets import _theme as theme
from widgets._canvas_dnd import CanvasDragDrop
from widgets._canvas_items import (
    CARD_H,
    CARD_W,
    COMPACT_H,
    COMPACT_W,
    GAP,
    HEADER_W,
    LABEL_H,
    LABEL_W,
    LANE_MIN_H,
    LINK_X,
    PAD,
    STAGE_H,
    STAGE_W,
    ChipView,
    DropHintItem,
    LaneItem,
    LinkItem,
    LinkView,
    NodeCardItem,
    RouteItem,
    StageChipItem,
)
from widgets._canvas_live import CanvasLiveOverlay
from widgets._clock import FrameClock
from widgets._palette import StageDrag, StagePalette
from widgets._rule_editor import RuleEditor

log = logging.getLogger(__name__)

REACHABLE = (NodeState.ONLINE, NodeState.DEGRADED)
MIN_FIT = 0.6   # fit-to-view zooms out no further: below that the cards' words are too small to read
_TIER_ORDER = {t: i for i, t in enumerate(theme.TIERS)}
COLUMN_W = LABEL_W + GAP   # stages of one lane: far enough apart that the labels under them never meet


class EditCommand(QUndoCommand):
    """A QUndoCommand around one reversible pipeline Edit: redo/undo go through the pipeline model."""

    def __init__(self, pipeline: PipelineModel, edit: Edit) -> None:
        super().__init__(edit.text)
        self.pipeline = pipeline
        self.edit = edit
        self.failed = ""

    def redo(self) -> None:
        """Apply the edit (an edit that cannot apply makes the command obsolete, so it leaves the stack)."""
        try:
            self.pipeline.redo(self.edit)
        except (KeyError, ValueError, IndexError) as exc:
            self.failed = f"{self.edit.text}: {exc}"
            log.warning("edit failed: %s", self.failed)
            self.setObsolete(True)

    def undo(self) -> None:
        """Revert the edit."""
        self.pipeline.undo(self.edit)


def rule_text(rule: Rule, short: bool = False) -> str:
    """The escalate part of a rule in a few words: 'confidence < 0.60', 'class vessel', 'score > 0.5'."""
    parts = []
    if rule.class_in:
        parts.append(("" if short else "class ") + "/".join(rule.class_in))
    if rule.confidence_below is not None:
        parts.append(f"{'conf' if short else 'confidence'} < {rule.confidence_below:.2f}")
    if rule.score_above is not None:
        parts.append(f"score > {rule.score_above:.2f}")
    return " or ".join(parts) if parts else ("no escalation" if short else "never escalates (no condition)")


def threshold_of(rule: Rule) -> tuple[str, float | None]:
    """(field, value) of the rule's threshold: confidence_below, else score_above; value None when unset."""
    if rule.confidence_below is not None:
        return "confidence_below", rule.confidence_below
    if rule.score_above is not None:
        return "score_above", rule.score_above
    return "confidence_below", None


class ThresholdEditor(QDoubleSpinBox):
    """The in-place editor of a link's threshold: Enter commits, Escape cancels."""

    committed = Signal(str, float)
    cancelled = Signal()

    def __init__(self, stage_id: str, value: float, field: str) -> None:
        super().__init__()
        self.stage_id = stage_id
        self.field = field
        self.setDecimals(3)
        self.setSingleStep(0.01)
        self.setRange(0.0, 1.0 if field == "confidence_below" else 1e6)
        self.setValue(value)
        self.setPrefix("conf < " if field == "confidence_below" else "score > ")
        self.setAccessibleName(f"Threshold of {stage_id}")
        self.setKeyboardTracking(False)
        self._done = False

    def keyPressEvent(self, event: QKeyEvent) -> None:
        """Enter commits, Escape cancels."""
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.interpretText()
            self.finish(True)
            return
        if event.key() == Qt.Key.Key_Escape:
            self.finish(False)
            return
        super().keyPressEvent(event)

    def focusOutEvent(self, event: object) -> None:  # type: ignore[override]
        """Leaving the editor commits, like a spreadsheet cell."""
        super().focusOutEvent(event)  # type: ignore[arg-type]
        self.finish(True)

    def finish(self, commit: bool) -> None:
        """Commit or cancel once."""
        if self._done:
            return
        self._done = True
        if commit:
            self.committed.emit(self.stage_id, float(self.value()))
        else:
            self.cancelled.emit()


class PipelineCanvas(CanvasDragDrop, CanvasLiveOverlay, QGraphicsView):
    """Tier lanes, node cards and the pipeline's stages; drop stages on lanes or cards; edits are undoable."""

    link_selected = Signal(str)          # upstream stage id of the selected escalation link ("" = none)
    stage_selected = Signal(str)         # stage id ("" = none)
    drop_refused = Signal(str)           # why a drop was refused
    status_message = Signal(str)         # a line for the status bar
    warnings_changed = Signal(object)    # list[(stage id, words)]: placements that deploy but make little sense
    drift_changed = Signal(object)       # dict[stage id, Drift]: the fleet runs something other than the file
    deploy_requested = Signal()          # "re-deploy the file"

    def __init__(self, pipeline: PipelineModel, fleet: FleetModel, palette: StagePalette,
                 telemetry: TelemetryModel | None = None, clock: FrameClock | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.pipeline = pipeline
        self.fleet = fleet
        self.stage_palette = palette
        self.telemetry = telemetry
        self.undo_stack = QUndoStack(self)
        self.scene_ = QGraphicsScene(self)
        self.setScene(self.scene_)
        self.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        self.setRenderHint(QPainter.RenderHint.TextAntialiasing, True)
        self.setAcceptDrops(True)
        self.viewport().setAcceptDrops(True)
        self.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.setDragMode(QGraphicsView.DragMode.NoDrag)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.MinimalViewportUpdate)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setAccessibleName("Pipeline canvas")
        self.lanes: dict[str, LaneItem] = {}
        self.cards: dict[str, NodeCardItem] = {}
        self.chips: dict[str, StageChipItem] = {}
        self.links: dict[str, LinkItem] = {}
        self.routes: dict[str, RouteItem] = {}
        self.rule_editor: RuleEditor | None = None
        self.warnings: list[tuple[str, str]] = []
        self.drifts: dict[str, Drift] = {}
        self.hint = DropHintItem(self)
        self._drag: StageDrag | None = None
        self._drag_req: Requirements | None = None
        self._hover: QGraphicsItem | None = None
        self._editor: QGraphicsProxyWidget | None = None
        self._cards_left = HEADER_W + STAGE_W + 2 * GAP
        self.card_w, self.card_h, self.compact = CARD_W, CARD_H, False
        self._live_every = 0.5
        self._last_live = 0.0
        self._live_seen: tuple[int, int, int] = (-1, 0, 0)   # (samples, cards, links) at the last live refresh
        self._live_moved = 0.0
        self.live_refreshes = 0
        self.live_badges = False   # the cards say LIVE (while the other views replay history)
        self.refusal = ""
        self.refusal_banner = QLabel(self)
        self.refusal_banner.setProperty("banner", "error")
        self.refusal_banner.setWordWrap(True)
        self.refusal_banner.setVisible(False)
        self.refusal_banner.setAccessibleName("Drop refused")
        self._scale = 1.0
        self._user_zoom: float | None = None     # None: fit the view's height
        self._relayout_timer = QTimer(self)
        self._relayout_timer.setSingleShot(True)
        self._relayout_timer.setInterval(30)
        self._relayout_timer.timeout.connect(self.relayout)
        self._make_actions()

        pipeline.stage_inserted.connect(self._model_changed)
        pipeline.stage_removed.connect(self._model_changed)
        pipeline.stage_moved.connect(self._model_changed)
        pipeline.stage_changed.connect(self._model_changed)
        pipeline.pipeline_reset.connect(self._reset)
        fleet.node_added.connect(self._fleet_changed)
        fleet.node_removed.connect(self._fleet_changed)
        fleet.node_rekeyed.connect(self._fleet_changed)
        fleet.node_changed.connect(self._node_changed)
        fleet.state_changed.connect(self._state_changed)
        palette.place_requested.connect(self._place_card_by_keyboard)
        self.scene_.selectionChanged.connect(self._selection_changed)
        if clock is not None:
            clock.frame_ticked.connect(self._frame)
            clock.second_ticked.connect(self._frame)
        self.relayout()

    # ----- actions -------------------------------------------------------------------------------------
    def _make_actions(self) -> None:
        self.undo_action = self.undo_stack.createUndoAction(self, "&Undo")
        self.undo_action.setShortcut(QKeySequence("Ctrl+Z"))
        self.redo_action = self.undo_stack.createRedoAction(self, "&Redo")
        self.redo_action.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])

        def action(text: str, shortcut: str, slot: object, tip: str) -> QAction:
            a = QAction(text, self)
            a.setShortcut(QKeySequence(shortcut))
            a.setStatusTip(tip)
            a.setToolTip(tip)
            a.triggered.connect(slot)  # type: ignore[arg-type]
            self.addAction(a)
            return a

        self.delete_action = action("&Delete stage", "Del", self.delete_selected, "Remove the selected stage")
        self.earlier_action = action("Move stage &earlier", "Alt+Up", self.move_selected_earlier,
                                     "Move the selected stage one hop towards the sensor")
        self.later_action = action("Move stage &later", "Alt+Down", self.move_selected_later,
                                   "Move the selected stage one hop towards the cloud")
        self.threshold_action = action("Edit &threshold", "F2", self.edit_selected_threshold,
                                       "Edit the escalation threshold of the selected stage's outgoing link")
        self.rule_action = action("Edit &rule…", "Shift+F2", self.edit_selected_rule,
                                  "Edit the selected stage's rule: which output it reads, what its values are, "
                                  "the labels, when to escalate")
        self.take_live_action = action("Take &live values into the file", "Ctrl+Alt+L", self.take_live_selected,
                                       "The selected stage's nodes run another rule than the file (pushed live, "
                                       "deployed elsewhere, rolled back): put what they run into the pipeline")
        self.redeploy_action = action("Re-deploy the &file", "Ctrl+Alt+D", self.deploy_requested.emit,
                                      "Deploy the pipeline as the file says, replacing what the nodes run")
        self.place_action = action("&Place stage…", "Ctrl+P", self.place_selected,
                                   "Place the selected stage or palette model on a tier or pin it to a node "
                                   "(the keyboard's drag and drop)")
        self.fit_action = action("&Fit canvas to view", "Ctrl+0", self.zoom_to_fit,
                                 "Zoom the canvas so all three lanes fit (Ctrl+wheel zooms)")
        self.focus_action = action("Go to &canvas", "Alt+2", self.focus_canvas, "Move the focus to the canvas")
        self.dismiss_action = action("Dismiss message", "Esc", self.dismiss_refusal, "Hide the refusal message")
        self.dismiss_action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        for a in (self.delete_action, self.earlier_action, self.later_action, self.threshold_action,
                  self.rule_action, self.place_action, self.take_live_action, self.redeploy_action):
            a.setShortcutContext(Qt.ShortcutContext.WindowShortcut)

    def edit_actions(self) -> list[QAction]:
        """The canvas actions for the Edit menu, in order."""
        return [self.undo_action, self.redo_action, self.delete_action, self.earlier_action, self.later_action,
                self.threshold_action, self.rule_action, self.place_action, self.take_live_action,
                self.redeploy_action]

    # ----- what items ask ------------------------------------------------------------------------------
    def stage_lane(self, stage_id: str) -> str:
        """The lane a stage is drawn in: its tier, or the tier of its first pinned node."""
        try:
            stage = self.pipeline.stage(stage_id)
        except KeyError:
            return "device"
        if stage.placement.tier:
            return stage.placement.tier
        for node_id in stage.placement.nodes:
            node = self.fleet.node(node_id)
            if node is not None and node.tier in theme.TIERS:
                return node.tier
        return "device"

    def stages_in_lane(self, tier: str) -> list[str]:
        """Stage ids drawn in a lane, in hop order."""
        return [s.id for s in self.pipeline.stages() if self.stage_lane(s.id) == tier]

    def cards_left(self) -> float:
        """x of the first node-card column."""
        return self._cards_left

    def pinned_here(self, node: NodeSnapshot) -> list[str]:
        """Stages pinned to this node."""
        return [s.id for s in self.pipeline.stages()
                if node.node_id and node.node_id in s.placement.nodes]

    def node_name(self, node_id: str) -> str:
        """A node's name from its id (the id's first 8 characters when unknown)."""
        node = self.fleet.node(node_id)
        return node.name if node is not None else node_id[:8]

    def _nodes_running(self, stage_id: str) -> list[NodeSnapshot]:
        return [n for n in self.fleet.nodes() if n.stage(stage_id) is not None]

    def deployed_count(self, stage_id: str) -> str:
        """'running on 2 nodes' or 'not deployed'."""
        running = self._nodes_running(stage_id)
        if not running:
            return "not deployed"
        serving = sum(1 for n in running if (s := n.stage(stage_id)) is not None and s.serving)
        return f"running on {len(running)} node{'s' if len(running) != 1 else ''}" + (
            f" ({len(running) - serving} not serving)" if serving < len(running) else "")

    def settle_text(self, stage_id: str) -> str:
        """What the stage settles itself: 'drops water', or 'settles the rest' (last stage: 'final answer')."""
        stage = self.pipeline.stage(stage_id)
        if stage.next is None:
            return "final answer" + (f", drops {'/'.join(stage.rule.drop_class)}" if stage.rule.drop_class else "")
        if stage.rule.drop_class:
            return f"drops {'/'.join(stage.rule.drop_class)}, settles the rest"
        return "settles the rest"

    def rule_text(self, stage_id: str, short: bool = False) -> str:
        """The escalate condition of a stage's rule (`short`: for a link label)."""
        try:
            return rule_text(self.pipeline.stage(stage_id).rule, short)
        except KeyError:
            return ""

    # ----- layout ---------------------------------------------------------------------------------------
    def _schedule_relayout(self) -> None:
        if not self._relayout_timer.isActive():
            self._relayout_timer.start()

    @Slot()
    def relayout(self) -> None:
        """Rebuild the scene from the models, fitted to the view's height (zoomed out down to 60 %) unless zoomed."""
        if self._editor is not None:
            return  # never pull the editor out from under the operator; relaid out when it closes
        self._scale = self._user_zoom or 1.0
        self._build()
        if self._user_zoom is None:
            tall = self.scene_.sceneRect().height()
            wide = self._cards_left + self.card_w + PAD    # the stages and at least one column of node cards
            room_h = float(self.viewport().height()) - 2
            room_w = float(self.viewport().width()) - 2
            if room_h > 0 and room_w > 0 and (tall > room_h or wide > room_w):
                self._scale = max(MIN_FIT, min(1.0, room_h / tall, room_w / wide))
                self._build()
                tall = self.scene_.sceneRect().height()   # cards re-flowed to the new width: check once more
                if tall * self._scale > room_h:
                    self._scale = max(MIN_FIT, room_h / tall)
                    self._build()
        self.setTransform(QTransform.fromScale(self._scale, self._scale))

    def wheelEvent(self, event: QWheelEvent) -> None:
        """Ctrl+wheel zooms (50–200 %); Ctrl+0 goes back to fitting the view."""
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            steps = event.angleDelta().y() / 120
            self._user_zoom = min(2.0, max(0.5, (self._user_zoom or self._scale) * 1.1 ** steps))
            self.relayout()
            self.status_message.emit(f"Zoom {self._user_zoom * 100:.0f} % (Ctrl+0 fits the view)")
            event.accept()
            return
        super().wheelEvent(event)

    @Slot()
    def zoom_to_fit(self) -> None:
        """Ctrl+0: fit the lanes to the view again."""
        self._user_zoom = None
        self.relayout()

    def _build(self) -> None:
        """Rebuild the scene items for a view `self._scale` wide."""
        selected = self.selected_stage()
        focused = self.scene_.focusItem()
        focused_stage = focused.stage_id if isinstance(focused, StageChipItem) else ""
        for item in list(self.scene_.items()):
            if item is not self.hint and item.parentItem() is None:
                self.scene_.removeItem(item)
        if self.hint.scene() is None:
            self.scene_.addItem(self.hint)
        self.lanes.clear()
        self.cards.clear()
        self.chips.clear()
        self.links.clear()
        self.routes.clear()
        width = max((float(self.viewport().width()) - 1) / self._scale, HEADER_W + STAGE_W + 2 * GAP + CARD_W + 2 * PAD)
        per_lane = {t: self.stages_in_lane(t) for t in theme.TIERS}
        columns = max(1, max(len(v) for v in per_lane.values()))
        self._cards_left = HEADER_W + PAD + (columns - 1) * COLUMN_W + LABEL_W + 2 * GAP
        # Big fleets get compact cards, so a lane of dozens of nodes stays within a screen or two.
        biggest = max((len(self.fleet.by_tier(t)) for t in theme.TIERS), default=0)
        cols = max(1, int((width - self._cards_left - PAD + GAP) // (CARD_W + GAP)))
        self.compact = math.ceil(biggest / cols) * (CARD_H + GAP) > max(self.viewport().height() / self._scale,
                                                                        400) * 0.6
        self.card_w, self.card_h = (COMPACT_W, COMPACT_H) if self.compact else (CARD_W, CARD_H)
        card_cols = max(1, int((width - self._cards_left - PAD + GAP) // (self.card_w + GAP)))
        y = 0.0
        chip_pos: dict[str, QPointF] = {}
        for tier in theme.TIERS:
            nodes = sorted(self.fleet.by_tier(tier), key=lambda n: n.name.lower())
            rows = math.ceil(len(nodes) / card_cols) if nodes else 1
            height = max(LANE_MIN_H, STAGE_H + 2 * PAD, rows * (self.card_h + GAP) - GAP + 2 * PAD)
            if per_lane[tier] and any(per_lane[t] for t in theme.TIERS[theme.TIERS.index(tier) + 1:]):
                height = max(height, STAGE_H + PAD + LABEL_H + 2 * GAP)   # room for the link label below
            if len(per_lane[tier]) > 1:   # same-lane links: their labels go under the chips
                height = max(height, STAGE_H + 2 * PAD + LABEL_H + 2 * GAP + (
                    LABEL_H + 2 * GAP if any(per_lane[t] for t in theme.TIERS[theme.TIERS.index(tier) + 1:]) else 0))
            lane = LaneItem(self, tier, QRectF(0, y, width, height))
            self.scene_.addItem(lane)
            self.lanes[tier] = lane
            for i, node in enumerate(nodes):
                row, col = divmod(i, card_cols)
                card = NodeCardItem(self, node.key, QPointF(self._cards_left + col * (self.card_w + GAP),
                                                            y + PAD + row * (self.card_h + GAP)))
                card.live_badge = self.live_badges
                self.scene_.addItem(card)
                self.cards[node.key] = card
            for i, stage_id in enumerate(per_lane[tier]):
                pos = QPointF(HEADER_W + PAD + i * COLUMN_W, y + PAD)
                chip = StageChipItem(self, stage_id, pos)
                self.scene_.addItem(chip)
                self.chips[stage_id] = chip
                chip_pos[stage_id] = pos
            y += height + 4
        stages = self.pipeline.stages()
        for k, stage in enumerate(stages[:-1]):
            a, b = chip_pos.get(stage.id), chip_pos.get(stages[k + 1].id)
            if a is None or b is None:
                continue
            if abs(a.y() - b.y()) < 1:  # same lane: left to right
                start = a + QPointF(STAGE_W, STAGE_H / 2)
                end = b + QPointF(0, STAGE_H / 2)
            elif b.y() > a.y():
                start = a + QPointF(LINK_X, STAGE_H)
                end = b + QPointF(LINK_X, 0)
            else:
                start = a + QPointF(LINK_X, 0)
                end = b + QPointF(LINK_X, STAGE_H)
            link = LinkItem(self, stage.id, start, end)
            link.below = abs(a.y() - b.y()) < 1
            self.scene_.addItem(link)
            self.links[stage.id] = link
        self._add_routes()
        self._update_views()
        self.scene_.setSceneRect(QRectF(0, 0, width, y))
        if selected in self.chips:
            self.chips[selected].setSelected(True)
        if focused_stage in self.chips:
            self.chips[focused_stage].setFocus()
        self._refresh_live(force=True)
        self._position_banner()

    def _add_routes(self) -> None:
        """Fan-in lines from every node running a stage to the node it escalates to (the deployer's rule)."""
        for link in route_links(self.pipeline.stages(), self.fleet.nodes()):
            lines = []
            for route in link.routes:
                a, b = self.cards.get(route.source.key), self.cards.get(route.target.key)
                if a is None or b is None or a is b:
                    continue
                ra, rb = a.sceneBoundingRect(), b.sceneBoundingRect()
                if rb.top() > ra.bottom():
                    lines.append((QPointF(ra.center().x(), ra.bottom()), QPointF(rb.center().x(), rb.top())))
                elif rb.bottom() < ra.top():
                    lines.append((QPointF(ra.center().x(), ra.top()), QPointF(rb.center().x(), rb.bottom())))
                else:   # same row: bottom to bottom (drawn as an arc under the cards)
                    lines.append((QPointF(ra.center().x(), ra.bottom()), QPointF(rb.center().x(), rb.bottom())))
            if not lines:
                continue
            tier = link.routes[0].target.tier if link.routes else ""
            item = RouteItem(link.stage_id, lines, theme.TIER_COLOURS.get(tier, theme.ACCENT))
            self.scene_.addItem(item)
            self.routes[link.stage_id] = item

    def route_words(self) -> dict[str, list[str]]:
        """Per upstream stage id: 'device-1, device-3 → edge-1 (edge)' lines, as a deployment would wire them."""
        return {link.stage_id: link.words() for link in route_links(self.pipeline.stages(), self.fleet.nodes())}

    def _update_views(self) -> None:
        """Tell chips and links what to draw; recompute the placement warnings."""
        stages = self.pipeline.stages()
        sizes = {}
        for s in stages:
            req = self.pipeline.requirements(s.id)
            if req is not None:
                sizes[s.id] = req.model_bytes
        warnings = placement_warnings(stages, self.fleet.nodes(), sizes)
        warned = {sid for sid, _ in warnings}
        drifts = drift(stages, self.fleet.nodes())
        words = self.route_words()
        for index, stage in enumerate(stages):
            chip = self.chips.get(stage.id)
            if chip is None:
                continue
            if stage.placement.tier:
                where = f"on every {stage.placement.tier} node"
            else:
                where = "pinned to " + ", ".join(self.node_name(n) for n in stage.placement.nodes)
            drifted = drifts.get(stage.id)
            note = (f"drift: {drifted.words}" if drifted is not None else
                    next((w for sid, w in warnings if sid == stage.id), "") or self.rule_note(stage.id))
            chip.view = ChipView(f"{index + 1}. {stage.id}", (stage.model.rsplit("/", 1)[-1], where,
                                                              self.deployed_count(stage.id)),
                                 note, stage.id in warned or drifted is not None)
            chip.setToolTip(f"{stage.id}: {where}\n{self.rule_note(stage.id) or self.settle_text(stage.id)}"
                            + "".join(f"\n⚠ {w}" for sid, w in warnings if sid == stage.id)
                            + "\nDrag to another lane to move it there, onto a node card to pin it; F2 threshold, "
                              "Shift+F2 rule, Del delete")
            chip.update()
        ids = [s.id for s in stages]
        for stage_id, link in self.links.items():
            # the scene may lag the model by one relayout (it is rebuilt on a timer): skip what is gone
            at = ids.index(stage_id) if stage_id in ids else -1
            following = ids[at + 1] if 0 <= at < len(ids) - 1 else ""
            link.view = LinkView(self.rule_text(stage_id, short=True), tuple(words.get(stage_id, ())), link.view.live,
                                 following in warned)
            link.update()
        if warnings != self.warnings:
            self.warnings = warnings
            self.warnings_changed.emit(list(warnings))
        if drifts != self.drifts:
            self.drifts = drifts
            self.drift_changed.emit(dict(drifts))
        self.take_live_action.setEnabled(any(d.live_rule is not None for d in drifts.values()))

    @Slot()
    def take_live_selected(self) -> bool:
        """Put the rule the selected stage's nodes run into the pipeline (undoable); any drifting stage if none."""
        stage_id = self.selected_stage()
        if stage_id not in self.drifts:
            stage_id = next((sid for sid, d in self.drifts.items() if d.live_rule is not None), "")
        found = self.drifts.get(stage_id)
        if found is None or found.live_rule is None:
            self.status_message.emit("No stage runs another rule than the file")
            return False
        ok = self.push(SetRule(stage_id, rule=found.live_rule))
        if ok:
            self.status_message.emit(f"Took the live rule of {stage_id} into the pipeline ({found.words}); "
                                     "save to keep it in the file")
        return ok

    def chip_menu(self, stage_id: str) -> QMenu:
        """The context menu of a stage chip: edit, place, and the two ways out of a drift."""
        self.select_stage(stage_id)
        menu = QMenu(self)
        for a in (self.threshold_action, self.rule_action, self.place_action, self.delete_action):
            menu.addAction(a)
        if stage_id in self.drifts:
            menu.addSeparator()
            menu.addAction(self.take_live_action)
            menu.addAction(self.redeploy_action)
        return menu

    def rule_note(self, stage_id: str) -> str:
        """Where the stage's rule came from while it is still the dropped model's suggestion ('' once edited)."""
        try:
            stage = self.pipeline.stage(stage_id)
        except KeyError:
            return ""
        card = self.pipeline.card(stage_id)
        if card is None or card.suggestion is None or stage.next is None:
            return ""
        if card.suggestion.rule() != stage.rule:
            return ""
        return "rule from model card" if card.suggestion.source == "card" else "default rule: F2 to tune"

    def resizeEvent(self, event: QResizeEvent) -> None:
        """Re-flow the node cards to the new width."""
        super().resizeEvent(event)
        self._schedule_relayout()
        self._position_banner()

    def _position_banner(self) -> None:
        if self.refusal_banner.isVisible():
            w = self.viewport().width() - 24
            self.refusal_banner.setFixedWidth(max(200, w))
            self.refusal_banner.adjustSize()
            self.refusal_banner.move(12, self.viewport().height() - self.refusal_banner.height() - 12)

    # ----- following the models -------------------------------------------------------------------------
    @Slot()
    def _model_changed(self, *args: object) -> None:
        self._schedule_relayout()

    @Slot()
    def _reset(self) -> None:
        self.undo_stack.clear()
        self.dismiss_refusal()
        self._schedule_relayout()

    @Slot()
    def _fleet_changed(self, *args: object) -> None:
        self._schedule_relayout()

    @Slot(str)
    def _node_changed(self, key: str) -> None:
        card = self.cards.get(key)
        node = self.fleet.node(key)
        if card is None or node is None or self.lanes.get(node.tier) is None or card.pos().y() < self.lanes[
                node.tier].rect.top() or card.pos().y() > self.lanes[node.tier].rect.bottom():
            self._schedule_relayout()  # new node, or its tier changed
            return
        card.update()
        self._update_views()

    @Slot(str, str, str)
    def _state_changed(self, key: str, _old: str, _new: str) -> None:
        self._node_changed(key)
        for lane in self.lanes.values():
            lane.update()

    # ----- selection -----------------------------------------------------------------------------------
    def selected_stage(self) -> str:
        """The selected stage (a chip, or the upstream stage of a selected link); '' when none."""
        for item in self.scene_.selectedItems():
            if isinstance(item, StageChipItem | LinkItem):
                return item.stage_id
        return ""

    def select_stage(self, stage_id: str) -> None:
        """Select (and focus) a stage's chip."""
        chip = self.chips.get(stage_id)
        if chip is not None:
            self.scene_.clearSelection()
            chip.setSelected(True)
            chip.setFocus()
            self.ensureVisible(chip)

    @Slot()
    def _selection_changed(self) -> None:
        stage_id = self.selected_stage()
        self.stage_selected.emit(stage_id)
        if stage_id and stage_id in self.links:
            self.link_selected.emit(stage_id)
        elif stage_id:
            stages = [s.id for s in self.pipeline.stages()]
            i = stages.index(stage_id) if stage_id in stages else -1
            # a last stage has no outgoing link: show the one coming into it
            self.link_selected.emit(stages[i - 1] if i > 0 and stages[i - 1] in self.links else "")

    def link_clicked(self, stage_id: str) -> None:
        """A link was clicked (the selection change tells the what-if plot)."""
        self.status_message.emit(f"Link {stage_id} → next: {self.rule_text(stage_id)}. F2 edits the threshold.")

    @Slot()
    def focus_canvas(self) -> None:
        """Focus the canvas and the first stage."""
        self.setFocus(Qt.FocusReason.ShortcutFocusReason)
        stages = self.pipeline.stages()
        if stages and not self.selected_stage():
            self.select_stage(stages[0].id)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        """Tab / Shift+Tab walk the stages; arrows pass to the view otherwise."""
        if event.key() in (Qt.Key.Key_Tab, Qt.Key.Key_Backtab) and self.pipeline.stages():
            ids = [s.id for s in self.pipeline.stages()]
            current = self.selected_stage()
            i = ids.index(current) if current in ids else -1
            step = -1 if event.key() == Qt.Key.Key_Backtab else 1
            j = i + step
            if 0 <= j < len(ids):
                self.select_stage(ids[j])
                event.accept()
                return
        super().keyPressEvent(event)

    def focusNextPrevChild(self, forward: bool) -> bool:
        """Keep Tab inside the canvas while there is a next stage to go to."""
        ids = [s.id for s in self.pipeline.stages()]
        current = self.selected_stage()
        i = ids.index(current) if current in ids else -1
        if 0 <= i + (1 if forward else -1) < len(ids) and self.hasFocus():
            return False
        return super().focusNextPrevChild(forward)

    # ----- editing ---------------------------------------------------------------------------------------
    def push(self, edit: Edit) -> bool:
        """Apply an edit as an undoable command; False (and the reason on screen) when it could not apply."""
        command = EditCommand(self.pipeline, edit)
        self.undo_stack.push(command)
        if command.failed:
            self.refuse(command.failed)
            return False
        self.dismiss_refusal()
        self.status_message.emit(edit.text)
        return True

    @Slot()
    def delete_selected(self) -> None:
        """Remove the selected stage."""
        stage_id = self.selected_stage()
        if stage_id:
            self.push(RemoveStage(stage_id))

    def _move_selected(self, step: int) -> None:
        stage_id = self.selected_stage()
        if not stage_id:
            return
        ids = [s.id for s in self.pipeline.stages()]
        target = ids.index(stage_id) + step
        if 0 <= target < len(ids):
            self.push(MoveStage(stage_id, target))
            self.select_stage(stage_id)

    @Slot()
    def move_selected_earlier(self) -> None:
        """Move the selected stage one hop earlier."""
        self._move_selected(-1)

    @Slot()
    def move_selected_later(self) -> None:
        """Move the selected stage one hop later."""
        self._move_selected(+1)

    def set_threshold(self, stage_id: str, value: float, field: str | None = None) -> bool:
        """Set a stage's escalation threshold (undoable SetRule); `field` defaults to the rule's own."""
        stage = self.pipeline.stage(stage_id)
        own, _ = threshold_of(stage.rule)
        rule = replace(stage.rule, **{field or own: float(value)})  # type: ignore[arg-type]
        if rule == stage.rule:
            return False
        return self.push(SetRule(stage_id, rule=rule))

    @Slot()
    def edit_selected_rule(self) -> RuleEditor | None:
        """Shift+F2: the rule editor for the selected stage (non-modal open(); the answer is an undoable SetRule)."""
        stage_id = self.selected_stage()
        if not stage_id:
            self.status_message.emit("Select a stage first (click it, or Tab to it)")
            return None
        return self.edit_rule(stage_id)

    def edit_rule(self, stage_id: str) -> RuleEditor:
        """Open the rule editor on a stage."""
        dialog = RuleEditor(self.pipeline.stage(stage_id), self)
        dialog.rule_chosen.connect(self._rule_chosen)
        dialog.finished.connect(self._dialog_finished)
        self.rule_editor = dialog
        dialog.open()
        return dialog

    @Slot(str, object)
    def _rule_chosen(self, stage_id: str, rule: Rule) -> None:
        self.push(SetRule(stage_id, rule=rule))
        self.select_stage(stage_id)

    @Slot(int)
    def _dialog_finished(self, _result: int) -> None:
        self.rule_editor = None
        self.setFocus(Qt.FocusReason.OtherFocusReason)

    @Slot()
    def edit_selected_threshold(self) -> None:
        """F2: edit the threshold of the selected stage's outgoing link in place."""
        stage_id = self.selected_stage()
        if stage_id:
            self.edit_threshold(stage_id)

    def edit_threshold(self, stage_id: str) -> None:
        """Open the in-place threshold editor on the stage's outgoing link (or on the chip of a last stage)."""
        try:
            stage = self.pipeline.stage(stage_id)
        except KeyError:
            return
        if stage.next is None and stage_id not in self.links:
            self.refuse(f"{stage_id} is the last stage: it settles everything and has no threshold to edit")
            return
        self.close_editor()
        field, value = threshold_of(stage.rule)
        editor = ThresholdEditor(stage_id, value if value is not None else 0.5, field)
        editor.committed.connect(self._threshold_committed)
        editor.cancelled.connect(self.close_editor)
        proxy = self.scene_.addWidget(editor)
        proxy.setZValue(30)
        link = self.links.get(stage_id)
        anchor = link.label_rect().topLeft() if link is not None else self.chips[stage_id].pos()
        proxy.setPos(anchor)
        proxy.resize(190, proxy.size().height())
        self._editor = proxy
        editor.setFocus(Qt.FocusReason.OtherFocusReason)
        editor.selectAll()
        self.status_message.emit(f"Threshold of {stage_id}: type a value, Enter to apply, Esc to cancel")

    @Slot(str, float)
    def _threshold_committed(self, stage_id: str, value: float) -> None:
        editor = self.editor()
        field = editor.field if editor is not None else None
        self.close_editor()
        self.set_threshold(stage_id, value, field)
        self.select_stage(stage_id)

    def editor(self) -> ThresholdEditor | None:
        """The open threshold editor, if any."""
        if self._editor is None:
            return None
        widget = self._editor.widget()
        return widget if isinstance(widget, ThresholdEditor) else None

    @Slot()
    def close_editor(self) -> None:
        """Close the in-place editor (without committing)."""
        proxy, self._editor = self._editor, None
        if proxy is not None:
            widget = proxy.widget()
            if isinstance(widget, ThresholdEditor):
                widget._done = True
            self.scene_.removeItem(proxy)
            proxy.deleteLater()
            self._schedule_relayout()
            self.setFocus()

    # ----- refusals --------------------------------------------------------------------------------------
    def refuse(self, reason: str) -> None:
        """Show why something was refused (stays until the next successful edit or Esc)."""
        self.refusal = reason
        self.refusal_banner.setText(f"✖ Refused: {reason}   (Esc to dismiss)")
        self.refusal_banner.setVisible(True)
        self._position_banner()
        self.refusal_banner.raise_()
        self.drop_refused.emit(reason)
        self.status_message.emit(f"Refused: {reason}")

    @Slot()
    def dismiss_refusal(self) -> None:
        """Hide the refusal message."""
        self.refusal_banner.setVisible(False)
