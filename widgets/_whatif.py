"""What-if: for a selected escalation link, escalation rate against threshold, from the reported score histogram.

The upstream stage's agents report, per telemetry interval, a 20-bin histogram over [0, 1] of the
score its rule thresholds (`score_kind`: "confidence" = top-class probability, "score" = the row's
maximum output). Summed over the nodes running the stage and over the chosen window, it gives the
escalation fraction at any threshold t:

* `confidence_below: t` escalates rows whose confidence is below t → the mass of the bins below t
  (the bin holding t counted in proportion, i.e. scores uniform within a bin);
* `score_above: t` escalates rows scoring above t → the mass above t.

`class_in` escalations do not depend on a threshold; with both, the curve is a lower bound and
says so. The current threshold is marked; a second, draggable line is the proposal, with what it
would cost in escalations per second at the current input rate. "Set in pipeline" is an undoable
SetRule on the canvas; "Push live" goes through the `PolicyPusher` seam (UpdatePolicy on the
nodes, no redeploy) when the console has one, else through a deployment.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app._miss import ShadowCounts, percent, predict_misses
from app.pipeline_file import Rule
from app.qt import Dispatcher, FleetModel, PipelineModel, TelemetryModel
from widgets import _theme as theme
from widgets._canvas import rule_text, threshold_of
from widgets._clock import FrameClock

BINS = 20
# (stage id, rule) -> per-node results: {node name: "" on success, else the reason}
PolicyPusher = Callable[[str, Rule], "concurrent.futures.Future[dict[str, str]]"]
WINDOWS = (("last 1 min", 60.0), ("last 10 min", 600.0), ("everything buffered", 0.0))


def escalation_curve(hist: npt.ArrayLike, kind: str, thresholds: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Escalated fraction at each threshold: mass below t for confidence_below, above t for score_above."""
    h = np.asarray(hist, dtype=np.float64)
    total = h.sum()
    t = np.clip(np.asarray(thresholds, dtype=np.float64), 0.0, 1.0)
    if total <= 0:
        return np.zeros_like(t)
    edges = np.linspace(0.0, 1.0, len(h) + 1)
    cdf = np.concatenate([[0.0], np.cumsum(h)]) / total     # mass below each edge
    below = np.interp(t, edges, cdf)                          # uniform within a bin
    return below if kind == "confidence_below" else 1.0 - below


class WhatIfPanel(QWidget):
    """Escalation rate vs threshold for one link, current threshold marked, a draggable proposal."""

    threshold_chosen = Signal(str, float)     # stage id, value: set it in the pipeline (undoable)
    deploy_requested = Signal()               # push through a deployment (no live seam)
    status_message = Signal(str)

    def __init__(self, pipeline: PipelineModel, telemetry: TelemetryModel, clock: FrameClock | None = None,
                 pusher: PolicyPusher | None = None, parent: QWidget | None = None,
                 fleet: FleetModel | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("whatIfPane")
        self.pipeline = pipeline
        self.fleet = fleet
        self.confirm_box: QMessageBox | None = None
        self.telemetry = telemetry
        self.pusher = pusher
        self.stage_id = ""
        self.hist = np.zeros(BINS)
        self.shadow: ShadowCounts | None = None
        self.rows = 0.0
        self.rate_in = 0.0
        self._dispatcher = Dispatcher(self)
        self._syncing = False
        self.field = "confidence_below"
        theme.configure_pyqtgraph()

        self.title = QLabel("What-if: select an escalation link", self)
        self.title.setFont(theme.scaled_font(self.font(), 1.15, bold=True))
        self.title.setWordWrap(True)
        self.score_window = QComboBox(self)
        self.score_window.setAccessibleName("Score window")
        for title, _ in WINDOWS:
            self.score_window.addItem(title)
        self.plot = pg.PlotWidget(self)
        self.plot.setMinimumHeight(130)   # leaves room for both readouts on a laptop screen
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.setMenuEnabled(False)
        item = self.plot.getPlotItem()
        item.setLabel("bottom", "threshold")
        item.setLabel("left", "escalated", units="%")
        item.showGrid(x=True, y=True, alpha=0.25)
        item.setXRange(0, 1, padding=0.02)
        item.setYRange(0, 100, padding=0.02)
        self.curve = self.plot.plot([], [], pen=pg.mkPen(theme.ACCENT, width=2))
        self.bars = pg.BarGraphItem(x0=[], width=[], height=[], brush=pg.mkBrush(113, 183, 255, 50), pen=None)
        self.plot.addItem(self.bars)
        self.current_line = pg.InfiniteLine(angle=90, movable=False,
                                            pen=pg.mkPen(theme.TEXT, width=2, style=Qt.PenStyle.DashLine),
                                            label="now {value:.2f}",
                                            labelOpts={"position": 0.92, "color": theme.TEXT, "fill": theme.BG})
        self.proposal_line = pg.InfiniteLine(angle=90, movable=True, bounds=(0.0, 1.0),
                                             pen=pg.mkPen(theme.WARN, width=2),
                                             hoverPen=pg.mkPen("#ffffff", width=3),
                                             label="new {value:.2f}",
                                             labelOpts={"position": 0.78, "color": theme.WARN, "fill": theme.BG})
        self.plot.addItem(self.current_line)
        self.plot.addItem(self.proposal_line)
        self.readout = QLabel(self)
        self.readout.setWordWrap(True)
        self.readout.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # What the shadow sample says about misses (app/_miss.py): now and at the proposed threshold.
        self.misses = QLabel(self)
        self.misses.setWordWrap(True)
        self.misses.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.misses.setStyleSheet(f"color: {theme.WARN}")
        self.misses.setAccessibleName("Estimated misses")
        self.proposal = QDoubleSpinBox(self)
        self.proposal.setDecimals(3)
        self.proposal.setSingleStep(0.01)
        self.proposal.setRange(0.0, 1.0)
        self.proposal.setAccessibleName("Proposed threshold")
        self.proposal.setKeyboardTracking(True)   # the curve's marker follows every keystroke
        self.set_button = QPushButton("&Set in pipeline", self)
        self.set_button.setToolTip("Change the rule on the canvas (undoable); deploy to make it run")
        self.push_button = QPushButton("Push &live…", self)
        self._explain_push()

        controls = QHBoxLayout()
        proposal_label = QLabel("&New threshold:", self)
        proposal_label.setBuddy(self.proposal)
        controls.addWidget(proposal_label)
        controls.addWidget(self.proposal)
        controls.addStretch(1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.set_button)
        buttons.addWidget(self.push_button)
        top = QHBoxLayout()
        top.addWidget(QLabel("Scores from", self))
        top.addWidget(self.score_window, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.title)
        layout.addLayout(top)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.readout)
        layout.addWidget(self.misses)
        layout.addLayout(controls)
        layout.addLayout(buttons)

        self.proposal_line.sigPositionChanged.connect(self._line_moved)
        self.proposal.valueChanged.connect(self._spin_changed)
        self.set_button.clicked.connect(self._set_in_pipeline)
        self.push_button.clicked.connect(self._push_live)
        self.score_window.currentIndexChanged.connect(self.refresh)
        pipeline.stage_changed.connect(self._stage_changed)
        pipeline.stage_removed.connect(self._stage_removed)
        pipeline.pipeline_reset.connect(self._reset)
        if clock is not None:
            clock.second_ticked.connect(self._tick)
        self.set_link("")

    def _explain_push(self) -> None:
        if self.pusher is not None:
            self.push_button.setToolTip("Send the new threshold to every node running this stage now (UpdatePolicy, "
                                        "no redeploy); the pipeline gets the same change")
        else:
            self.push_button.setToolTip("This console cannot update a policy live (no UpdatePolicy call in the core):"
                                        " the threshold is set in the pipeline and the deploy dialog opens")

    # ----- selection -----------------------------------------------------------------------------------
    @Slot(str)
    def set_link(self, stage_id: str) -> None:
        """Show the link leaving `stage_id` ('' clears)."""
        self.stage_id = stage_id
        enabled = bool(stage_id)
        for w in (self.proposal, self.set_button, self.push_button, self.proposal_line):
            w.setEnabled(enabled) if hasattr(w, "setEnabled") else None
        if not stage_id:
            self.title.setText("What-if: select an escalation link (click an arrow, or a stage and Tab)")
            self.readout.setText("")
            self.misses.setText("")
            self.curve.setData([], [])
            self.bars.setOpts(x0=[], width=[], height=[])
            self.current_line.setVisible(False)
            self.proposal_line.setVisible(False)
            return
        rule = self._rule()
        field, value = threshold_of(rule) if rule is not None else ("confidence_below", None)
        self.field = field
        self.current_line.setVisible(value is not None)
        self.proposal_line.setVisible(True)
        self.current_line.setValue(value if value is not None else 0.0)
        self._set_proposal(value if value is not None else 0.5)
        self.refresh()

    def _rule(self) -> Rule | None:
        try:
            return self.pipeline.stage(self.stage_id).rule
        except KeyError:
            return None

    @Slot(str)
    def _stage_changed(self, stage_id: str) -> None:
        if stage_id == self.stage_id:
            rule = self._rule()
            if rule is not None:
                field, value = threshold_of(rule)
                self.field = field
                self.current_line.setVisible(value is not None)
                if value is not None:
                    self.current_line.setValue(value)
            self.refresh()

    @Slot(int, str)
    def _stage_removed(self, _index: int, stage_id: str) -> None:
        if stage_id == self.stage_id:
            self.set_link("")

    @Slot()
    def _reset(self) -> None:
        self.set_link("")

    # ----- data ------------------------------------------------------------------------------------------
    @Slot()
    def _tick(self) -> None:
        if self.stage_id and self.isVisible():
            self.refresh()

    @Slot()
    def refresh(self) -> None:
        """Re-sum the histograms of the nodes running the stage and redraw."""
        if not self.stage_id:
            return
        seconds = WINDOWS[max(0, self.score_window.currentIndex())][1]
        since = time.time() - seconds if seconds else None
        hist = np.zeros(BINS)
        rate_in = 0.0
        nodes = 0
        for node_id, sid in self.telemetry.stage_keys():
            if sid != self.stage_id:
                continue
            h = self.telemetry.score_histogram(node_id, sid, since)
            if len(h) == BINS:
                hist += h
            ring = self.telemetry.stage_series(node_id, sid)
            if ring is not None and len(ring):
                rate_in += ring.last("inferences_per_s") or 0.0
            nodes += 1
        self.hist, self.rows, self.rate_in = hist, float(hist.sum()), rate_in
        self.shadow = self.telemetry.shadow_counts(self.stage_id)
        rule = self._rule()
        kind = getattr(self, "field", "confidence_below")
        xs = np.linspace(0.0, 1.0, 201)
        ys = escalation_curve(hist, kind, xs) * 100.0
        if self.rows > 0:
            self.curve.setData(xs, ys)
            peak = hist.max() or 1.0
            self.bars.setOpts(x0=np.linspace(0, 1, BINS, endpoint=False), width=np.full(BINS, 1.0 / BINS),
                              height=hist / peak * 100.0)
        else:
            self.curve.setData([], [])
            self.bars.setOpts(x0=[], width=[], height=[])
        name = "confidence" if kind == "confidence_below" else "score"
        title = f"What-if: {self.stage_id} → next, {rule_text(rule) if rule is not None else ''}"
        self.title.setText(title)
        if nodes == 0:
            self.readout.setText("No telemetry from this stage yet: deploy it and let inputs flow; the nodes report "
                                 f"a histogram of the {name} with every sample.")
        self._update_readout()

    def escalation_at(self, threshold: float) -> float:
        """Escalated fraction at a threshold, from the histogram shown."""
        return float(escalation_curve(self.hist, getattr(self, "field", "confidence_below"), [threshold])[0])

    def _update_readout(self) -> None:
        if not self.stage_id or self.rows <= 0:
            return
        rule = self._rule()
        _, now_value = threshold_of(rule) if rule is not None else ("", None)
        new = self.proposal.value()
        new_frac = self.escalation_at(new)
        parts = []
        caveat = ""
        if rule is not None and rule.class_in:
            caveat = (" Rows of class " + "/".join(rule.class_in) + " escalate at any threshold: the real rate is at "
                      "least this.")
        if now_value is not None:
            now_frac = self.escalation_at(now_value)
            parts.append(f"Now {now_value:.2f}: {now_frac * 100:.1f} % escalate (≈ {now_frac * self.rate_in:,.1f}/s).")
            delta = (new_frac - now_frac) * 100
            parts.append(f"At {new:.2f}: {new_frac * 100:.1f} % ({delta:+.1f} pts, ≈ {new_frac * self.rate_in:,.1f}/s"
                         f" to the next tier).")
        else:
            parts.append(f"At {new:.2f}: {new_frac * 100:.1f} % would escalate (≈ {new_frac * self.rate_in:,.1f}/s).")
        parts.append(f"From {self.rows:,.0f} scored rows.{caveat}")
        self.readout.setText(" ".join(parts))
        self.misses.setText(self.miss_text(now_value, new))

    def miss_text(self, now_value: float | None, new: float) -> str:
        """What the shadow sample says about misses now and at the proposed threshold, with 95 % intervals."""
        counts = self.shadow
        if counts is None or not self.stage_id:
            return ""
        if not counts.answered:
            return ("Misses: no shadow rows answered yet on this link"
                    + (f" (shadow rate {counts.rate * 100:g} %)" if counts.rate else " (shadow sampling is off)") + ".")
        current = now_value if now_value is not None else new
        settled_now = 1.0 - self.escalation_at(current)
        p = predict_misses(counts, self.field, current, new, settled_now)
        if p is None:
            return ""
        sources = f"{p.shadow_rows:,} shadow rows" + (f", {p.escalated_rows:,} escalated answers"
                                                       if p.escalated_rows else "")
        text = (f"Missed (est., of all inputs): now {percent(p.now)} "
                f"({percent(p.now_low).removesuffix(' %')}–{percent(p.now_high)})")
        if abs(new - current) > 1e-9:
            text += (f"; at {new:.2f}: {percent(p.new)} ({percent(p.new_low).removesuffix(' %')}–"
                     f"{percent(p.new_high)}), {(p.new - p.now) * 100:+.2f} pts")
            if p.extrapolated:
                text += " (no answers yet for the rows it would newly settle: at least this)"
        return f"{text}. From {sources}."

    # ----- proposal ---------------------------------------------------------------------------------------
    def _set_proposal(self, value: float) -> None:
        if self._syncing:
            return
        self._syncing = True
        try:
            self.proposal.setValue(value)
            self.proposal_line.setValue(value)   # its label follows its signals: never block them
        finally:
            self._syncing = False
        self._update_readout()

    @Slot(object)
    def _line_moved(self, line: object) -> None:
        self._set_proposal(round(float(self.proposal_line.value()), 3))

    @Slot(float)
    def _spin_changed(self, value: float) -> None:
        self._set_proposal(value)

    @Slot()
    def _set_in_pipeline(self) -> None:
        if self.stage_id:
            self.threshold_chosen.emit(self.stage_id, float(self.proposal.value()))

    def push_targets(self, value: float) -> list[str]:
        """'edge-1 (edge): confidence < 0.80 → 0.950' for every node running the selected stage."""
        if self.fleet is None:
            return []
        index = 2 if self.field == "confidence_below" else 4
        words = "confidence <" if self.field == "confidence_below" else "score >"
        lines = []
        for node in self.fleet.nodes():
            running = node.stage(self.stage_id)
            if running is None:
                continue
            old = running.rule_values[index] if len(running.rule_values) > index else None
            was = f"{words} {old:.3f}" if isinstance(old, float) else f"{running.rule or 'no threshold'}"
            lines.append(f"{node.name} ({node.tier}): {was} → {value:.3f}")
        return lines

    @Slot()
    def _push_live(self) -> None:
        """Ask first (which nodes, old → new), then push; with no live seam, deploy instead."""
        if not self.stage_id:
            return
        value = float(self.proposal.value())
        if self.pusher is None:
            self.threshold_chosen.emit(self.stage_id, value)
            self.status_message.emit("No live policy update in this console: deploy to apply the new threshold")
            self.deploy_requested.emit()
            return
        targets = self.push_targets(value)
        where = (f"on {len(targets)} running node{'s' if len(targets) != 1 else ''}" if targets else
                 "on every node running it (the console knows none yet)")
        box = QMessageBox(QMessageBox.Icon.Question, "Push threshold live",
                          f"Change the threshold of {self.stage_id} to {value:.3f} {where} now, without a "
                          "deployment?\n\n" + "\n".join(targets)
                          + "\n\nThe pipeline on the canvas takes the same value; save it to keep the file in step.",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel, self)
        box.button(QMessageBox.StandardButton.Yes).setText("Push live")
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.setAccessibleName("Push threshold live")
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(lambda result, v=value: self._push_answered(result, v))
        self.confirm_box = box
        box.open()

    def _push_answered(self, result: int, value: float) -> None:
        self.confirm_box = None
        if result != QMessageBox.StandardButton.Yes:
            self.status_message.emit("Nothing pushed")
            self.proposal.setFocus()
            return
        self.threshold_chosen.emit(self.stage_id, value)
        rule = self._rule()
        if rule is None:
            return
        self.push_button.setEnabled(False)
        self.status_message.emit(f"Pushing threshold {value:.3f} of {self.stage_id} to its nodes…")
        self._dispatcher.when_done(self.pusher(self.stage_id, rule), self._pushed, self._push_failed)
        self.proposal.setFocus()

    def _pushed(self, results: object) -> None:
        self.push_button.setEnabled(True)
        failed = {k: v for k, v in dict(results).items() if v}  # type: ignore[call-overload]
        if failed:
            self.status_message.emit("Live update failed on " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
        else:
            self.status_message.emit(f"Threshold of {self.stage_id} updated live on {len(dict(results))} node(s)")  # type: ignore[call-overload]

    def _push_failed(self, exc: BaseException) -> None:
        self.push_button.setEnabled(True)
        self.status_message.emit(f"Live update failed: {exc}")
