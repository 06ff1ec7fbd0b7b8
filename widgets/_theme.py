"""The console's look: colours, the dark high-contrast stylesheet, SVG icons, pyqtgraph defaults, wall mode.

Colours are never the only carrier of meaning: every status also has an icon with its own shape
(check, triangle, octagon, ...) and words. Curve colours are the Okabe–Ito palette, readable with
the common colour-vision deficiencies, and tiers also differ by line style.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QColor, QFont, QIcon, QPalette, QPixmap
from PySide6.QtWidgets import QApplication

import resources.theme
from runners.protocol import TIERS as TIERS  # re-exported: the views read theme.TIERS

THEME_DIR = Path(resources.theme.__file__).resolve().parent
ICON_DIR = THEME_DIR / "icons"

BG = "#0a0c10"
PANEL = "#12161c"
CARD = "#1b2129"
BORDER = "#3d4654"
TEXT = "#f0f3f6"
MUTED = "#b0bac6"
ACCENT = "#71b7ff"
SELECT = "#1f6feb"
OK = "#26cd4d"
WARN = "#f0b72f"
BAD = "#ff6a69"

TIER_COLOURS = {"device": "#56b4e9", "edge": "#e69f00", "cloud": "#cc79a7", "": "#b0bac6"}
TIER_STYLES = {"device": Qt.PenStyle.SolidLine, "edge": Qt.PenStyle.DashLine, "cloud": Qt.PenStyle.DotLine,
               "": Qt.PenStyle.DashDotLine}
# Okabe–Ito, then two light greys, for per-node and per-link curves.
SERIES_COLOURS = ("#56b4e9", "#e69f00", "#cc79a7", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#ffffff",
                  "#b0bac6")
TIER_TITLES = {"device": "Device", "edge": "Edge", "cloud": "Cloud", "": "No tier"}

STATE_ICONS = {"online": "state-online", "degraded": "state-degraded", "offline": "state-offline",
               "connecting": "state-connecting", "discovered": "state-discovered"}
SEVERITY_ICONS = {"info": "info", "warning": "state-degraded", "error": "state-offline"}

BASE_POINT_SIZE = 10.0
WALL_SCALE = 1.8


def colour(name: str) -> QColor:
    """A QColor from a theme colour string."""
    return QColor(name)


@cache
def icon(name: str) -> QIcon:
    """An icon from resources/theme/icons/<name>.svg (cached)."""
    return QIcon(str(ICON_DIR / f"{name}.svg"))


@cache
def pixmap(name: str, size: int) -> QPixmap:
    """A rendered icon at `size` × `size` device-independent pixels (cached)."""
    return icon(name).pixmap(QSize(size, size))


def state_icon(state: str) -> QIcon:
    """The icon for a node state (online/degraded/offline/connecting/discovered)."""
    return icon(STATE_ICONS.get(state, "state-discovered"))


def stylesheet() -> str:
    """The dark high-contrast stylesheet (resources/theme/dark.qss)."""
    return (THEME_DIR / "dark.qss").read_text(encoding="utf-8")


def apply_theme(app: QApplication) -> None:
    """Fusion style, a dark palette, the stylesheet and pyqtgraph's colours (call once, before building widgets)."""
    import pyqtgraph as pg

    app.setStyle("Fusion")
    palette = QPalette()
    for role, value in ((QPalette.ColorRole.Window, BG), (QPalette.ColorRole.WindowText, TEXT),
                        (QPalette.ColorRole.Base, "#0e1217"), (QPalette.ColorRole.AlternateBase, PANEL),
                        (QPalette.ColorRole.Text, TEXT), (QPalette.ColorRole.Button, CARD),
                        (QPalette.ColorRole.ButtonText, TEXT), (QPalette.ColorRole.Highlight, SELECT),
                        (QPalette.ColorRole.HighlightedText, "#ffffff"), (QPalette.ColorRole.ToolTipBase, CARD),
                        (QPalette.ColorRole.ToolTipText, TEXT), (QPalette.ColorRole.PlaceholderText, MUTED),
                        (QPalette.ColorRole.Link, ACCENT), (QPalette.ColorRole.Mid, BORDER)):
        palette.setColor(role, QColor(value))
    palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text, QColor("#7d8590"))
    palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText, QColor("#7d8590"))
    app.setPalette(palette)
    font = QFont("DejaVu Sans")
    font.setPointSizeF(BASE_POINT_SIZE)
    app.setFont(font)
    app.setStyleSheet(stylesheet())
    app.setWindowIcon(icon("tierdeck"))
    pg.setConfigOptions(background=BG, foreground=MUTED, antialias=False, useOpenGL=False)


def configure_pyqtgraph() -> None:
    """pyqtgraph's colours without touching the application (for widgets built outside apply_theme)."""
    import pyqtgraph as pg

    pg.setConfigOptions(background=BG, foreground=MUTED, antialias=False, useOpenGL=False)


def scaled_font(base: QFont, factor: float, bold: bool = False) -> QFont:
    """A copy of `base` scaled by `factor`."""
    font = QFont(base)
    size = base.pointSizeF() if base.pointSizeF() > 0 else BASE_POINT_SIZE
    font.setPointSizeF(size * factor)
    font.setBold(bold)
    return font
