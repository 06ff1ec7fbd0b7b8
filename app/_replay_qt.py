"""The replay model (QtCore only): Live / Replay mode, the replayed window, its clock, and the events up to it.

The window is read on the database's reader thread (`Database.read`, never the GUI thread) and
arrives through the console's dispatcher. While replaying, nothing of the live path changes: the
core keeps recording telemetry and events into the database and the live models keep filling;
the widgets that show a replay read `view` (app._replay.ReplayTelemetry) and `events` instead,
and go back to the live models on `go_live`.

The replay clock is driven by frames: every FRAME_MS of the frame timer moves the replayed
instant by speed × FRAME_MS of recorded time (1× to 60×). It counts frames, not wall time, so a
busy GUI thread slows a replay down but never makes it skip recorded time.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from app._records import ConsoleEvent
from app._replay import FRAME_MS, MAX_SPEED, MIN_SPEED, ReplayHistory, ReplayTelemetry, load_history
from app.qt import EventLogModel, QtConsole


class ReplayEventModel(EventLogModel):
    """The replayed window's events at or before the replayed instant (same roles as the live event log)."""

    def __init__(self, console: QtConsole) -> None:
        super().__init__(console, capacity=1 << 30)

    def set_events(self, events: tuple[ConsoleEvent, ...]) -> None:
        """Show exactly these events: appended when they extend what is shown, else replaced."""
        rows = self._rows
        if len(events) >= len(rows) and tuple(events[:len(rows)]) == tuple(rows):
            for event in events[len(rows):]:
                self._add(event)
            return
        self.beginResetModel()
        self._rows = list(events)
        self.endResetModel()

    def clear(self) -> None:
        """No events."""
        self.set_events(())


class ReplayModel(QObject):
    """Live or Replay; in replay, the window read from the database, the replayed instant, play/pause and speed."""

    mode_changed = Signal(bool)          # True: replaying (the views show history), False: live
    loading_changed = Signal(bool)
    load_failed = Signal(str)            # why the asked window is not shown: unreadable, or nothing recorded in it
    window_loaded = Signal(object)       # ReplayHistory
    position_changed = Signal(object)    # the replayed instant, Unix ms (int; past 32 bits)
    moved = Signal(object, bool)         # node ids whose rings gained rows, rebuilt (moved backwards / new window)
    playing_changed = Signal(bool)
    speed_changed = Signal(float)

    def __init__(self, console: QtConsole) -> None:
        super().__init__(console)
        self._console = console
        self.events = ReplayEventModel(console)
        self.history: ReplayHistory | None = None
        self.view: ReplayTelemetry | None = None
        self.speed = 1.0
        self.playing = False
        self.loading = False
        self.frames = 0
        self._request = 0
        self._timer = QTimer(self)
        self._timer.setInterval(FRAME_MS)
        self._timer.timeout.connect(self.tick)

    # ----- state ---------------------------------------------------------------------------------------------
    @property
    def replaying(self) -> bool:
        """True while the views show history."""
        return self.view is not None

    @property
    def position_ms(self) -> int:
        """The replayed instant (Unix ms); 0 when live."""
        return self.view.position_ms if self.view is not None else 0

    # ----- intents -------------------------------------------------------------------------------------------
    def open_last(self, seconds: float, now_ms: int | None = None) -> None:
        """Replay the last `seconds` (from its start)."""
        until = int(time.time() * 1000) if now_ms is None else now_ms
        self.open_window(until - int(seconds * 1000), until)

    def open_window(self, since_ms: int, until_ms: int, start_ms: int | None = None) -> None:
        """Read the window [since_ms, until_ms] on the reader thread; replay it from `start_ms` (default: its start,
        or a minute into the record when it began in a gap of the record: `ReplayHistory.open_ms`); nothing
        recorded: `load_failed` says so and the view stays as it was."""
        self._request += 1
        request = self._request
        retention = self._console.core.db.retention.raw_s
        future = self._console.core.db.read(lambda db: load_history(db, since_ms, until_ms, retention))
        self._set_loading(True)
        self._console.dispatcher.when_done(future, lambda h: self._loaded(request, h, start_ms),
                                           lambda exc: self._failed(request, exc))

    def _loaded(self, request: int, history: ReplayHistory, start_ms: int | None) -> None:
        if request != self._request:
            return   # a newer window was asked for meanwhile
        self._set_loading(False)
        if history.empty:
            self.load_failed.emit(history.empty_note)
            return
        was = self.replaying
        self.history = history
        self.view = ReplayTelemetry(history)
        self.view.seek(history.open_ms if start_ms is None else start_ms)
        self.events.set_events(history.events_until(self.view.position_ms))
        if not was:
            self.mode_changed.emit(True)
        self.window_loaded.emit(history)
        self.moved.emit(sorted(history.nodes), True)
        self.position_changed.emit(self.view.position_ms)

    def _failed(self, request: int, exc: BaseException) -> None:
        if request != self._request:
            return
        self._set_loading(False)
        self.load_failed.emit(f"history could not be read: {exc}")

    def _set_loading(self, loading: bool) -> None:
        if loading != self.loading:
            self.loading = loading
            self.loading_changed.emit(loading)

    def seek(self, t_ms: int) -> None:
        """Show the window at `t_ms` (clamped to it)."""
        view = self.view
        if view is None:
            return
        before = view.position_ms
        changed, rebuilt = view.seek(t_ms)
        if view.position_ms == before and not rebuilt:
            return
        assert self.history is not None
        self.events.set_events(self.history.events_until(view.position_ms))
        self.moved.emit(changed, rebuilt)
        self.position_changed.emit(view.position_ms)

    def step(self, seconds: float) -> None:
        """Move by `seconds` of recorded time (negative: back)."""
        self.seek(self.position_ms + int(seconds * 1000))

    def play(self) -> None:
        """Play from the replayed instant (from the window's start when at its end)."""
        if self.view is None or self.playing:
            return
        if self.history is not None and self.view.position_ms >= self.history.until_ms:
            self.seek(self.history.since_ms)
        self.playing = True
        self._timer.start()
        self.playing_changed.emit(True)

    def pause(self) -> None:
        """Stop the replay clock where it is."""
        if not self.playing:
            return
        self.playing = False
        self._timer.stop()
        self.playing_changed.emit(False)

    def toggle_play(self) -> None:
        """Play or pause."""
        if self.playing:
            self.pause()
        else:
            self.play()

    def set_speed(self, speed: float) -> None:
        """Replay speed, 1× to 60× recorded time per frame time."""
        speed = min(MAX_SPEED, max(MIN_SPEED, float(speed)))
        if speed != self.speed:
            self.speed = speed
            self.speed_changed.emit(speed)

    @Slot()
    def tick(self) -> None:
        """One frame of playing: advance speed × FRAME_MS of recorded time; pause at the window's end."""
        if not self.playing or self.view is None or self.history is None:
            return
        self.frames += 1
        self.seek(self.view.position_ms + round(self.speed * FRAME_MS))
        if self.view is not None and self.view.position_ms >= self.history.until_ms:
            self.pause()

    def go_live(self) -> None:
        """Back to live: stop the replay and let the views show the live models again."""
        self._request += 1   # a window still loading is dropped
        self._set_loading(False)
        self.pause()
        if self.view is None:
            return
        self.view = None
        self.history = None
        self.events.clear()
        self.mode_changed.emit(False)
