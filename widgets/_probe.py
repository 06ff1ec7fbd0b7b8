"""What the window shows, as plain data with screen coordinates: the seam real-display tests and bench/compose.py
drive the real window through (they move the real mouse with xdotool to the points given here).

No file or network I/O here: `tierdeck demo --probe FILE` (widgets/_cmd_demo.py) writes it out.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QPoint, QPointF
from PySide6.QtWidgets import QApplication, QDialog, QMessageBox, QWidget

from widgets._main_window import MainWindow
from widgets._palette import PATH_ROLE


def _global(widget: QWidget, point: QPoint | QPointF) -> list[int]:
    p = widget.mapToGlobal(point.toPoint() if isinstance(point, QPointF) else point)
    return [p.x(), p.y()]


def probe(window: MainWindow) -> dict[str, Any]:
    """Positions (global screen pixels) of what an operator points at, and the state a test checks."""
    canvas = window.canvas
    view = canvas.viewport()
    palette = window.editor.stage_palette
    items = {}
    for row in range(palette.count()):
        item = palette.item(row)
        if item is None:
            continue
        rect = palette.visualItemRect(item)
        name = str(item.data(PATH_ROLE)).rsplit("/", 1)[-1]
        items[name] = _global(palette.viewport(), rect.center()) if palette.viewport().rect().contains(
            rect.center()) else None
    lanes = {tier: _global(view, canvas.mapFromScene(lane.rect.topLeft() + QPointF(66, 60)))
             for tier, lane in canvas.lanes.items()}
    cards = {}
    for _key, card in canvas.cards.items():
        node = card.node()
        if node is not None:
            cards[node.name] = _global(view, canvas.mapFromScene(card.sceneBoundingRect().center()))
    chips = {sid: _global(view, canvas.mapFromScene(chip.sceneBoundingRect().topLeft() + QPointF(100, 16)))
             for sid, chip in canvas.chips.items()}
    links = {sid: _global(view, canvas.mapFromScene(link.label_rect().center()))
             for sid, link in canvas.links.items()}
    dialogs = []
    for w in QApplication.topLevelWidgets():
        if isinstance(w, QDialog) and w.isVisible():
            entry: dict[str, Any] = {"title": w.windowTitle(), "class": type(w).__name__}
            if isinstance(w, QMessageBox):
                entry["text"] = w.text()
            button = getattr(w, "deploy_button", None)
            if button is not None:
                entry["deploy_button"] = _global(button, button.rect().center())
                entry["deploy_enabled"] = button.isEnabled()
                entry["banner"] = w.banner_text() if hasattr(w, "banner_text") else ""
            dialogs.append(entry)
    stages = []
    for s in window.console.pipeline.stages():
        stages.append({"id": s.id, "tier": s.placement.tier, "nodes": list(s.placement.nodes),
                       "output": s.rule.output, "labels": list(s.rule.labels),
                       "confidence_below": s.rule.confidence_below, "score_above": s.rule.score_above,
                       "class_in": list(s.rule.class_in)})
    nodes = []
    for n in window.console.fleet.nodes():
        nodes.append({"name": n.name, "tier": n.tier, "state": str(n.state), "address": n.address,
                      "node_id": n.node_id,
                      "stages": [{"id": st.stage_id, "next_hop": st.next_hop, "serving": st.serving}
                                 for st in n.stages]})
    gallery = window.gallery
    grid = gallery.view
    thumbs, stages_seen = [], []
    for row in range(min(24, gallery.model.rowCount())):
        rect = grid.visualRect(gallery.model.index(row))
        if grid.viewport().rect().contains(rect.center()):
            thumbs.append(_global(grid.viewport(), rect.center()))
            stages_seen.append(len(gallery.model.row(row).entries))
    focus = QApplication.focusWidget()
    return {
        "window": {"visible": window.isVisible(), "title": window.windowTitle(), "dirty": window.is_dirty(),
                   "geometry": [window.x(), window.y(), window.width(), window.height()],
                   "tab": window.tabs.tabText(window.tabs.currentIndex()).replace("&", "")},
        "focus": type(focus).__name__ if focus is not None else "",
        "palette": items, "lanes": lanes, "cards": cards, "chips": chips, "links": links,
        "threshold_editor": canvas.editor() is not None,
        "routes": canvas.route_words(), "warnings": [w for _, w in canvas.warnings],
        "problems": [window.editor.problems.item(i).text() for i in range(window.editor.problems.count())],
        "dialogs": dialogs, "stages": stages, "nodes": nodes,
        "undo": canvas.undo_stack.undoText(), "status": window.statusBar().currentMessage(),
        "replay": _replay(window),
        "gallery": {"rows": gallery.model.rowCount(), "pulled": len(gallery.model.all_rows),
                    "busy": gallery.model.busy, "thumbs": thumbs, "thumb_stages": stages_seen,
                    "detail": gallery.detail.row.key if gallery.detail.row is not None else "",
                    "refresh": _global(gallery.refresh_button, gallery.refresh_button.rect().center()),
                    "disagreed": _global(gallery.disagreed_box, gallery.disagreed_box.rect().center()),
                    "export_enabled": gallery.export_button.isEnabled(), "summary": gallery.summary_label.text()},
    }


def _replay(window: MainWindow) -> dict[str, Any]:
    """The dashboard's replay bar: where its controls are, and what the replay shows."""
    bar = window.dashboard.replay_bar
    if bar is None:
        return {}
    controls = {name: _global(w, w.rect().center()) if w.isVisible() else None for name, w in (
        ("live", bar.live_button), ("replay", bar.replay_button), ("range", bar.range_box), ("start", bar.start_edit),
        ("load", bar.load_button),
        ("back", bar.back_button), ("play", bar.play_button), ("forward", bar.forward_button),
        ("speed", bar.speed_box), ("back_to_live", bar.live_now_button), ("slider", bar.slider))}
    slider = bar.slider
    history = window.replay.history
    return {
        "controls": controls,
        "slider_ends": [_global(slider, QPoint(8, slider.height() // 2)),
                        _global(slider, QPoint(slider.width() - 8, slider.height() // 2))]
        if slider.isVisible() else None,
        "replaying": window.replay.replaying, "loading": window.replay.loading, "playing": window.replay.playing,
        "speed": window.replay.speed, "position_ms": window.replay.position_ms, "frames": window.replay.frames,
        "window_ms": [history.since_ms, history.until_ms] if history is not None else None,
        "banner": bar.banner.text() if bar.banner.isVisible() else "",
        "events_shown": window.event_log.proxy.rowCount(),
        "tiles": {k: t.value.text() for k, t in window.dashboard.tiles.items()},
    }
