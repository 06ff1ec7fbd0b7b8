"""tierdeck node agent: runs ONNX stages, escalates, streams telemetry. No Qt here."""

from __future__ import annotations

__version__ = "0.1.0"
