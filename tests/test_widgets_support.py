"""Helpers for the widget tests: a live console on real agents, real drag-and-drop events, screenshot checks.

Imported by the other tests/test_widgets_*.py modules; its own tests check the drag payload and
the screenshot check itself (a check that cannot fail is a defect).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from agents import AgentProcess, start_agent
from models import classifier
from PySide6.QtCore import QEvent, QMimeData, QPoint, QPointF, QSettings, Qt
from PySide6.QtGui import QDragEnterEvent, QDragLeaveEvent, QDragMoveEvent, QDropEvent, QImage
from PySide6.QtWidgets import QApplication, QWidget
from pytestqt.qtbot import QtBot
from test_app_support import started_core

from app.core import ConsoleCore, NodeState
from app.qt import QtConsole
from widgets import STAGE_MIME, MainWindow, StageDrag, apply_theme, read_stage_mime, stage_mime

SCREENSHOTS = os.environ.get("TIERDECK_SCREENSHOTS", "")


@dataclass
class LiveConsole:
    """A started ConsoleCore with its QtConsole, the agents it watches, and a scratch folder."""

    core: ConsoleCore
    console: QtConsole
    agents: dict[str, AgentProcess]
    folder: Path
    stack: ExitStack
    extra: dict[str, object] = field(default_factory=dict)

    def window(self, qtbot: QtBot, **kwargs: object) -> MainWindow:
        """A shown MainWindow on this console, closed and deleted before the console goes away."""
        apply_theme(QApplication.instance())  # type: ignore[arg-type]  # screenshots as operators see them
        window = MainWindow(self.console, settings=self.settings(), **kwargs)  # type: ignore[arg-type]
        self.stack.callback(dispose, window)
        window.show()
        qtbot.waitExposed(window)
        return window

    def settings(self, name: str = "settings") -> QSettings:
        """A QSettings in the scratch folder (never the user's)."""
        return QSettings(str(self.folder / f"{name}.ini"), QSettings.Format.IniFormat)


@contextmanager
def live_console(folder: Path, agents: dict[str, tuple[str, tuple[str, ...]]], interval: float = 0.2
                 ) -> Iterator[LiveConsole]:
    """Agents (name -> (tier, extra args)), a core watching them, and its Qt models, all online."""
    with ExitStack() as stack:
        procs: dict[str, AgentProcess] = {}
        for name, (tier, args) in agents.items():
            agent = start_agent(folder / name, *args, tier=tier, name=name)
            stack.callback(agent.stop)
            procs[name] = agent
        core = stack.enter_context(started_core(folder / "console.sqlite", telemetry_interval_s=interval))
        console = QtConsole(core)
        stack.callback(console.close)
        for agent in procs.values():
            console.fleet.add_address(agent.address)
        yield LiveConsole(core, console, procs, folder, stack)


def dispose(widget: QWidget) -> None:
    """Close and delete a widget now (with its dialogs), before the models it observes are gone."""
    widget.close()
    widget.deleteLater()
    QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)


def wait_online(qtbot: QtBot, console: QtConsole, count: int, timeout: int = 60_000) -> None:
    """Wait until `count` nodes are online, with their node info known."""
    def ready() -> bool:
        nodes = console.fleet.nodes()
        return len(nodes) == count and all(n.state == NodeState.ONLINE and n.info is not None and n.node_id
                                           for n in nodes)
    qtbot.waitUntil(ready, timeout=timeout)


def big_model(folder: Path, name: str = "big.onnx") -> Path:
    """A real ONNX classifier of ~640 KiB: over a 1 MiB memory cap under the agent's 2× rule."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = np.random.default_rng(3).normal(size=(8, 20_000)).astype(np.float32)
    return classifier(folder / name, weights)


def small_model(folder: Path, name: str = "small.onnx", classes: int = 2) -> Path:
    """A tiny real ONNX classifier (4 features)."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = np.random.default_rng(5).normal(size=(4, classes)).astype(np.float32)
    return classifier(folder / name, weights)


# ----- drag and drop through real Qt events ------------------------------------------------------------

ACTIONS = Qt.DropAction.CopyAction | Qt.DropAction.MoveAction


def drag_over(viewport: QWidget, mime: QMimeData, pos: QPoint,
              modifiers: Qt.KeyboardModifier = Qt.KeyboardModifier.NoModifier) -> QDragMoveEvent:
    """Enter and move over `pos` of a widget with `mime`; returns the move event (accepted or not)."""
    enter = QDragEnterEvent(pos, ACTIONS, mime, Qt.MouseButton.LeftButton, modifiers)
    QApplication.sendEvent(viewport, enter)
    move = QDragMoveEvent(pos, ACTIONS, mime, Qt.MouseButton.LeftButton, modifiers)
    QApplication.sendEvent(viewport, move)
    return move


def drop_at(viewport: QWidget, mime: QMimeData, pos: QPoint,
            modifiers: Qt.KeyboardModifier = Qt.KeyboardModifier.NoModifier) -> QDropEvent:
    """A full drag (enter, move) and drop at `pos`; returns the drop event (accepted when the drop was taken)."""
    drag_over(viewport, mime, pos, modifiers)
    drop = QDropEvent(QPointF(pos), ACTIONS, mime, Qt.MouseButton.LeftButton, modifiers)
    QApplication.sendEvent(viewport, drop)
    return drop


def leave(viewport: QWidget) -> None:
    """End a drag without dropping."""
    QApplication.sendEvent(viewport, QDragLeaveEvent())


# ----- screenshots -----------------------------------------------------------------------------------------

def image_stats(image: QImage) -> tuple[float, int]:
    """(standard deviation of the grey levels, number of distinct colours) of an image."""
    img = image.convertToFormat(QImage.Format.Format_RGB32)
    width, height = img.width(), img.height()
    buffer = np.frombuffer(img.constBits(), dtype=np.uint8, count=img.sizeInBytes())
    pixels = buffer.reshape(height, img.bytesPerLine())[:, : width * 4].reshape(height, width, 4)[:, :, :3]
    grey = pixels.astype(np.float64).mean(axis=2)
    colours = len(np.unique(pixels.reshape(-1, 3)[:: max(1, (width * height) // 200_000)], axis=0))
    return float(grey.std()), colours


def save_screenshot(widget: QWidget, folder: Path, name: str) -> Path:
    """Save `widget.grab()` as PNG in `folder` (and in $TIERDECK_SCREENSHOTS when set); returns the path."""
    pixmap = widget.grab()
    path = folder / f"{name}.png"
    assert pixmap.save(str(path)), f"could not save {path}"
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        pixmap.save(str(Path(SCREENSHOTS) / f"{name}.png"))
    return path


def assert_not_blank(path: Path, min_std: float = 12.0, min_colours: int = 40) -> None:
    """A screenshot shows something: varied grey levels and many colours, not a flat fill."""
    image = QImage(str(path))
    assert not image.isNull(), f"{path} is not an image"
    std, colours = image_stats(image)
    assert std > min_std and colours > min_colours, f"{path} looks blank: grey std {std:.1f}, {colours} colours"


# ----- own tests -----------------------------------------------------------------------------------------

def test_stage_mime_round_trip_and_rejects_foreign_data(qapp: QApplication) -> None:
    new = stage_mime(StageDrag(model_path="/m/a.onnx"))
    assert STAGE_MIME in new.formats() and read_stage_mime(new) == StageDrag(model_path="/m/a.onnx")
    assert read_stage_mime(stage_mime(StageDrag(stage_id="detector"))) == StageDrag(stage_id="detector")
    foreign = QMimeData()
    foreign.setText("hello")
    assert read_stage_mime(foreign) is None
    broken = QMimeData()
    broken.setData(STAGE_MIME, b"{not json")
    assert read_stage_mime(broken) is None


def test_blank_check_fails_on_a_flat_image(qapp: QApplication, tmp_path: Path) -> None:
    flat = QImage(200, 100, QImage.Format.Format_RGB32)
    flat.fill(0x0A0C10)
    flat.save(str(tmp_path / "flat.png"))
    try:
        assert_not_blank(tmp_path / "flat.png")
    except AssertionError:
        pass
    else:
        raise AssertionError("a flat image passed the blank check")
