"""The live dashboard: throughput, escalation rate per link, power, energy per inference, latency p95, backlog.

Data come from the telemetry model's numpy ring buffers and, for windows longer than the rings
hold, from the database (`request_history`, one-minute rollups, refreshed while the window is
shown). Group by tier (sums per tier, per link) or by node (the busiest nodes plus the ones
selected in the fleet panel). Hover a plot for a readout of every curve at that instant; export
the view as PNG or CSV.

Per tier, the figures are aggregated as samples arrive (`TierRollup`: only the rows a ring gained
are read, into fixed-size circular bins aligned to the bin width); the rollup is rebuilt from the
rings and history only when the window, a node's tier or the sampling interval changes, when
history arrives, or when the dashboard is shown again after samples came while it was hidden.
The curves end with the last complete bin, and a plot is redrawn when a bin with samples
completes (not on every sample, not when only the clock moves); on the frame clock (10–20 Hz,
resting when nothing is new) at most PLOTS_PER_FRAME plots are repainted a frame, the others on
the next frames, and a plot steps on at most every CURVE_MIN_S (a 1-min window's bins complete
five times a second). A frame reuses the series of a plot whose token did not change, and reads
the tiles at most TILES_HZ. Each curve keeps `setDownsampling(mode='peak')` and `setClipToView(True)`.
"""

from __future__ import annotations

import concurrent.futures
import csv
import io
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, Qt, Signal, Slot
from PySide6.QtGui import QAction, QImage, QKeySequence
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from app._records import NodeSample, StageSample
from app._replay import ReplayHistory, ReplayTelemetry
from app._replay_qt import ReplayModel
from app.qt import FleetModel, PipelineModel, TelemetryModel
from widgets import _theme as theme
from widgets._axes import LogAxisItem
from widgets._clock import FrameClock
from widgets._export import ExportWriter
from widgets._replay_bar import ReplayBar
from widgets._series import (
    Array,
    Grid,
    TierRollup,
    bin_width,
    combine,
    history_series,
    merge,
    missed_rate,
    typical_interval,
)

WINDOWS = (("1 min", 60.0), ("10 min", 600.0), ("1 h", 3600.0), ("24 h", 86400.0))
TOP_NODES = 8
PLOTS_PER_FRAME = 1   # plots repainted per frame of the frame clock (the others on the next frames)
TILES_HZ = 4.0
# No sample for this long (or for three sampling intervals, if longer): the fleet is quiet, the time axis
# scrolls in coarser steps and the source line says since when.
QUIET_AFTER_S = 2.0
QUIET_SCROLL_S = 10.0
# On the frame clock a plot's curves step on at most this often — as often as a 1-min window's time axis
# steps (1/60 of the window). Its 0.2-s bins complete five times a second, and redrawing seven plots at that
# rate was half the console's CPU at 50 nodes (issue 15); longer windows' bins complete less often anyway.
CURVE_MIN_S = 1.0


@dataclass
class PlotSpec:
    """One plot: key, title, unit and how series combine across nodes."""

    key: str
    title: str
    unit: str
    scale: float = 1.0
    max_top: float = 0.0      # a ceiling for the y axis (100 for percentages); 0 = none
    log: bool = False         # logarithmic y (values that span decades, like energy per stage)


PLOTS = (
    PlotSpec("throughput", "Throughput", "inferences/s"),
    PlotSpec("escalation", "Escalation rate per link", "%", 100.0, 100.0),
    PlotSpec("power", "Power", "W"),
    PlotSpec("energy", "Energy per inference", "mJ", 1000.0, log=True),
    PlotSpec("latency", "Latency p95 (worst node)", "ms"),
    PlotSpec("backlog", "Store-and-forward backlog", "escalations"),
    PlotSpec("missed", "Missed (est.) per link: settled rows the next tier would have caught", "%", 100.0),
)


@dataclass
class Series:
    """One curve as shown: name, times, values, colour and line style."""

    name: str
    t: Array
    v: Array
    colour: str
    style: Qt.PenStyle = Qt.PenStyle.SolidLine


@dataclass
class Frame:
    """Everything one frame shows."""

    start: float
    end: float
    plots: dict[str, list[Series]] = field(default_factory=dict)
    tiles: dict[str, str] = field(default_factory=dict)
    estimate: bool = False
    tokens: dict[str, object] = field(default_factory=dict)   # per plot: equal tokens, equal curves


class PlotPanel(QWidget):
    """A titled pyqtgraph plot with a time axis, a legend, peak downsampling, clip-to-view and a hover readout."""

    def __init__(self, spec: PlotSpec, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.spec = spec
        self.title = QLabel(f"{spec.title} ({spec.unit})", self)
        self.title.setFont(theme.scaled_font(self.font(), 1.0, bold=True))
        self.title.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.title.setToolTip(self.title.text())
        axes: dict[str, pg.AxisItem] = {"bottom": pg.DateAxisItem(orientation="bottom")}
        if spec.log:
            axes["left"] = LogAxisItem("left")   # readable labels at any range (pyqtgraph's pile up)
        self.plot = pg.PlotWidget(self, axisItems=axes)
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.setAccessibleName(spec.title)
        item = self.plot.getPlotItem()
        # No grid: pyqtgraph draws grid lines as part of the axes, so a grid makes every curve update
        # repaint both axes (their text is most of a frame's paint). Ranges move in steps (below) for the
        # same reason: an axis repaints only when its range really changes.
        item.setClipToView(True)
        item.setDownsampling(auto=True, mode="peak")
        item.enableAutoRange(enable=False)
        if spec.log:
            item.setLogMode(y=True)
        self._x_range: tuple[float, float] = (0.0, 0.0)
        self._y_top = 0.0
        self._y_log: tuple[float, float] = (0.0, 0.0)
        item.getAxis("left").setWidth(48)
        item.getViewBox().setLimits(yMin=0)
        self.legend = item.addLegend(offset=(4, 4), labelTextColor=theme.TEXT, brush=pg.mkBrush(10, 12, 16, 200))
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.series: dict[str, Series] = {}
        self.crosshair = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen(theme.MUTED, width=1))
        self.crosshair.setVisible(False)
        self.readout = pg.TextItem("", color=theme.TEXT, fill=pg.mkBrush(10, 12, 16, 225), anchor=(0, 0))
        self.readout.setZValue(50)
        self.readout.setVisible(False)
        item.addItem(self.crosshair, ignoreBounds=True)
        item.addItem(self.readout, ignoreBounds=True)
        self.hover_x: float | None = None
        self.token: object = None   # what the curves show (Frame.tokens): same token, nothing to redraw
        self.plot.scene().sigMouseMoved.connect(self._mouse_moved)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.setSpacing(2)
        layout.addWidget(self.title)
        layout.addWidget(self.plot, 1)

    def show_series(self, series: list[Series], start: float, end: float) -> None:
        """Set the time window and the curves (created and removed as the set of series changes)."""
        self.set_time_range(start, end)
        names = {s.name for s in series}
        for name in [n for n in self.curves if n not in names]:
            curve = self.curves.pop(name)
            self.legend.removeItem(curve)
            self.plot.getPlotItem().removeItem(curve)
            self.series.pop(name, None)
        for s in series:
            curve = self.curves.get(s.name)
            if curve is None:
                curve = self.plot.plot([], [], name=s.name, pen=pg.mkPen(s.colour, width=2, style=s.style),
                                       connect="finite")
                curve.setDownsampling(auto=True, method="peak")
                curve.setClipToView(True)
                self.curves[s.name] = curve
            curve.setData(s.t, s.v * self.spec.scale, connect="finite")
            self.series[s.name] = s
        top, bottom = 0.0, np.inf
        for s in series:
            visible = s.v[(s.t >= start) & np.isfinite(s.v)]
            if len(visible):
                top = max(top, float(visible.max()) * self.spec.scale)
                positive = visible[visible > 0]
                if len(positive):
                    bottom = min(bottom, float(positive.min()) * self.spec.scale)
        if self.spec.log:
            self.set_decades(bottom, top)
        else:
            self.set_top(top)
        if self.hover_x is not None:
            self._show_readout(self.hover_x)

    def set_time_range(self, start: float, end: float) -> None:
        """Show [start, end], moving in steps of 1/60 of the window (the axis repaints once a step)."""
        width = end - start
        step = width / 60
        right = (np.floor(end / step) + 1) * step
        if (right - width, right) != self._x_range:
            self._x_range = (right - width, right)
            self.plot.getPlotItem().setXRange(right - width, right, padding=0)

    def set_decades(self, low: float, high: float) -> None:
        """Log scale: whole decades around the visible values; changed only when they change."""
        if not (np.isfinite(low) and high > 0):
            low, high = 0.1, 10.0
        span = (float(np.floor(np.log10(low))), float(np.ceil(np.log10(high * 1.001))))
        if span[1] <= span[0]:
            span = (span[0], span[0] + 1)
        if span != self._y_log:
            self._y_log = span
            self.plot.getPlotItem().setYRange(span[0], span[1] + 0.12, padding=0)

    def set_top(self, top: float) -> None:
        """Scale y to 0 .. a round number above `top`; change it only when that round number changes."""
        nice = nice_ceiling(top * 1.08) if top > 0 else 1.0
        if self.spec.max_top:
            nice = min(nice, self.spec.max_top)
        if nice != self._y_top:
            self._y_top = nice
            self.plot.getPlotItem().setYRange(0.0, nice * 1.06, padding=0)   # room for the top tick's label

    def set_wall(self, wall: bool, font_factor: float) -> None:
        """Large type and thick lines for a wall screen."""
        font = theme.scaled_font(self.font(), font_factor if wall else 1.0)
        for axis in ("left", "bottom"):
            self.plot.getPlotItem().getAxis(axis).setStyle(tickFont=font)
        self.plot.getPlotItem().getAxis("left").setWidth(int(48 * (font_factor if wall else 1.0)))
        self.plot.getPlotItem().getAxis("bottom").setHeight(int(28 * (font_factor if wall else 1.0)))
        self.title.setFont(theme.scaled_font(self.font(), 1.35 if wall else 1.0, bold=True))
        self.legend.setLabelTextSize(f"{9 * (font_factor if wall else 1.0):.0f}pt")
        for _sample, label in self.legend.items:
            label.setText(label.text, size=self.legend.opts["labelTextSize"], color=theme.TEXT)
        for name, curve in self.curves.items():
            s = self.series.get(name)
            if s is not None:
                curve.setPen(pg.mkPen(s.colour, width=4 if wall else 2, style=s.style))

    @Slot(object)
    def _mouse_moved(self, pos: QPointF) -> None:
        vb = self.plot.getPlotItem().getViewBox()
        if not self.plot.sceneBoundingRect().contains(pos) or not vb.sceneBoundingRect().contains(pos):
            self.hover_x = None
            self.crosshair.setVisible(False)
            self.readout.setVisible(False)
            return
        self.hover_x = float(vb.mapSceneToView(pos).x())
        self._show_readout(self.hover_x)

    def readout_text(self, x: float) -> str:
        """The values of every curve at time `x` (nearest sample), as shown on hover."""
        lines = [datetime.fromtimestamp(x).strftime("%H:%M:%S")]
        for s in self.series.values():
            if len(s.t) == 0:
                continue
            i = int(np.clip(np.searchsorted(s.t, x), 0, len(s.t) - 1))
            if i > 0 and abs(s.t[i - 1] - x) < abs(s.t[i] - x):
                i -= 1
            value = s.v[i] * self.spec.scale
            text = "—" if not np.isfinite(value) else f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
            lines.append(f"{s.name}: {text} {self.spec.unit}")
        return "\n".join(lines)

    def _show_readout(self, x: float) -> None:
        self.crosshair.setValue(x)
        self.crosshair.setVisible(True)
        self.readout.setText(self.readout_text(x))
        (x0, x1), (_y0, y1) = self.plot.getPlotItem().getViewBox().viewRange()
        left = x if x < (x0 + x1) / 2 else x - (x1 - x0) * 0.32
        self.readout.setPos(left, y1)
        self.readout.setVisible(True)


class Tile(QFrame):
    """A big number with a title: the wall screen's glance."""

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("tile")
        self.title = QLabel(title, self)
        self.title.setObjectName("tileTitle")
        self.title.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.value = QLabel("—", self)
        self.value.setObjectName("tileValue")
        self.value.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 6)
        layout.setSpacing(0)
        layout.addWidget(self.title)
        layout.addWidget(self.value)
        self.set_scale(1.0)

    def set_scale(self, factor: float) -> None:
        """Scale the type (wall mode)."""
        self.value.setFont(theme.scaled_font(self.font(), 1.6 * factor, bold=True))
        self.title.setFont(theme.scaled_font(self.font(), 0.95 * factor))


class Dashboard(QWidget):
    """Live plots per tier or per node over 1 min / 10 min / 1 h / 24 h, with tiles, hover and export."""

    window_changed = Signal(float)       # seconds
    status_message = Signal(str)

    def __init__(self, fleet: FleetModel, telemetry: TelemetryModel, clock: FrameClock | None = None,
                 pipeline: PipelineModel | None = None, files: concurrent.futures.Executor | None = None,
                 parent: QWidget | None = None, replay: ReplayModel | None = None) -> None:
        super().__init__(parent)
        theme.configure_pyqtgraph()
        # What the plots read: the live models, or during a replay the history as of the replayed instant
        # (app._replay.ReplayTelemetry has the read side of both); the live models keep filling meanwhile.
        self.fleet: FleetModel | ReplayTelemetry = fleet
        self.telemetry: TelemetryModel | ReplayTelemetry = telemetry
        self._live = (fleet, telemetry)
        self.replay = replay
        self.pipeline = pipeline
        self.clock = clock
        self.window_s = WINDOWS[0][1]
        self.group = "tier"
        self.selected_nodes: list[str] = []
        self.wall = False
        self.frame: Frame | None = None
        self.frames_drawn = 0
        self.writer = ExportWriter(files, self)
        self.writer.exported.connect(self._exported)
        self.writer.export_failed.connect(self._export_failed)
        self._history: dict[tuple[str, str], dict[str, tuple[Array, Array]]] = {}
        self._requests: dict[int, tuple[str, str, float]] = {}
        self._history_for: float = 0.0
        self._history_at = 0.0
        self._last_scroll = 0.0
        self._last_sample = 0.0
        self._last_sample_wall = 0.0
        self._rollup: TierRollup | None = None
        self._rollup_stale = False
        self._rollup_window = 0.0
        self._tier_of: dict[str, str] = {}
        self._width_checked = 0.0
        self.rollups_built = 0
        self.plots_drawn = 0
        self._drawn_at: dict[str, int] = {}
        self._drawn_time: dict[str, float] = {}    # plot → when its curves were last drawn (monotonic s)
        self._tiles_at = 0.0
        self._missed_token: object = None
        self._missed_series: list[Series] = []
        self._tier_series: dict[str, tuple[object, list[Series]]] = {}   # plot → (token, series) last computed
        self._width: tuple[float, tuple[str, ...], float] | None = None   # (window, nodes, bin width) last measured
        self._interval = 0.0    # the fleet's typical sampling interval, as last measured (s)

        # controls
        self.window_buttons = QButtonGroup(self)
        self.window_buttons.setExclusive(True)
        controls = QHBoxLayout()
        controls.addWidget(QLabel("Window:", self))
        self.window_actions: list[QAction] = []
        for i, (title, _seconds) in enumerate(WINDOWS):
            button = QPushButton(title, self)
            button.setObjectName("windowButton")
            button.setCheckable(True)
            button.setToolTip(f"Show the last {title} (Ctrl+{i + 1})")
            self.window_buttons.addButton(button, i)
            controls.addWidget(button)
            action = QAction(f"Last {title}", self)
            action.setShortcut(QKeySequence(f"Ctrl+{i + 1}"))
            action.setCheckable(True)
            action.triggered.connect(button.click)
            self.window_actions.append(action)
        self.window_buttons.button(0).setChecked(True)
        self.window_actions[0].setChecked(True)
        self.group_box = QComboBox(self)
        self.group_box.addItem("Per tier / link", "tier")
        self.group_box.addItem(f"Per node (busiest {TOP_NODES} + selected)", "node")
        self.group_box.setAccessibleName("Group curves")
        self.group_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.group_box.setMinimumContentsLength(8)
        controls.addSpacing(8)
        group_label = QLabel("&Group:", self)
        group_label.setBuddy(self.group_box)
        controls.addWidget(group_label)
        controls.addWidget(self.group_box)
        self.source = QLabel("", self)
        self.source.setProperty("muted", True)
        self.source.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.source.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        controls.addWidget(self.source, 1)

        tiles = QHBoxLayout()
        self.tiles: dict[str, Tile] = {}
        for key, title in (("nodes", "Nodes online"), ("throughput", "Inputs (entry stage)"),
                           ("escalation", "Escalated (first link)"), ("power", "Power now"),
                           ("energy", "Energy per input"), ("latency", "Latency p95 (worst)")):
            tile = Tile(title, self)
            tile.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            self.tiles[key] = tile
            tiles.addWidget(tile)

        self.panels: dict[str, PlotPanel] = {}
        self.grid = QGridLayout()
        self.grid.setSpacing(6)
        for i, spec in enumerate(PLOTS):
            panel = PlotPanel(spec, self)
            self.panels[spec.key] = panel
            last = i + 1 == len(PLOTS)   # the last plot takes the rest of its row
            self.grid.addWidget(panel, i // 3, i % 3, 1, 3 - i % 3 if last else 1)
            if i + 3 < len(PLOTS):   # one time axis per column, under the bottom row: the plots share the window
                panel.plot.getPlotItem().getAxis("bottom").setStyle(showValues=False)
                panel.plot.getPlotItem().getAxis("bottom").setHeight(6)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        self.replay_bar: ReplayBar | None = None
        if replay is not None:
            self.replay_bar = ReplayBar(replay, self)
            layout.addWidget(self.replay_bar)
            replay.mode_changed.connect(self._replay_mode)
            replay.moved.connect(self._replay_moved)
            replay.window_loaded.connect(self._replay_loaded)
        self._live_window: float | None = None   # the window before a replay of rollups widened it
        layout.addLayout(controls)
        layout.addLayout(tiles)
        layout.addLayout(self.grid, 1)

        export_png = QAction("Export view as &PNG…", self)
        export_png.setShortcut(QKeySequence("Ctrl+E"))
        export_csv = QAction("Export view as &CSV…", self)
        export_csv.setShortcut(QKeySequence("Ctrl+Shift+E"))
        self.export_png_action, self.export_csv_action = export_png, export_csv

        self.window_buttons.idClicked.connect(self._window_clicked)
        self.group_box.currentIndexChanged.connect(self._group_changed)
        telemetry.samples_received.connect(self._samples_arrived)
        telemetry.history_loaded.connect(self._history_loaded)
        telemetry.history_failed.connect(self._history_failed)
        if clock is not None:
            clock.frame_ticked.connect(self._frame_ticked)
            clock.second_ticked.connect(self._second_ticked)

    # ----- controls ------------------------------------------------------------------------------------------
    def set_window(self, seconds: float) -> None:
        """Show the last `seconds` (one of WINDOWS); history is asked from the database when the rings fall short."""
        index = next((i for i, (_, s) in enumerate(WINDOWS) if s == seconds), 0)
        self.window_buttons.button(index).setChecked(True)
        for i, action in enumerate(self.window_actions):
            action.setChecked(i == index)
        self.window_s = WINDOWS[index][1]
        self._history.clear()
        self._history_for = 0.0
        self.window_changed.emit(self.window_s)
        self._maybe_request_history(force=True)
        self.redraw()

    @Slot(int)
    def _window_clicked(self, index: int) -> None:
        self.set_window(WINDOWS[index][1])

    @Slot(int)
    def _group_changed(self, _index: int) -> None:
        self.group = self.group_box.currentData() or "tier"
        self.redraw()

    @Slot(object)
    def set_selected_nodes(self, keys: object) -> None:
        """Nodes selected in the fleet panel (always shown when grouping per node)."""
        self.selected_nodes = [k for k in list(keys) if isinstance(k, str)]  # type: ignore[call-overload]
        if self.group == "node":
            self.redraw()

    def set_wall(self, wall: bool, factor: float = theme.WALL_SCALE) -> None:
        """Wall mode: large type in tiles and plots, thick lines."""
        self.wall = wall
        for tile in self.tiles.values():
            tile.set_scale(factor if wall else 1.0)
        for panel in self.panels.values():
            panel.set_wall(wall, factor)

    # ----- replay ---------------------------------------------------------------------------------------------
    @property
    def replaying(self) -> bool:
        """True while the plots show a replayed window instead of live telemetry."""
        return self.telemetry is not self._live[1]

    def now(self) -> float:
        """The instant the view ends at (Unix s): now, or the replayed instant."""
        tel = self.telemetry
        return tel.position_ms / 1000 if isinstance(tel, ReplayTelemetry) else time.time()

    @Slot(object)
    def _replay_loaded(self, history: ReplayHistory) -> None:
        """Rollups hold one row a minute: a window under an hour would show a point or two, so show the last hour."""
        if history.resolution != "raw" and self.window_s < 3600.0:
            if self._live_window is None:
                self._live_window = self.window_s
            self.set_window(3600.0)

    @Slot(bool)
    def _replay_mode(self, replaying: bool) -> None:
        view = self.replay.view if self.replay is not None else None
        self.fleet, self.telemetry = (view, view) if replaying and view is not None else self._live
        if not replaying and self._live_window is not None:
            window, self._live_window = self._live_window, None
            self.set_window(window)
        self._history.clear()
        self._history_for = 0.0
        self._rollup_stale = True
        self.redraw()

    @Slot(object, bool)
    def _replay_moved(self, node_ids: object, rebuilt: bool) -> None:
        """The replayed instant moved: fold the rows the replay's rings gained (rebuild when it went back)."""
        view = self.replay.view if self.replay is not None else None
        if view is None:
            return
        if self.telemetry is not view:   # a new window
            self.fleet = self.telemetry = view
            rebuilt = True
        if rebuilt:
            self._rollup_stale = True
        else:
            self._fold(node_ids)
        if self.clock is not None and self.isVisible():
            self.clock.request_frame()
        else:
            self.redraw()

    # ----- frames ---------------------------------------------------------------------------------------------
    @Slot()
    def _frame_ticked(self) -> None:
        if self.isVisible():
            self.redraw(PLOTS_PER_FRAME)

    @Slot()
    def _second_ticked(self) -> None:
        """Scroll the time axis while no samples arrive; refresh history now and then."""
        self._maybe_request_history()
        if not self.isVisible():
            return
        now = time.monotonic()
        if self._rollup is not None and now - self._width_checked >= 10.0:
            # the fleet's sampling interval sets the bin width: rebuild when it moved (a node's rate changed)
            self._width_checked = now
            width = self._bin_width(list(self._tier_of), fresh=True)
            if abs(width - self._rollup.aggregator.width) > 0.2 * self._rollup.aggregator.width:
                self._rollup_stale = True
                self.redraw()
        every = 1.0 if self.window_s <= 600 else 10.0
        if self.quiet:
            every = max(every, QUIET_SCROLL_S)   # each step re-clips and repaints every plot: not once a second
        if self.frame is not None:
            text = self._source_text(self.frame)
            if self.source.text() != text:
                self.source.setText(text)
        if now - self._last_scroll >= every and self.frame is not None and not self.replaying:
            start, end = time.time() - self.window_s, time.time()
            for panel in self.panels.values():
                panel.set_time_range(start, end)
            self._last_scroll = now

    def redraw(self, plots: int = len(PLOTS)) -> None:
        """Compute the frame and show it: tiles, and at most `plots` of the plots whose curves changed.

        On the frame clock a few plots a frame (the ones waiting longest first, the rest on the
        next frames, asked for here), so that no frame repaints every plot at once.
        """
        now = time.monotonic()
        # big numbers changing 15 times a second cannot be read; at most TILES_HZ on the frame clock
        tiles = plots >= len(PLOTS) or now - self._tiles_at >= 1.0 / TILES_HZ or self.frame is None
        frame = self.compute_frame(tiles=tiles)
        if not tiles and self.frame is not None:
            frame.tiles, frame.estimate = self.frame.tiles, self.frame.estimate
        self.frame = frame
        stale = [key for key, panel in self.panels.items()
                 if (token := frame.tokens.get(key)) is None or token != panel.token]
        waiting = False
        if plots < len(PLOTS) and not self.replaying:
            # On the frame clock a plot whose curves just moved on waits CURVE_MIN_S before the next step
            # (a 1-min window's bins complete five times a second); a plot shown anew does not wait.
            due = [key for key in stale if (self.panels[key].token is None and frame.tokens.get(key) is not None)
                   or now - self._drawn_time.get(key, -math.inf) >= CURVE_MIN_S]
            waiting = len(due) < len(stale)
            stale = due
        stale.sort(key=lambda k: self._drawn_at.get(k, -1))
        for key in stale[:plots]:
            panel = self.panels[key]
            panel.show_series(frame.plots.get(key, []), frame.start, frame.end)
            panel.token = frame.tokens.get(key)
            self._drawn_at[key] = self.frames_drawn
            self._drawn_time[key] = now
            self.plots_drawn += 1
        # The plots not drawn keep their time range until their turn (a frame or two): a range step
        # re-clips and repaints a plot, and doing it for every plot at once made the slowest frames.
        if (len(stale) > plots or waiting) and self.clock is not None:
            self.clock.request_frame()
        if tiles:
            self._tiles_at = now
            for key, tile in self.tiles.items():
                text = frame.tiles.get(key, "—")
                if tile.value.text() != text:
                    tile.value.setText(text)
            text = self._source_text(frame)
            if self.source.text() != text:
                self.source.setText(text)
        self._last_scroll = time.monotonic()
        self.frames_drawn += 1

    @property
    def quiet(self) -> bool:
        """True when no sample has arrived for QUIET_AFTER_S or three sampling intervals, whichever is longer (the
        time axis then scrolls in coarser steps)."""
        return time.monotonic() - self._last_sample > max(QUIET_AFTER_S, 3.0 * self._interval)

    def _source_text(self, frame: Frame) -> str:
        if self.replaying and self.replay is not None and self.replay.history is not None:
            return "replay · " + ("raw samples" if self.replay.history.resolution == "raw" else "1-min rollups")
        parts = [f"{sum(1 for n in self.fleet.nodes() if str(n.state) == 'online')} online"]
        if self.quiet and self._last_sample_wall:
            parts.append(f"no samples since {datetime.fromtimestamp(self._last_sample_wall):%H:%M:%S}")
        if self._requests:
            parts.append("loading history…")
        elif self._history:
            parts.append("history: 1-min rollups from the database")
        if frame.estimate:
            parts.append("power: estimates (no sensor)")
        return " · ".join(parts)

    # ----- data ----------------------------------------------------------------------------------------------
    def compute_frame(self, now: float | None = None, tiles: bool = True) -> Frame:
        """All series (and, with `tiles`, the tiles) for the window ending `now` (Unix seconds)."""
        end = self.now() if now is None else now
        start = end - self.window_s
        frame = Frame(start, end)
        nodes = [n for n in self.fleet.nodes() if n.node_id]
        tier_of = {n.node_id: (n.tier if n.tier in theme.TIERS else "") for n in nodes}
        latest: dict[str, NodeSample | None] = {}
        if tiles or self.group == "node":
            latest = {node_id: self.telemetry.latest(node_id) for node_id in tier_of}
            frame.estimate = any(s is not None and not s.power_measured for s in latest.values())
        if self.group == "node":
            self._per_node(frame, latest, {n.node_id: n.name for n in nodes})
        else:
            self._per_tier(frame, tier_of)
        self._missed(frame, list(tier_of))
        if tiles:
            self._tiles(frame, latest)
        return frame

    def _missed(self, frame: Frame, node_ids: list[str]) -> None:
        """The "missed (est.)" plot: per link, the shadow sample's share of settled rows the next tier would have
        caught (runners/_shadow.py, app/_miss.py), from the stage rings' cumulative shadow counters."""
        tel = self.telemetry
        links: dict[str, list[object]] = {}
        for node_id, stage_id in tel.stage_keys():
            ring = tel.stage_series(node_id, stage_id)
            if ring is not None and len(ring) and ring.last("shadow_answered_total"):
                links.setdefault(stage_id, []).append(ring)
        width = self._bin_width(node_ids)
        # The curves move on when a newer bin has a shadow sample (not when only the clock moves on).
        newest = max((float(ring.tail(1)[0][-1]) for rings in links.values() for ring in rings),  # type: ignore[attr-defined]
                     default=None)
        token = (None if newest is None else int(newest // width), width, self.window_s, tuple(sorted(links)))
        if token != self._missed_token:
            grid = Grid(frame.start, frame.end, width)
            series = []
            for i, stage_id in enumerate(self._link_order(links)):
                rows = [(ring.series("shadow_answered_total", frame.start),  # type: ignore[attr-defined]
                         ring.series("shadow_agreed_total", frame.start))  # type: ignore[attr-defined]
                        for ring in links[stage_id]]
                series.append(Series(self._link_label(stage_id), grid.centers, missed_rate(grid, rows),
                                     theme.SERIES_COLOURS[i % len(theme.SERIES_COLOURS)]))
            self._missed_token, self._missed_series = token, series
        frame.plots["missed"] = self._missed_series
        frame.tokens["missed"] = token

    # ----- per tier / link: the incremental rollup ---------------------------------------------------------------
    @property
    def rollup(self) -> TierRollup | None:
        """The per-tier / per-link figures as last drawn (None before the first per-tier frame)."""
        return self._rollup

    def _rollup_for(self, tier_of: dict[str, str]) -> TierRollup:
        """The rollup for this window and these nodes' tiers, rebuilt from the rings (and history) when stale."""
        rollup = self._rollup
        if rollup is None or self._rollup_stale or tier_of != self._tier_of or self._rollup_window != self.window_s:
            rollup = self._rebuild_rollup(tier_of)
        return rollup

    def _bin_width(self, node_ids: Sequence[str], fresh: bool = False) -> float:
        """The grid's bin width for these nodes: measured from their rings, then kept (per window and node set)
        until `fresh` asks again (the once-every-10-s check) — not re-measured every frame."""
        key = tuple(node_ids)
        if not fresh and self._width is not None and self._width[:2] == (self.window_s, key):
            return self._width[2]
        intervals: list[float] = []
        for node_id in node_ids:
            ring = self.telemetry.node_series(node_id)
            if ring is not None and len(ring) >= 3:
                gap = typical_interval(ring.tail(51)[0])
                if gap:
                    intervals.append(gap)
                    if len(intervals) >= 5:
                        break
        width = bin_width(self.window_s, intervals)
        if intervals:
            self._interval = float(np.median(intervals))
        # keep it once the nodes asked about have sampled enough to say (a young ring says nothing yet)
        self._width = (self.window_s, key, width) if len(intervals) >= min(5, len(key)) else None
        return width

    def _rebuild_rollup(self, tier_of: dict[str, str]) -> TierRollup:
        """A new rollup from everything the rings (and the history read) hold: on a new window, tier or node."""
        tel = self.telemetry
        width = self._bin_width(list(tier_of), fresh=True)
        rollup = TierRollup(width, int(np.ceil(self.window_s / width - 1e-9)))
        rollup.aggregator.advance(self.now())
        stages: dict[str, list[str]] = {}
        for node_id, stage_id in tel.stage_keys():
            stages.setdefault(node_id, []).append(stage_id)
        for (node_id, stage_id) in self._history:
            if stage_id and stage_id not in stages.get(node_id, []):
                stages.setdefault(node_id, []).append(stage_id)
        for node_id, tier in tier_of.items():
            rollup.ingest(node_id, tier, "", tel.node_series(node_id), self._history.get((node_id, "")))
            for stage_id in stages.get(node_id, []):
                rollup.ingest(node_id, tier, stage_id, tel.stage_series(node_id, stage_id),
                              self._history.get((node_id, stage_id)))
        self._rollup = rollup
        self._rollup_stale = False
        self._rollup_window = self.window_s
        self._tier_of = dict(tier_of)
        self.rollups_built += 1
        return rollup

    @Slot(object)
    def _samples_arrived(self, node_ids: object) -> None:
        """Fold the new rows of these nodes' rings into the rollup (a hidden dashboard rebuilds when shown)."""
        self._last_sample = time.monotonic()
        self._last_sample_wall = time.time()
        if self.replaying:
            return   # the live rings keep filling; the rollup is rebuilt from them on the way back to live
        self._fold(node_ids)

    def _fold(self, node_ids: object) -> None:
        rollup = self._rollup
        if rollup is None or self._rollup_stale:
            return
        if self.group != "tier" or not self.isVisible():
            self._rollup_stale = True
            return
        tel = self.telemetry
        for node_id in node_ids:  # type: ignore[attr-defined]
            tier = self._tier_of.get(node_id)
            if tier is None:
                continue    # not (yet) a fleet node with an id: the next frame's tier map rebuilds if it joins
            rollup.ingest(node_id, tier, "", tel.node_series(node_id))
            known = rollup.stages.get(node_id, ())
            sample = tel.latest(node_id)
            for stage_id in {*known, *(st.stage_id for st in sample.stages)} if sample is not None else known:
                rollup.ingest(node_id, tier, stage_id, tel.stage_series(node_id, stage_id))

    def _per_tier(self, frame: Frame, tier_of: dict[str, str]) -> None:
        rollup = self._rollup_for(tier_of)
        agg = rollup.aggregator
        agg.advance(frame.end)
        present = set(tier_of.values())
        tiers = [t for t in (*theme.TIERS, "") if t in present]
        # What each plot shows: (name, group member or link rate, colour, style) per curve.
        curves: dict[str, list[tuple[str, tuple[str, str], str, Qt.PenStyle]]] = {}

        def per_tier(plot: str, shown: Sequence[str]) -> None:
            curves[plot] = [(theme.TIER_TITLES.get(t, t), (plot, t), theme.TIER_COLOURS.get(t, theme.MUTED),
                             theme.TIER_STYLES.get(t, Qt.PenStyle.SolidLine)) for t in shown]

        per_tier("power", tiers)
        per_tier("backlog", tiers)
        for plot in ("throughput", "latency"):
            per_tier(plot, [t for t in tiers if t in rollup.tiers.get(plot, ())])
        # per link (stage): escalated / inferred across the nodes running it; energy per inference averaged
        escalation, energy = [], []
        for i, stage_id in enumerate(self._link_order(rollup.links)):
            colour = theme.SERIES_COLOURS[i % len(theme.SERIES_COLOURS)]
            energy.append((stage_id, ("energy", stage_id), colour, Qt.PenStyle.SolidLine))
            label = self._link_label(stage_id)
            if label.endswith("(last)"):
                continue   # the last stage settles everything: no link leaves it
            escalation.append((label, ("escalation", stage_id), colour, Qt.PenStyle.SolidLine))
        curves["escalation"] = escalation
        curves["energy"] = energy
        # A curve changes when a bin with samples completes (the curves end with the last complete bin),
        # when the rollup is rebuilt (window, tiers, history), or when its set of curves changes; not when
        # only the clock moves on (a quiet fleet: the time axis scrolls, the curves stay). Equal token,
        # equal curves: the series of the last frame are kept instead of being read again.
        for plot, specs in curves.items():
            token = (self.rollups_built, agg.shown_data if specs else None, tuple(name for name, *_ in specs))
            frame.tokens[plot] = token
            cached = self._tier_series.get(plot)
            if cached is not None and cached[0] == token:
                frame.plots[plot] = cached[1]
                continue
            x = agg.centers()
            series = [Series(name, x, rollup.escalation_rate(member) if group == "escalation"
                             else rollup.values(group, member), colour, style)
                      for name, (group, member), colour, style in specs]
            self._tier_series[plot] = (token, series)
            frame.plots[plot] = series

    # ----- per node: the busiest and the selected, straight from their rings -------------------------------------
    def _per_node(self, frame: Frame, latest: Mapping[str, NodeSample | None], names: dict[str, str]) -> None:
        tel = self.telemetry
        start = frame.start
        # the busiest nodes by latest throughput, plus the selected ones
        busy = {node_id: sum(st.inferences_per_s for st in s.stages if math.isfinite(st.inferences_per_s))
                for node_id, s in latest.items() if s is not None and s.stages}
        chosen = sorted(busy, key=lambda n: -busy[n])[:TOP_NODES]
        for key in self.selected_nodes:
            node = self.fleet.node(key)
            if node is not None and node.node_id and node.node_id in latest and node.node_id not in chosen:
                chosen.append(node.node_id)
        if not chosen:
            chosen = list(latest)[:TOP_NODES]
        colours = {n: theme.SERIES_COLOURS[i % len(theme.SERIES_COLOURS)] for i, n in enumerate(chosen)}
        stage_ids: dict[str, list[str]] = {}
        for node_id, stage_id in tel.stage_keys():
            stage_ids.setdefault(node_id, []).append(stage_id)
        for (node_id, stage_id) in self._history:
            if stage_id and stage_id not in stage_ids.get(node_id, []):
                stage_ids.setdefault(node_id, []).append(stage_id)
        node_cols: dict[str, dict[str, tuple[Array, Array]]] = {}
        stage_cols: dict[tuple[str, str], dict[str, tuple[Array, Array]]] = {}
        for node_id in chosen:
            ring = tel.node_series(node_id)
            hist = self._history.get((node_id, ""), {})
            t = ring.times() if ring is not None and len(ring) else np.zeros(0)
            cols: dict[str, tuple[Array, Array]] = {}
            for column in ("power_watts", "backlog"):
                v = ring.column(column) if ring is not None and len(ring) else np.zeros(0)
                cols[column] = _window(merge(hist.get(column), t, v), start)
            node_cols[node_id] = cols
            for stage_id in stage_ids.get(node_id, []):
                sring = tel.stage_series(node_id, stage_id)
                hist = self._history.get((node_id, stage_id), {})
                t = sring.times() if sring is not None and len(sring) else np.zeros(0)
                cols = {}
                for column in ("inferences_per_s", "escalated_per_s", "latency_p95_ms", "energy_per_inference_j"):
                    if sring is None and column not in hist:
                        continue
                    v = sring.column(column) if sring is not None and len(sring) else np.zeros(0)
                    cols[column] = _window(merge(hist.get(column), t, v), start)
                stage_cols[(node_id, stage_id)] = cols
        grid = Grid(start, frame.end, self._bin_width(chosen))

        def node_stage(column: str, how: str) -> list[Series]:
            out = []
            for node_id in chosen:
                rows = [cols[column] for (nid, _), cols in stage_cols.items() if nid == node_id and column in cols]
                if not rows:
                    continue
                if len(rows) == 1:
                    t, v = rows[0]
                else:
                    t, v = grid.centers, combine([grid.bin_mean(*r) for r in rows], how)
                out.append(Series(names.get(node_id, node_id[:8]), t, v, colours[node_id]))
            return out

        frame.plots["throughput"] = node_stage("inferences_per_s", "sum")
        frame.plots["latency"] = node_stage("latency_p95_ms", "max")
        frame.plots["energy"] = node_stage("energy_per_inference_j", "mean")
        escalation = []
        for node_id in chosen:
            rows = [cols for (nid, _), cols in stage_cols.items()
                    if nid == node_id and "inferences_per_s" in cols and "escalated_per_s" in cols]
            if not rows:
                continue
            inferred = combine([grid.bin_mean(*c["inferences_per_s"]) for c in rows])
            escalated = combine([grid.bin_mean(*c["escalated_per_s"]) for c in rows])
            with np.errstate(all="ignore"):
                rate = np.where(inferred > 0, escalated / inferred, np.where(np.isfinite(inferred), 0.0, np.nan))
            escalation.append(Series(names.get(node_id, node_id[:8]), grid.centers, rate, colours[node_id]))
        frame.plots["escalation"] = escalation
        for plot, column in (("power", "power_watts"), ("backlog", "backlog")):
            frame.plots[plot] = [Series(names.get(n, n[:8]), *node_cols[n][column], colours[n]) for n in chosen
                                 if n in node_cols]

    def _tiles(self, frame: Frame, latest: Mapping[str, NodeSample | None]) -> None:
        all_nodes = self.fleet.nodes()
        online = sum(1 for n in all_nodes if str(n.state) == "online")
        degraded = sum(1 for n in all_nodes if str(n.state) == "degraded")
        offline = sum(1 for n in all_nodes if str(n.state) == "offline")
        text = f"{online} / {len(all_nodes)}"
        if degraded or offline:
            text += f"  ⚠{degraded} ✖{offline}"
        frame.tiles["nodes"] = text
        samples = [s for s in latest.values() if s is not None]
        links: dict[str, list[StageSample]] = {}
        for s in samples:
            for st in s.stages:
                links.setdefault(st.stage_id, []).append(st)
        order = self._link_order(links)
        power = [s.power_watts for s in samples if math.isfinite(s.power_watts)]
        frame.tiles["power"] = (f"{sum(power):,.1f} W" + (" est." if frame.estimate else "")) if power else "—"
        if order:
            first = order[0]   # the entry stage: every input passes it once
            inputs = sum(st.inferences_per_s for st in links[first] if math.isfinite(st.inferences_per_s))
            escalated = sum(st.escalated_per_s for st in links[first] if math.isfinite(st.escalated_per_s))
            frame.tiles["throughput"] = f"{inputs:,.0f} /s"
            frame.tiles["escalation"] = f"{(escalated / inputs * 100) if inputs else 0.0:.1f} %"
            if power and inputs > 0:
                frame.tiles["energy"] = f"{sum(power) / inputs:,.3g} J"
        latency = [st.latency_p95_ms for sts in links.values() for st in sts if math.isfinite(st.latency_p95_ms)]
        frame.tiles["latency"] = f"{max(latency):,.1f} ms" if latency else "—"

    def _link_order(self, links: Mapping[str, object]) -> list[str]:
        """Stage ids with data, in pipeline order first, then the others by name."""
        order = [s.id for s in self.pipeline.stages()] if self.pipeline is not None else []
        known = [s for s in order if s in links]
        return known + sorted(s for s in links if s not in known)

    def _link_label(self, stage_id: str) -> str:
        if self.pipeline is not None:
            stages = [s.id for s in self.pipeline.stages()]
            if stage_id in stages:
                i = stages.index(stage_id)
                return f"{stage_id} → {stages[i + 1]}" if i + 1 < len(stages) else f"{stage_id} (last)"
        return f"{stage_id} ↑"

    # ----- history ---------------------------------------------------------------------------------------------
    def ring_covers(self) -> bool:
        """True when the live rings reach back over the whole window (else the database fills in the rest)."""
        oldest = None
        for node in self.fleet.nodes():
            ring = self.telemetry.node_series(node.node_id) if node.node_id else None
            if ring is not None and len(ring):
                t0 = float(ring.times()[0])
                oldest = t0 if oldest is None else min(oldest, t0)
        return oldest is not None and oldest <= time.time() - self.window_s + 5

    def _maybe_request_history(self, force: bool = False) -> None:
        if self.replaying or self.window_s <= WINDOWS[0][1] or self.ring_covers():
            return
        refresh = max(30.0, self.window_s / 60)
        now = time.monotonic()
        if not force and self._history_for == self.window_s and now - self._history_at < refresh:
            return
        if self._requests:
            return
        self._history_for = self.window_s
        self._history_at = now
        until = int(time.time() * 1000)
        since = until - int(self.window_s * 1000)
        for node in self.fleet.nodes():
            if not node.node_id:
                continue
            stages = {s.stage_id for s in node.stages} | {sid for nid, sid in self.telemetry.stage_keys()
                                                         if nid == node.node_id}
            request = self.telemetry.request_history(node.node_id, "", since, until,
                                                     ("power_watts_avg", "backlog_max"), "1m")
            self._requests[request] = (node.node_id, "", self.window_s)
            for stage_id in stages:
                request = self.telemetry.request_history(node.node_id, stage_id, since, until,
                                                         ("inferences", "escalated", "latency_p95_ms_avg"), "1m")
                self._requests[request] = (node.node_id, stage_id, self.window_s)

    @Slot(int, object)
    def _history_loaded(self, request: int, result: object) -> None:
        meta = self._requests.pop(request, None)
        if meta is None:
            return
        node_id, stage_id, window = meta
        if window == self.window_s and isinstance(result, dict):
            self._history[(node_id, stage_id)] = history_series(result, node=not stage_id)
        if not self._requests:
            if self.clock is not None:
                self.clock.request_frame()
            else:
                self.redraw()

    @Slot(int, str)
    def _history_failed(self, request: int, reason: str) -> None:
        if self._requests.pop(request, None) is not None:
            self.status_message.emit(f"History could not be read: {reason}")

    # ----- export -----------------------------------------------------------------------------------------------
    def view_image(self) -> QImage:
        """The dashboard as shown, as an image."""
        return self.grab().toImage()

    def export_png(self, path: str) -> None:
        """Write the current view as PNG (encoding and writing off the GUI thread)."""
        self.writer.write_image(path, self.view_image())

    def view_csv(self) -> str:
        """The current view's curves as CSV: plot, unit, series, unix_time, local_time, value."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["plot", "unit", "series", "unix_time", "local_time", "value"])
        frame = self.frame or self.compute_frame()
        for spec in PLOTS:
            for s in frame.plots.get(spec.key, []):
                keep = (s.t >= frame.start) & (s.t <= frame.end) & np.isfinite(s.v)
                for t, v in zip(s.t[keep], s.v[keep] * spec.scale, strict=True):
                    writer.writerow([spec.title, spec.unit, s.name, f"{t:.3f}",
                                     datetime.fromtimestamp(t).isoformat(timespec="seconds"), f"{v:.6g}"])
        return out.getvalue()

    def export_csv(self, path: str) -> None:
        """Write the current view's data as CSV (off the GUI thread)."""
        self.writer.write_text(path, self.view_csv())

    @Slot(str)
    def _exported(self, path: str) -> None:
        self.status_message.emit(f"Exported {path}")

    @Slot(str)
    def _export_failed(self, reason: str) -> None:
        self.status_message.emit(f"Export failed: {reason}")


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k at or above `value`."""
    if value <= 0 or not np.isfinite(value):
        return 1.0
    exponent = np.floor(np.log10(value))
    for mantissa in (1.0, 2.0, 2.5, 5.0, 10.0):
        candidate = mantissa * 10.0 ** exponent
        if candidate >= value * (1 - 1e-9):
            return float(candidate)
    return float(10.0 ** (exponent + 1))


def _window(series: tuple[Array, Array], start: float) -> tuple[Array, Array]:
    """The part of a series at or after `start` (one sample before it kept, so the curve reaches the edge)."""
    t, v = series
    if len(t) == 0 or t[0] >= start:
        return t, v
    i = max(0, int(np.searchsorted(t, start)) - 1)
    return t[i:], v[i:]
