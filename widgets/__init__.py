"""tierdeck Qt widgets: they observe app/ models through signals and send intents back.

    from widgets import MainWindow, apply_theme
    apply_theme(app)
    window = MainWindow(QtConsole(core))
    window.show()

The names below load on first use (PEP 562), so `tierdeck --help`, which imports the console
command's module, does not pull in Qt widgets and pyqtgraph.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EditCommand": "widgets._canvas", "PipelineCanvas": "widgets._canvas",
    "FrameClock": "widgets._clock",
    "Dashboard": "widgets._dashboard",
    "DeployDialog": "widgets._deploy_dialog",
    "EventLog": "widgets._event_log",
    "FleetPanel": "widgets._fleet_panel",
    "Gallery": "widgets._gallery",
    "MainWindow": "widgets._main_window",
    "AddNodeDialog": "widgets._node_dialogs", "EnrollDialog": "widgets._node_dialogs",
    "NodeDetailDialog": "widgets._node_dialogs",
    "STAGE_MIME": "widgets._palette", "StageDrag": "widgets._palette", "StagePalette": "widgets._palette",
    "read_stage_mime": "widgets._palette", "stage_mime": "widgets._palette",
    "PipelineEditor": "widgets._pipeline_editor",
    "apply_theme": "widgets._theme",
    "WhatIfPanel": "widgets._whatif", "escalation_curve": "widgets._whatif",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the public names lazily."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'widgets' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
