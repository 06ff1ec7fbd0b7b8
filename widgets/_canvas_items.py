"""Graphics items of the pipeline canvas: tier lanes, node cards, stage chips, escalation links, the drop hint.

Items only paint what the canvas tells them (they hold no model state of their own beyond what
to show); the canvas rebuilds them from model signals. While a drag is on, every target carries a
`FitMark` (fits or not, and why), painted as an icon plus words, never as colour alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PySide6.QtCore import QLineF, QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QFontMetricsF, QPainter, QPainterPath, QPen, QPolygonF
from PySide6.QtWidgets import (
    QGraphicsItem,
    QGraphicsObject,
    QGraphicsSceneContextMenuEvent,
    QGraphicsSceneHoverEvent,
    QGraphicsSceneMouseEvent,
    QStyleOptionGraphicsItem,
    QWidget,
)

from app.core import NodeSnapshot
from widgets import _format as fmt
from widgets import _theme as theme

if TYPE_CHECKING:
    from widgets._canvas import PipelineCanvas

HEADER_W = 132.0
STAGE_W = 204.0
STAGE_H = 92.0
CARD_W = 160.0
CARD_H = 80.0
COMPACT_W = 146.0
COMPACT_H = 44.0
GAP = 12.0
PAD = 12.0
LANE_MIN_H = 120.0
LINK_X = 14.0          # vertical links run down the chips' left side; their labels sit to the right
LABEL_H = 60.0
LABEL_W = STAGE_W + 64.0   # a link label reaches into the gap before the node cards (the canvas leaves it)


@dataclass(frozen=True)
class ChipView:
    """What a stage chip shows: its title, lines of words, and a warning (the canvas computes them)."""

    title: str
    lines: tuple[str, ...] = ()
    note: str = ""          # the rule's origin or a warning, drawn in the accent/warning colour
    warning: bool = False


@dataclass(frozen=True)
class LinkView:
    """What an escalation link shows: the rule, where escalations go (node names), the live rate."""

    rule: str = ""
    routes: tuple[str, ...] = ()
    live: str = ""
    warning: bool = False
    missed: str = ""   # the shadow sample's estimate, e.g. "missed ≈ 0.8 % (0.3–1.9)" ("" before any is answered)


@dataclass(frozen=True)
class FitMark:
    """Drop feedback for one target: whether the dragged stage fits, and why not (or a note when it does)."""

    fits: bool
    reason: str = ""
    short: str = ""


def _elide(font: QFont, text: str, width: float) -> str:
    return QFontMetricsF(font).elidedText(text, Qt.TextElideMode.ElideRight, max(0.0, width))


def _paint_live_badge(painter: QPainter, right: float, top: float, height: float, font: QFont) -> float:
    """A green-outlined 'LIVE' ending at `right` on the card's line at `top`; returns its width."""
    font = QFont(font)
    font.setBold(True)
    font.setPointSizeF(max(6.0, font.pointSizeF() * 0.8))
    width = QFontMetricsF(font).horizontalAdvance("LIVE") + 10
    box = QRectF(right - width, top + 1, width, height - 2)
    painter.setPen(QPen(QColor(theme.OK), 1.2))
    painter.setBrush(QColor(theme.BG))
    painter.drawRoundedRect(box, 4, 4)
    painter.setFont(font)
    painter.drawText(box, Qt.AlignmentFlag.AlignCenter, "LIVE")
    return width


def _paint_mark(painter: QPainter, rect: QRectF, mark: FitMark, font: QFont, hovered: bool) -> None:
    """A fit/no-fit overlay: tinted fill, border, icon and words."""
    colour = QColor(theme.OK if mark.fits else theme.BAD)
    fill = QColor(colour)
    fill.setAlpha(46 if not hovered else 80)
    painter.setBrush(fill)
    pen = QPen(colour, 3 if hovered else 2)
    if not mark.fits:
        pen.setStyle(Qt.PenStyle.DashLine)
    painter.setPen(pen)
    painter.drawRoundedRect(rect.adjusted(1, 1, -1, -1), 6, 6)
    size = 18
    icon_rect = QRectF(rect.right() - size - 6, rect.top() + 6, size, size)
    theme.icon("fit-ok" if mark.fits else "fit-no").paint(painter, icon_rect.toRect())
    text = mark.short or ("fits" if mark.fits else "won't fit")
    bold = QFont(font)
    bold.setBold(True)
    painter.setFont(bold)
    box = QRectF(rect.left() + 6, rect.bottom() - 22, rect.width() - 12, 18)
    back = QColor(theme.BG)
    back.setAlpha(220)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(back)
    painter.drawRoundedRect(box, 3, 3)
    painter.setPen(QColor("#ffffff") if mark.fits else QColor(theme.BAD))
    prefix = "✔ " if mark.fits else "✖ "
    painter.drawText(box.adjusted(4, 0, -4, 0), Qt.AlignmentFlag.AlignVCenter,
                     _elide(bold, prefix + text, box.width() - 8))


class LaneItem(QGraphicsItem):
    """One tier lane (Device, Edge or Cloud): drop a stage here to place it on every node of the tier."""

    def __init__(self, canvas: PipelineCanvas, tier: str, rect: QRectF) -> None:
        super().__init__()
        self.canvas = canvas
        self.tier = tier
        self.rect = rect
        self.mark: FitMark | None = None
        self.hovered = False
        self.setZValue(0)

    def boundingRect(self) -> QRectF:
        """The lane's rectangle."""
        return self.rect

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        """Band, header with icon, title and counts, and the drop mark."""
        r = self.rect
        painter.setPen(QPen(QColor(theme.BORDER), 1))
        painter.setBrush(QColor("#0e1217"))
        painter.drawRect(r)
        header = QRectF(r.left(), r.top(), HEADER_W, r.height())
        painter.setBrush(QColor(theme.PANEL))
        painter.drawRect(header)
        accent = QColor(theme.TIER_COLOURS.get(self.tier, theme.MUTED))
        painter.fillRect(QRectF(r.left(), r.top(), 5, r.height()), accent)
        font = QFont(self.canvas.font())
        title = QFont(font)
        title.setPointSizeF(font.pointSizeF() * 1.35)
        title.setBold(True)
        theme.icon(f"tier-{self.tier}").paint(painter, QRectF(r.left() + 14, r.top() + 12, 22, 22).toRect())
        painter.setFont(title)
        painter.setPen(QColor(theme.TEXT))
        painter.drawText(QRectF(r.left() + 42, r.top() + 8, HEADER_W - 46, 30), Qt.AlignmentFlag.AlignVCenter,
                         theme.TIER_TITLES.get(self.tier, self.tier))
        painter.setFont(font)
        painter.setPen(QColor(theme.MUTED))
        nodes = self.canvas.fleet.by_tier(self.tier)
        online = sum(1 for n in nodes if str(n.state) == "online")
        lines = [f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}", f"{online} online"]
        stages = self.canvas.stages_in_lane(self.tier)
        lines.append(f"{len(stages)} stage{'s' if len(stages) != 1 else ''} here" if stages else "drop a stage here")
        y = r.top() + 44
        line_h = QFontMetricsF(font).height() + 2
        for text in lines:
            painter.drawText(QRectF(r.left() + 14, y, HEADER_W - 18, line_h), Qt.AlignmentFlag.AlignVCenter, text)
            y += line_h
        if not stages:
            slot = QRectF(r.left() + HEADER_W + PAD, r.top() + PAD, STAGE_W, min(STAGE_H, r.height() - 2 * PAD))
            painter.setPen(QPen(QColor(theme.BORDER), 1.5, Qt.PenStyle.DashLine))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRoundedRect(slot, 8, 8)
            painter.setPen(QColor(theme.MUTED))
            flags = int(Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap)
            painter.drawText(slot.adjusted(10, 6, -10, -6), flags,
                             f"Drop a model here to run it on every {self.tier} node, or on a node card to pin it")
        if not nodes:
            painter.setPen(QColor(theme.MUTED))
            empty = QRectF(self.canvas.cards_left(), r.top() + PAD, r.right() - self.canvas.cards_left() - PAD,
                           CARD_H)
            painter.drawText(empty, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                             f"No {self.tier} nodes yet: they appear when discovered or added (Ctrl+N).")
        if self.mark is not None:
            _paint_mark(painter, header.adjusted(3, 3, -3, -3), self.mark, font, self.hovered)
            if self.hovered:
                painter.setPen(QPen(QColor(theme.OK if self.mark.fits else theme.BAD), 2,
                                    Qt.PenStyle.SolidLine if self.mark.fits else Qt.PenStyle.DashLine))
                painter.setBrush(Qt.BrushStyle.NoBrush)
                painter.drawRect(r.adjusted(1, 1, -1, -1))


class NodeCardItem(QGraphicsItem):
    """A live node in its lane: state, power, throughput sparkline, pinned stages; drop here to pin a stage."""

    def __init__(self, canvas: PipelineCanvas, key: str, pos: QPointF) -> None:
        super().__init__()
        self.canvas = canvas
        self.key = key
        self.mark: FitMark | None = None
        self.hovered = False
        self.spark: list[float] = []
        self.live = ""
        self.live_badge = False    # a "LIVE" badge: the other views replay history, this card shows the node now
        self.setPos(pos)
        self.setZValue(2)
        self.setAcceptHoverEvents(True)

    def boundingRect(self) -> QRectF:
        """The card's rectangle (compact cards for big fleets)."""
        return QRectF(0, 0, self.canvas.card_w, self.canvas.card_h)

    def node(self) -> NodeSnapshot | None:
        """The node's current snapshot."""
        return self.canvas.fleet.node(self.key)

    def tooltip_text(self) -> str:
        """The node's accelerators, its onnxruntime build and what each stage really runs on."""
        node = self.node()
        if node is None:
            return ""
        return "\n".join([node.name or node.address, fmt.hardware(node), *fmt.runtime_lines(node)])

    def hoverEnterEvent(self, event: QGraphicsSceneHoverEvent) -> None:
        """Refresh the tooltip from the node's latest snapshot."""
        self.setToolTip(self.tooltip_text())
        super().hoverEnterEvent(event)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        """Card body, texts, sparkline, pins, drop mark."""
        node = self.node()
        if node is None:
            return
        r = self.boundingRect()
        painter.setPen(QPen(QColor(theme.BORDER), 1))
        painter.setBrush(QColor(theme.CARD))
        painter.drawRoundedRect(r, 6, 6)
        font = QFont(self.canvas.font())
        bold = QFont(font)
        bold.setBold(True)
        fm = QFontMetricsF(font)
        line = fm.height()
        theme.state_icon(str(node.state)).paint(painter, QRectF(8, 7, 16, 16).toRect())
        right = r.width() - 8
        security, _ = fmt.security(node)
        if security == "insecure":
            theme.icon("insecure").paint(painter, QRectF(right - 16, 7, 16, 16).toRect())
            right -= 20
        pins = self.canvas.pinned_here(node)
        if pins:
            theme.icon("pin").paint(painter, QRectF(right - 14, 8, 14, 14).toRect())
            right -= 18
        painter.setFont(bold)
        painter.setPen(QColor(theme.TEXT))
        painter.drawText(QRectF(30, 5, right - 30, 20), Qt.AlignmentFlag.AlignVCenter,
                         _elide(bold, node.name or node.address, right - 30))
        painter.setFont(font)
        if self.canvas.compact:
            state_colour = {"degraded": theme.WARN, "offline": theme.BAD}.get(str(node.state), theme.MUTED)
            painter.setPen(QColor(state_colour))
            text = str(node.state) if str(node.state) != "online" else (self.live or "online")
            width = r.width() - 16 - (_paint_live_badge(painter, r.width() - 8, 24, line, font) + 4
                                      if self.live_badge else 0)
            painter.setFont(font)
            painter.setPen(QColor(state_colour))
            painter.drawText(QRectF(8, 24, width, line), Qt.AlignmentFlag.AlignVCenter, _elide(font, text, width))
            if self.mark is not None:
                _paint_mark(painter, r, self.mark, font, self.hovered)
            return
        state_colour = {"degraded": theme.WARN, "offline": theme.BAD}.get(str(node.state), theme.MUTED)
        painter.setPen(QColor(state_colour))
        accel = fmt.accelerators(node)
        state = str(node.state) + (f" · {accel}" if accel else "") + (" · INSECURE" if security == "insecure" else "")
        # the badge ends the state line (elided anyway on a narrow card), not the name's or the figures'
        width = r.width() - 16 - (_paint_live_badge(painter, r.width() - 8, 26, line, font) + 4
                                  if self.live_badge else 0)
        painter.setFont(font)
        painter.setPen(QColor(state_colour))
        painter.drawText(QRectF(8, 26, width, line), Qt.AlignmentFlag.AlignVCenter, _elide(font, state, width))
        painter.setPen(QColor(theme.MUTED))
        text = self.live or fmt.stage_placements(node)
        painter.drawText(QRectF(8, 26 + line, r.width() - 16, line), Qt.AlignmentFlag.AlignVCenter,
                         _elide(font, text, r.width() - 16))
        if pins:
            painter.setPen(QColor(theme.ACCENT))
            painter.drawText(QRectF(8, 26 + 2 * line, r.width() - 16, line), Qt.AlignmentFlag.AlignVCenter,
                             _elide(font, "pinned: " + ", ".join(pins), r.width() - 16))
        elif len(self.spark) > 1:
            self._sparkline(painter, QRectF(8, 28 + 2 * line, r.width() - 16, r.height() - 32 - 2 * line))
        if self.mark is not None:
            _paint_mark(painter, r, self.mark, font, self.hovered)

    def _sparkline(self, painter: QPainter, box: QRectF) -> None:
        values = self.spark
        top = max(values) or 1.0
        step = box.width() / (len(values) - 1)
        path = QPainterPath(QPointF(box.left(), box.bottom() - values[0] / top * box.height()))
        for i, v in enumerate(values[1:], 1):
            path.lineTo(box.left() + i * step, box.bottom() - v / top * box.height())
        node = self.node()
        painter.setPen(QPen(QColor(theme.TIER_COLOURS.get(node.tier if node is not None else "", theme.ACCENT)), 1.4))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawPath(path)


class StageChipItem(QGraphicsObject):
    """A stage of the pipeline: drag it to re-place it, select it (Tab) to edit, Delete to remove."""

    def __init__(self, canvas: PipelineCanvas, stage_id: str, pos: QPointF) -> None:
        super().__init__()
        self.canvas = canvas
        self.stage_id = stage_id
        self.view = ChipView(stage_id)
        self._press: QPointF | None = None
        self.setPos(pos)
        self.setZValue(4)
        self.setFlags(QGraphicsItem.GraphicsItemFlag.ItemIsSelectable
                      | QGraphicsItem.GraphicsItemFlag.ItemIsFocusable)
        self.setCursor(Qt.CursorShape.OpenHandCursor)
        self.setAcceptHoverEvents(True)

    def boundingRect(self) -> QRectF:
        """The chip's rectangle."""
        return QRectF(0, 0, STAGE_W, STAGE_H)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        """Chip body: the title and lines it was told (model, placement, rule and its origin, deployment)."""
        view = self.view
        r = self.boundingRect()
        selected = self.isSelected()
        edge = theme.WARN if view.warning else theme.ACCENT
        painter.setPen(QPen(QColor("#ffffff" if selected else edge), 3 if selected else 1.5))
        painter.setBrush(QColor("#0f2240"))
        painter.drawRoundedRect(r.adjusted(1, 1, -1, -1), 8, 8)
        font = QFont(self.canvas.font())
        bold = QFont(font)
        bold.setBold(True)
        bold.setPointSizeF(font.pointSizeF() * 1.12)
        line = QFontMetricsF(font).height()
        theme.icon("stage").paint(painter, QRectF(8, 8, 18, 18).toRect())
        painter.setFont(bold)
        painter.setPen(QColor(theme.TEXT))
        painter.drawText(QRectF(30, 5, r.width() - 38, 24), Qt.AlignmentFlag.AlignVCenter,
                         _elide(bold, view.title, r.width() - 38))
        painter.setFont(font)
        y = 30.0
        for text in view.lines:
            painter.setPen(QColor(theme.MUTED))
            painter.drawText(QRectF(10, y, r.width() - 20, line), Qt.AlignmentFlag.AlignVCenter,
                             _elide(font, text, r.width() - 20))
            y += line
        if view.note:
            painter.setPen(QColor(theme.WARN if view.warning else theme.ACCENT))
            painter.drawText(QRectF(10, y, r.width() - 20, line), Qt.AlignmentFlag.AlignVCenter,
                             _elide(font, ("⚠ " if view.warning else "") + view.note, r.width() - 20))
        if self.hasFocus():
            painter.setPen(QPen(QColor(theme.ACCENT), 2, Qt.PenStyle.DashLine))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRoundedRect(r.adjusted(-3, -3, 3, 3), 10, 10)

    def focusInEvent(self, event: object) -> None:  # type: ignore[override]
        """Keyboard focus selects the chip (Tab walks the stages)."""
        if not self.isSelected():
            self.scene().clearSelection()
            self.setSelected(True)
        self.update()

    def focusOutEvent(self, event: object) -> None:  # type: ignore[override]
        """Repaint without the focus ring."""
        self.update()

    def mousePressEvent(self, event: QGraphicsSceneMouseEvent) -> None:
        """Select, and remember where a drag may start."""
        self._press = event.pos()
        self.setFocus(Qt.FocusReason.MouseFocusReason)
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QGraphicsSceneMouseEvent) -> None:
        """Start a drag of this stage once the mouse moved far enough."""
        if self._press is None:
            return
        if QLineF(self._press, event.pos()).length() < 8:
            return
        self._press = None
        self.canvas.start_stage_drag(self, event.widget())

    def mouseReleaseEvent(self, event: QGraphicsSceneMouseEvent) -> None:
        """End a click."""
        self._press = None
        super().mouseReleaseEvent(event)

    def mouseDoubleClickEvent(self, event: QGraphicsSceneMouseEvent) -> None:
        """Double-click edits the threshold of this stage's escalation rule."""
        self.canvas.edit_threshold(self.stage_id)

    def contextMenuEvent(self, event: QGraphicsSceneContextMenuEvent) -> None:
        """Right-click: the stage's actions (and, when the fleet drifted from the file, the two ways back)."""
        self.canvas.chip_menu(self.stage_id).popup(event.screenPos())


class LinkItem(QGraphicsObject):
    """The escalation arrow from a stage to the next, labelled with the rule and the live escalation rate."""

    def __init__(self, canvas: PipelineCanvas, stage_id: str, start: QPointF, end: QPointF) -> None:
        super().__init__()
        self.canvas = canvas
        self.stage_id = stage_id
        self.start = start
        self.end = end
        self.view = LinkView()
        self.below = False      # same-lane link: the label sits under the chips, not over them
        self.setZValue(6)
        self.setFlags(QGraphicsItem.GraphicsItemFlag.ItemIsSelectable)
        self.setAcceptHoverEvents(True)
        self.setToolTip("Escalation link: double-click (or F2) to edit the threshold; the what-if plot shows what "
                        "a new threshold would cost")

    def label_rect(self) -> QRectF:
        """Where the label sits: right of a vertical arrow, or under the chips of a same-lane link."""
        mid = (self.start + self.end) / 2
        if self.below:
            return QRectF(mid.x() - LABEL_W / 2, self.start.y() + STAGE_H / 2 + 6, LABEL_W, LABEL_H)
        return QRectF(mid.x() + 8, mid.y() - LABEL_H / 2, LABEL_W - LINK_X - 10, LABEL_H)

    def boundingRect(self) -> QRectF:
        """Arrow and label."""
        return QRectF(self.start, self.end).normalized().adjusted(-12, -12, 12, 12).united(
            self.label_rect().adjusted(-2, -2, 2, 2))

    def shape(self) -> QPainterPath:
        """Clickable: the label and a band along the arrow."""
        path = QPainterPath()
        path.addRect(self.label_rect())
        line = QPainterPath(self.start)
        line.lineTo(self.end)
        from PySide6.QtGui import QPainterPathStroker

        stroker = QPainterPathStroker()
        stroker.setWidth(12)
        return path.united(stroker.createStroke(line))

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        """Arrow with head, and a label box: rule (threshold) and live escalation rate."""
        selected = self.isSelected()
        colour = QColor("#ffffff" if selected else theme.ACCENT)
        pen = QPen(colour, 3 if selected else 2)
        painter.setPen(pen)
        painter.drawLine(self.start, self.end)
        angle = math.atan2(self.end.y() - self.start.y(), self.end.x() - self.start.x())
        head = QPolygonF([self.end,
                          self.end - QPointF(math.cos(angle - 0.45) * 12, math.sin(angle - 0.45) * 12),
                          self.end - QPointF(math.cos(angle + 0.45) * 12, math.sin(angle + 0.45) * 12)])
        painter.setBrush(QBrush(colour))
        painter.drawPolygon(head)
        box = self.label_rect()
        line = (box.height() - 4) / (4 if self.view.missed else 3)  # a fourth once the shadow sample says something
        painter.setBrush(QColor(theme.BG))
        painter.setPen(QPen(colour, 1.5))
        painter.drawRoundedRect(box, 5, 5)
        font = QFont(self.canvas.font())
        bold = QFont(font)
        bold.setBold(True)
        painter.setFont(bold)
        painter.setPen(QColor(theme.TEXT))
        painter.drawText(QRectF(box.left() + 6, box.top() + 2, box.width() - 12, line), Qt.AlignmentFlag.AlignVCenter,
                         _elide(bold, "↑ " + self.view.rule, box.width() - 12))
        painter.setFont(font)
        painter.setPen(QColor(theme.WARN if self.view.warning else theme.TEXT))
        routes = "; ".join(self.view.routes) or "no nodes to route between yet"
        painter.drawText(QRectF(box.left() + 6, box.top() + 2 + line, box.width() - 12, line),
                         Qt.AlignmentFlag.AlignVCenter,
                         _elide(font, ("⚠ " if self.view.warning else "") + routes, box.width() - 12))
        painter.setPen(QColor(theme.MUTED))
        painter.drawText(QRectF(box.left() + 6, box.top() + 2 + 2 * line, box.width() - 12, line),
                         Qt.AlignmentFlag.AlignVCenter,
                         _elide(font, self.view.live or "not deployed", box.width() - 12))
        if self.view.missed:
            painter.setPen(QColor(theme.WARN))
            painter.drawText(QRectF(box.left() + 6, box.top() + 2 + 3 * line, box.width() - 12, line),
                             Qt.AlignmentFlag.AlignVCenter, _elide(font, self.view.missed, box.width() - 12))

    def mousePressEvent(self, event: QGraphicsSceneMouseEvent) -> None:
        """Select the link (the what-if plot follows)."""
        self.scene().clearSelection()
        self.setSelected(True)
        self.canvas.link_clicked(self.stage_id)

    def mouseDoubleClickEvent(self, event: QGraphicsSceneMouseEvent) -> None:
        """Edit the threshold in place."""
        self.canvas.edit_threshold(self.stage_id)


class RouteItem(QGraphicsItem):
    """Fan-in lines from the node cards of one stage to the node cards they escalate to (told its lines)."""

    def __init__(self, stage_id: str, lines: list[tuple[QPointF, QPointF]], colour: str) -> None:
        super().__init__()
        self.stage_id = stage_id
        self.lines = lines
        self.colour = colour
        self.highlighted = False
        self.setZValue(1)

    def boundingRect(self) -> QRectF:
        """Every line, with room for the heads."""
        rect = QRectF()
        for a, b in self.lines:
            rect = rect.united(QRectF(a, b).normalized())
        return rect.adjusted(-8, -8, 8, 30)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        """Dotted lines (solid and brighter when the link is selected), a dot where each lands."""
        colour = QColor(self.colour)
        colour.setAlpha(230 if self.highlighted else 120)
        pen = QPen(colour, 2.2 if self.highlighted else 1.3,
                   Qt.PenStyle.SolidLine if self.highlighted else Qt.PenStyle.DotLine)
        painter.setPen(pen)
        painter.setBrush(colour)
        for a, b in self.lines:
            if abs(a.y() - b.y()) < 1:   # cards side by side: an arc under them, so the line can be seen
                path = QPainterPath(a)
                path.cubicTo(a + QPointF(0, 26), b + QPointF(0, 26), b)
                painter.setBrush(Qt.BrushStyle.NoBrush)
                painter.drawPath(path)
                painter.setBrush(colour)
            else:
                painter.drawLine(a, b)
            painter.drawEllipse(b, 3.5, 3.5)


class DropHintItem(QGraphicsItem):
    """A box that follows the cursor during a drag and says what dropping here would do, or why it cannot."""

    def __init__(self, canvas: PipelineCanvas) -> None:
        super().__init__()
        self.canvas = canvas
        self.text = ""
        self.fits = True
        self.setZValue(20)
        self.setVisible(False)

    def _size(self) -> QRectF:
        font = QFont(self.canvas.font())
        fm = QFontMetricsF(font)
        lines = self.text.split("\n")
        width = min(460.0, max(fm.horizontalAdvance(line) for line in lines) + 40) if lines else 100
        rect = fm.boundingRect(QRectF(0, 0, width - 34, 2000), int(Qt.TextFlag.TextWordWrap), self.text)
        return QRectF(0, 0, width, rect.height() + 14)

    def boundingRect(self) -> QRectF:
        """The box."""
        return self._size()

    def show_text(self, text: str, fits: bool, pos: QPointF) -> None:
        """Show `text` at `pos` (scene coordinates)."""
        self.prepareGeometryChange()
        self.text = text
        self.fits = fits
        self.setPos(pos + QPointF(18, 14))
        self.setVisible(bool(text))
        self.update()

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        """Icon and words on a solid box."""
        r = self.boundingRect()
        painter.setBrush(QColor(theme.BG))
        painter.setPen(QPen(QColor(theme.OK if self.fits else theme.BAD), 2))
        painter.drawRoundedRect(r.adjusted(1, 1, -1, -1), 5, 5)
        theme.icon("fit-ok" if self.fits else "fit-no").paint(painter, QRectF(7, 7, 18, 18).toRect())
        painter.setFont(QFont(self.canvas.font()))
        painter.setPen(QColor(theme.TEXT))
        painter.drawText(r.adjusted(30, 7, -6, -6), int(Qt.TextFlag.TextWordWrap), self.text)
