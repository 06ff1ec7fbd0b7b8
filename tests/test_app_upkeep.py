"""Folded helpers: one atomic write, one future-to-GUI bridge; failures that used to pass silently are logged."""

from __future__ import annotations

import concurrent.futures
import logging
import os
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot
from test_app_support import write_pipeline

import app._document
import app._fit
from app._deployer import requirements_for
from app._document import open_document, save_document
from app.pipeline_file import load_pipeline, save_pipeline
from app.qt import Dispatcher


def _refuse_rename(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: str | Path, dst: str | Path) -> None:
        raise OSError("disk went away")
    monkeypatch.setattr(os, "replace", refuse)


def test_saving_a_pipeline_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_pipeline(tmp_path)
    pipeline = load_pipeline(path)
    before = path.read_text()
    _refuse_rename(monkeypatch)
    with pytest.raises(OSError):
        save_pipeline(pipeline, path)
    with pytest.raises(OSError):
        save_document({"format": "tierdeck.pipeline", "version": 1, "name": "x", "stages": []}, path)
    assert path.read_text() == before, "a failed save leaves the old file whole"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "and no temporary file behind"
    monkeypatch.undo()
    save_pipeline(pipeline, path)
    assert load_pipeline(path).stages == pipeline.stages


def test_a_model_card_that_cannot_be_read_is_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = write_pipeline(tmp_path)

    def unreadable(model: Path | str) -> None:
        raise ValueError("truncated protobuf")

    monkeypatch.setattr(app._document, "read_model_card", unreadable)
    monkeypatch.setattr(app._fit, "read_model_card", unreadable)
    with caplog.at_level(logging.WARNING, logger="tierdeck"):
        _, cards = open_document(path)
        requirements = requirements_for(load_pipeline(path))
    assert cards == {}
    assert set(requirements) == {"detector", "classifier", "heavy"}, "the file size stands in"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("no model card for stage" in m and "truncated protobuf" in m for m in messages) == 3
    assert sum("uses the file size only" in m for m in messages) == 3


def test_the_dispatcher_delivers_results_errors_and_cancellations_on_the_gui_thread(qtbot: QtBot) -> None:
    dispatcher = Dispatcher()
    got: list[object] = []
    ok: concurrent.futures.Future[int] = concurrent.futures.Future()
    failed: concurrent.futures.Future[int] = concurrent.futures.Future()
    cancelled: concurrent.futures.Future[int] = concurrent.futures.Future()
    for future in (ok, failed, cancelled):
        dispatcher.when_done(future, got.append, got.append)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(ok.set_result, 7).result()
        pool.submit(failed.set_exception, ValueError("no")).result()
    cancelled.cancel()
    qtbot.waitUntil(lambda: len(got) == 3, timeout=5000)
    assert got[0] == 7 and isinstance(got[1], ValueError) and isinstance(got[2], concurrent.futures.CancelledError)
