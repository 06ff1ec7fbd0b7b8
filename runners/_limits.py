"""Memory limits a deploy must hold: what a stage's tensors declare at max_batch, and what warm-up really took.

Three checks, each refusing with a plain reason at step "warmup" and gRPC status RESOURCE_EXHAUSTED
(`ResourceRefused`), so neither a console nor a third-party client sees an "Unexpected <class
'numpy._core._exceptions._ArrayMemoryError'>" with status UNKNOWN:

* before warm-up, the warm-up's own feeds (dynamic dims = 1) must fit in the memory the machine has
  available — a model declaring a 36 TiB input is refused without trying to allocate it;
* with `--memory-cap-mb`, the model file plus every declared input and output at `max_batch` rows
  (the leading dynamic dim; other dynamic dims count as 1) must fit under the cap;
* with `--memory-cap-mb`, the RSS the process grew by while the session was opened and warmed up
  (peak, from getrusage) must fit under the cap — this catches big intermediates no tensor declares.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

import numpy as np
import psutil

from runners._proto import tierdeck_control_pb2 as ctl
from runners._stage import ModelRejected
from runners._tensors import DATATYPES

T = TypeVar("T")
DEFAULT_MAX_BATCH = 64
# A BYTES element's size is not declared; count it as this many bytes.
BYTES_ELEMENT_GUESS = 64


class ResourceRefused(ModelRejected):
    """A model that needs more memory than the node has or may give it (gRPC RESOURCE_EXHAUSTED)."""


def _element_bytes(datatype: str) -> int:
    if datatype == "BYTES":
        return BYTES_ELEMENT_GUESS
    return int(np.dtype(DATATYPES[datatype]).itemsize)


def tensor_bytes(spec: ctl.TensorSpec, rows: int) -> int:
    """Bytes of one tensor with `rows` in its leading dynamic dim (other dynamic dims count as 1)."""
    count = 1
    for index, dim in enumerate(spec.shape):
        count *= dim if dim >= 0 else (rows if index == 0 else 1)
    return count * _element_bytes(spec.datatype)


def gib(n: float) -> str:
    """Bytes in words: "1.0 GiB", "36.4 TiB", "512.0 MiB"."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def _largest(specs: Iterable[ctl.TensorSpec], rows: int) -> tuple[str, int]:
    sized = [(tensor_bytes(s, rows), s.name) for s in specs]
    size, name = max(sized) if sized else (0, "")
    return name, size


def check_warmup_fits(inputs: list[ctl.TensorSpec], available: int | None = None) -> None:
    """Refuse a model whose warm-up feeds alone exceed the memory available on this machine."""
    available = psutil.virtual_memory().available if available is None else available
    need = sum(tensor_bytes(s, 1) for s in inputs)
    if need > available:
        name, size = _largest(inputs, 1)
        raise ResourceRefused("warmup", f"warm-up needs {gib(need)} for its inputs (input '{name}' alone "
                              f"{gib(size)}), more than the {gib(available)} this node has available")


def check_declared(inputs: list[ctl.TensorSpec], outputs: list[ctl.TensorSpec], max_batch: int,
                   model_bytes: int, cap_bytes: int) -> int:
    """Refuse a model whose file plus declared tensors at `max_batch` rows exceed the cap; returns that need."""
    rows = max_batch or DEFAULT_MAX_BATCH
    need = model_bytes + sum(tensor_bytes(s, rows) for s in [*inputs, *outputs])
    if cap_bytes and need > cap_bytes:
        name, size = _largest([*inputs, *outputs], rows)
        raise ResourceRefused("warmup", f"model needs about {gib(need)} at max_batch {rows} (file {gib(model_bytes)}"
                              f", tensor '{name}' {gib(size)}), over this node's memory cap of {gib(cap_bytes)}")
    return need


def _peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class RssWindow:
    """How much the process's RSS grew (peak included) between `start()` and `growth()`."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._before = 0
        self._peak_before = 0

    def start(self) -> RssWindow:
        """Note the RSS now."""
        self._before = self._process.memory_info().rss
        self._peak_before = _peak_rss()
        return self

    def growth(self) -> int:
        """Bytes the RSS grew by since start(), counting a peak in between (0 if it did not grow)."""
        now = self._process.memory_info().rss
        peak = _peak_rss()
        high = max(now, peak if peak > self._peak_before else now)
        return max(0, high - self._before)


def check_measured(growth: int, cap_bytes: int) -> None:
    """Refuse a model whose session and warm-up grew the RSS past the cap."""
    if cap_bytes and growth > cap_bytes:
        raise ResourceRefused("warmup", f"loading and warming up the model took {gib(growth)} of memory "
                              f"(measured), over this node's memory cap of {gib(cap_bytes)}")


def guarded_warmup(warm_up: Callable[[], T]) -> T:
    """Run a warm-up; an allocation failure becomes ResourceRefused instead of an unexpected error."""
    try:
        return warm_up()
    except MemoryError as exc:
        raise ResourceRefused("warmup", f"warm-up could not allocate memory: {exc}") from exc
    except ModelRejected as exc:
        if "alloc" in exc.message.lower():  # onnxruntime: "Failed to allocate memory for requested buffer"
            raise ResourceRefused("warmup", exc.message) from exc
        raise
