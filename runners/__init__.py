"""tierdeck node agent: runs ONNX stages, escalates, streams telemetry. No Qt here."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tierdeck")  # one source: pyproject.toml, through the installed package's metadata
except PackageNotFoundError:  # a checkout on sys.path that was never installed
    __version__ = "0+unknown"
