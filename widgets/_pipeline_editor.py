"""The pipeline tab: the stage palette strip, the canvas with its problem banner, and the what-if plot beside it.

While the other views replay history (app._replay_qt.ReplayModel), this tab stays live: a green banner says
so and names the replayed instant, and every node card carries a LIVE badge — so live figures are never
read as the replayed ones next to them.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSplitter, QVBoxLayout, QWidget

from app._problem_words import explain_all
from app._replay_qt import ReplayModel
from app.core import ModelCard
from app.qt import FleetModel, PipelineModel, TelemetryModel
from widgets import _theme as theme
from widgets._canvas import PipelineCanvas
from widgets._clock import FrameClock
from widgets._palette import StagePalette
from widgets._problem_list import ProblemList
from widgets._whatif import PolicyPusher, WhatIfPanel


class PipelineEditor(QWidget):
    """Palette strip on top; canvas and what-if side by side below; the pipeline's problems in a banner."""

    def __init__(self, pipeline: PipelineModel, fleet: FleetModel, telemetry: TelemetryModel,
                 clock: FrameClock | None = None, pusher: PolicyPusher | None = None,
                 parent: QWidget | None = None, replay: ReplayModel | None = None) -> None:
        super().__init__(parent)
        self.pipeline = pipeline
        self.replay = replay
        self.stage_palette = StagePalette(self)
        self.stage_palette.setObjectName("palettePane")
        self.import_button = QPushButton("Import ONNX &model…", self)
        self.import_button.setToolTip("Read an ONNX file's inputs, outputs, size and opset into the palette (Ctrl+I)")
        palette_label = QLabel("<b>Stages</b><br>drag onto a<br>lane or a node", self)
        palette_label.setProperty("muted", True)
        self.canvas = PipelineCanvas(pipeline, fleet, self.stage_palette, telemetry, clock, self)
        self.whatif = WhatIfPanel(pipeline, telemetry, clock, pusher, self, fleet=fleet)
        self.problems = ProblemList(self)
        self.live_banner = QLabel("", self)
        self.live_banner.setObjectName("liveBanner")
        self.live_banner.setStyleSheet(f"QLabel#liveBanner {{ background: {theme.OK}; color: #111; font-weight: bold;"
                                       " padding: 3px 8px; border-radius: 3px; }")
        self.live_banner.setWordWrap(True)
        self.live_banner.setAccessibleName("Live banner")
        self.live_banner.setVisible(False)
        self.splitter = QSplitter(Qt.Orientation.Horizontal, self)
        self.splitter.addWidget(self.canvas)
        self.splitter.addWidget(self.whatif)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 0)
        self.splitter.setSizes([820, 260])
        self.splitter.setChildrenCollapsible(True)

        strip = QHBoxLayout()
        strip.setContentsMargins(0, 0, 0, 0)
        strip.addWidget(palette_label)
        strip.addWidget(self.stage_palette, 1)
        strip.addWidget(self.import_button, 0, Qt.AlignmentFlag.AlignVCenter)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        layout.addLayout(strip)
        layout.addWidget(self.problems)
        layout.addWidget(self.live_banner)
        layout.addWidget(self.splitter, 1)
        self.stage_palette.setFixedHeight(self.stage_palette.fontMetrics().height() * 2 + 34)

        self.canvas.link_selected.connect(self.whatif.set_link)
        self.whatif.threshold_chosen.connect(self._threshold_chosen)
        pipeline.problems_changed.connect(self._problems)
        self.canvas.warnings_changed.connect(self._problems)
        self.canvas.drift_changed.connect(self._problems)
        self.problems.stage_clicked.connect(self._select)
        pipeline.model_imported.connect(self._imported)
        pipeline.pipeline_reset.connect(self._reset)
        if replay is not None:
            replay.mode_changed.connect(self._replay_moved)
            replay.position_changed.connect(self._replay_moved)

    @Slot()
    def _replay_moved(self) -> None:
        """Replaying: the banner names the replayed instant and the cards say LIVE; live: neither."""
        view = self.replay.view if self.replay is not None else None
        self.canvas.set_live_badges(view is not None)
        self.live_banner.setVisible(view is not None)
        if view is not None:
            at = datetime.fromtimestamp(view.position_ms / 1000)
            text = (f"LIVE · node cards, escalation arrows and the what-if show the fleet now, not the replayed "
                    f"{at:%H:%M:%S} (the dashboard, fleet panel and event log replay it)")
            if self.live_banner.text() != text:
                self.live_banner.setText(text)

    @Slot(object)
    def _imported(self, card: ModelCard) -> None:
        import resources.models

        bundled = Path(card.path).resolve().parent == Path(resources.models.__file__).resolve().parent
        self.stage_palette.add_card(card, bundled=bundled)

    @Slot(str, float)
    def _threshold_chosen(self, stage_id: str, value: float) -> None:
        self.canvas.set_threshold(stage_id, value, getattr(self.whatif, "field", None))

    @Slot(object)
    def _problems(self, problems: object = None) -> None:
        advice = explain_all(list(self.pipeline.problems()), self.pipeline.document.stage_ids())
        drifted = [(sid, f"drift on '{sid}': {d.words} — "
                         + ("Ctrl+Alt+L takes the live values into the file, " if d.live_rule is not None else "")
                         + "Ctrl+Alt+D re-deploys the file") for sid, d in self.canvas.drifts.items()]
        self.problems.show_items(advice, drifted + self.canvas.warnings)

    @Slot(str)
    def _select(self, stage_id: str) -> None:
        self.canvas.relayout()
        self.canvas.select_stage(stage_id)
        self.canvas.setFocus(Qt.FocusReason.OtherFocusReason)

    @Slot()
    def _reset(self) -> None:
        self._problems(self.pipeline.problems())
