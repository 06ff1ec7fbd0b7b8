"""Results of the core's concurrent futures, delivered to the GUI thread through a queued signal and a bound slot.

The core's intents (`add_address`, `forget`, the enrolment seam...) return concurrent futures that
complete on the I/O loop thread. `FutureBridge.watch(future, on_result, on_error)` re-emits the
outcome through a queued signal to this object's bound `@Slot` (never a receiver-less lambda:
PySide6 >= 6.8 segfaulted on those, PYSIDE-3124), which then calls the GUI-thread callbacks.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal, Slot

log = logging.getLogger(f"tierdeck.{__name__}")


class FutureBridge(QObject):
    """Calls GUI-thread callbacks when concurrent futures finish on other threads."""

    future_done = Signal(int, bool, object)   # ticket, ok, result or exception

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._tickets = itertools.count(1)
        self._pending: dict[int, tuple[Callable[[Any], object], Callable[[BaseException], object]]] = {}
        self.future_done.connect(self._deliver, Qt.ConnectionType.QueuedConnection)

    def watch(self, future: concurrent.futures.Future[Any], on_result: Callable[[Any], object],
              on_error: Callable[[BaseException], object]) -> int:
        """Call `on_result(value)` or `on_error(exc)` on this object's thread when `future` finishes."""
        ticket = next(self._tickets)
        self._pending[ticket] = (on_result, on_error)

        def done(f: concurrent.futures.Future[Any]) -> None:
            if f.cancelled():
                self.future_done.emit(ticket, False, concurrent.futures.CancelledError())
                return
            exc = f.exception()
            self.future_done.emit(ticket, exc is None, f.result() if exc is None else exc)

        future.add_done_callback(done)
        return ticket

    @Slot(int, bool, object)
    def _deliver(self, ticket: int, ok: bool, value: object) -> None:
        callbacks = self._pending.pop(ticket, None)
        if callbacks is None:
            return
        try:
            if ok:
                callbacks[0](value)
            else:
                callbacks[1](value)  # type: ignore[arg-type]
        except Exception:
            log.exception("future callback failed")
