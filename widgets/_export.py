"""Writing exports (PNG, CSV) off the GUI thread, on the console model's file executor.

The GUI thread only grabs the image (a QImage, which other threads may encode) or builds the CSV
text; encoding and writing run on `QtConsole.files` (the same single file thread the pipeline model
uses), and the outcome returns through `app.qt.Dispatcher` to `exported` / `export_failed`.
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from app.qt import Dispatcher
from runners._store import write_atomic


def _write_text(path: Path, text: str) -> str:
    write_atomic(path, text.encode("utf-8"), make_parents=False)
    return str(path)


def _write_image(path: Path, image: QImage) -> str:
    tmp = path.with_name(path.name + ".tmp.png")
    if not image.save(str(tmp)):   # PNG, from the suffix
        raise OSError(f"could not encode or write {path}")
    os.replace(tmp, path)
    return str(path)


class ExportWriter(QObject):
    """Writes exports on an executor; `exported(path)` or `export_failed(reason)` follow on the GUI thread."""

    exported = Signal(str)
    export_failed = Signal(str)

    def __init__(self, executor: concurrent.futures.Executor | None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._own = executor is None
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tierdeck-export")
        self._dispatcher = Dispatcher(self)

    def write_text(self, path: str | Path, text: str) -> None:
        """Write text (CSV) to `path` off the GUI thread."""
        self._watch(self.executor.submit(_write_text, Path(path), text))

    def write_image(self, path: str | Path, image: QImage) -> None:
        """Encode and write a PNG off the GUI thread (QImage, not QPixmap, so another thread may use it)."""
        self._watch(self.executor.submit(_write_image, Path(path), QImage(image)))

    def _watch(self, future: concurrent.futures.Future[str]) -> None:
        self._dispatcher.when_done(future, lambda p: self.exported.emit(str(p)),
                                   lambda exc: self.export_failed.emit(f"{type(exc).__name__}: {exc}"))

    def close(self) -> None:
        """Shut down an executor this writer made itself."""
        if self._own:
            self.executor.shutdown(wait=True)
