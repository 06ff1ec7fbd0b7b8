"""The frame clock: one timer drives every live view, so plots repaint at display rate, never per sample.

`frame_ticked` fires at most `hz` times a second, and only when telemetry arrived since the last
frame (or a view asked for a frame with `request_frame`): a quiet fleet costs no repaints, and the
frame timer itself stops after a tick with nothing new (no wake-ups at `hz`), restarting with the
next sample or request.
`second_ticked` fires once a second for slow text ("offline for 2 min") and for scrolling the time
axis while no data arrives. Frame times (the slots plus, when `measure` is set, the paint that
follows) are kept for the benchmark.
"""

from __future__ import annotations

import time
from collections import deque

from PySide6.QtCore import QCoreApplication, QEvent, QObject, Qt, QTimer, Signal, Slot

from app.qt import TelemetryModel


class FrameClock(QObject):
    """Ticks live views at `hz` when there is something new to show; once a second otherwise."""

    frame_ticked = Signal()
    second_ticked = Signal()

    def __init__(self, telemetry: TelemetryModel | None = None, hz: float = 15.0,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.hz = hz
        self.measure = False
        self.frame_times_ms: deque[float] = deque(maxlen=100_000)
        self.frame_cpu_ms: deque[float] = deque(maxlen=100_000)    # the GUI thread's CPU time of each frame
        self.frames = 0
        self._dirty = False
        self._started = False
        self._timer = QTimer(self)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(max(1, round(1000 / hz)))
        self._timer.timeout.connect(self._tick)
        self._slow = QTimer(self)
        self._slow.setInterval(1000)
        self._slow.timeout.connect(self._second)
        if telemetry is not None:
            telemetry.samples_received.connect(self._samples)

    def start(self) -> None:
        """Start ticking."""
        self._started = True
        self._timer.start()
        self._slow.start()

    def stop(self) -> None:
        """Stop ticking."""
        self._started = False
        self._timer.stop()
        self._slow.stop()

    @property
    def running(self) -> bool:
        """True while started (the frame timer itself may be resting: see `ticking`)."""
        return self._started

    @property
    def ticking(self) -> bool:
        """True while the frame timer runs: something new arrived since the last frame, or just before it."""
        return self._timer.isActive()

    def request_frame(self) -> None:
        """Ask for a frame at the next tick (a view changed its window, data came from the database...)."""
        self._dirty = True
        self._wake()

    @Slot(object)
    def _samples(self, _node_ids: object) -> None:
        self._dirty = True
        self._wake()

    def _wake(self) -> None:
        # A resting timer restarts with its full interval: frames stay at most `hz` a second.
        if self._started and not self._timer.isActive():
            self._timer.start()

    @Slot()
    def _tick(self) -> None:
        if not self._dirty:
            self._timer.stop()   # nothing new since the last frame: rest until the next sample or request
            return
        self._dirty = False
        self.frame_now()

    def frame_now(self) -> float:
        """Run one frame at once; returns its duration in ms (slots, plus the paint when `measure` is set)."""
        if self.measure:
            # Deliver what was already queued (telemetry batches...) first: not part of this frame.
            QCoreApplication.sendPostedEvents(None, QEvent.Type.MetaCall)
        start, cpu = time.perf_counter(), time.thread_time()
        self.frame_ticked.emit()
        if self.measure:
            # Deliver the scene updates and the widget repaints the slots caused, so the frame time
            # includes the paint (offscreen, the raster backing store paints synchronously here).
            for _ in range(3):
                QCoreApplication.sendPostedEvents(None, QEvent.Type.MetaCall)
                QCoreApplication.sendPostedEvents(None, QEvent.Type.UpdateRequest)
        elapsed = (time.perf_counter() - start) * 1000.0
        self.frames += 1
        self.frame_times_ms.append(elapsed)
        self.frame_cpu_ms.append((time.thread_time() - cpu) * 1000.0)
        return elapsed

    @Slot()
    def _second(self) -> None:
        self.second_ticked.emit()
