"""The agent's per-message costs that are not gRPC's: small runs skip the thread hand-off, and freed message
buffers are reused instead of being unmapped and page-faulted in again."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import numpy as np
import pytest
from models import classifier, softmax

from runners._proto import tierdeck_control_pb2 as ctl

rng = np.random.default_rng(9)
W = rng.normal(size=(4, 3)).astype(np.float32)
X = rng.normal(size=(64, 4)).astype(np.float32)


class _CountingPool(futures.ThreadPoolExecutor):
    """A compute pool that counts what is handed to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.handed = 0

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.handed += 1
        return super().submit(fn, *args, **kwargs)


def test_small_runs_stay_on_the_event_loop_and_large_ones_go_to_the_pool(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A run expected (from the stage's measured seconds per row) under INLINE_RUN_S skips the thread hand-off;
    the answers are the same either way. The budget is set here, so that no decision depends on this box's speed."""
    import runners._stage as stage_module
    from runners._stage import Stage, load_session
    from runners._telemetry import StageStats

    path = classifier(tmp_path / "m.onnx", W)
    manifest = ctl.StageManifest(stage_id="m", version="1", rule=ctl.EscalationRule(output="probs",
                                                                                     labels=["a", "b", "c"]))
    stage = Stage(manifest=manifest, session=load_session(path, 1), model_path=path, stats=StageStats("m"))
    pool = _CountingPool()

    async def go() -> None:
        monkeypatch.setattr(stage_module, "INLINE_RUN_S", 3600.0)
        first, _ = await stage.async_run({"x": X[:4]}, pool, 2)
        assert pool.handed == 1 and stage._row_s is not None  # nothing measured yet: the pool, then an estimate
        for k in range(5):
            outputs, _ = await stage.async_run({"x": X[k:k + 4]}, pool, 2)
            np.testing.assert_allclose(outputs[0], softmax(X[k:k + 4], W), rtol=1e-5)
        assert pool.handed == 1  # all on the loop
        monkeypatch.setattr(stage_module, "INLINE_RUN_S", 0.0)  # no run is small enough
        outputs, _ = await stage.async_run({"x": X[:4]}, pool, 2)
        assert pool.handed == 2
        np.testing.assert_allclose(outputs[0], first[0], rtol=1e-6)
        np.testing.assert_allclose(first[0], softmax(X[:4], W), rtol=1e-5)

    try:
        asyncio.run(go())
    finally:
        pool.shutdown()


def test_small_requests_share_a_run_and_batches_run_as_they_came(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """While a run is busy, waiting requests of fewer than SHARE_BELOW_ROWS rows are merged into one run; a request
    of that many rows or more runs alone (merging it would only copy its inputs). Every caller gets its own rows."""
    import threading

    import runners._stage as stage_module
    from runners._stage import SHARE_BELOW_ROWS, Stage, load_session
    from runners._telemetry import StageStats

    path = classifier(tmp_path / "m.onnx", W)
    manifest = ctl.StageManifest(stage_id="m", version="1")
    stage = Stage(manifest=manifest, session=load_session(path, 1), model_path=path, stats=StageStats("m"))
    runs: list[int] = []
    run = stage.run
    monkeypatch.setattr(stage, "run", lambda feeds: (runs.append(len(feeds["x"])), run(feeds))[1])
    monkeypatch.setattr(stage_module, "INLINE_RUN_S", 0.0)  # every run on the pool
    pool = _CountingPool()
    gate = threading.Event()
    big, small = SHARE_BELOW_ROWS, 2
    sizes = [small, big, small, small, big, small]

    async def go() -> list[np.ndarray]:
        pool.submit(gate.wait)  # the pool's one thread is busy: the first run waits, the rest queue up
        offsets = np.cumsum([0, *sizes])
        calls = [asyncio.ensure_future(stage.async_run({"x": X[a:b]}, pool, 1))
                 for a, b in itertools.pairwise(offsets)]
        await asyncio.sleep(0.05)
        gate.set()
        return [outputs[0] for outputs, _ in await asyncio.gather(*calls)]

    try:
        answers = asyncio.run(go())
    finally:
        pool.shutdown()
    assert runs == [small, big, 2 * small, big, small]
    offset = 0
    for rows, answer in zip(sizes, answers, strict=True):
        np.testing.assert_allclose(answer, softmax(X[offset:offset + rows], W), rtol=1e-5)
        offset += rows


_FAULTS = """
import resource, sys
if sys.argv[1] == "tuned":
    from runners.agent import _limit_malloc_arenas
    _limit_malloc_arenas()
def cycle():
    buffers = [bytearray(512 * 1024) for _ in range(4)]  # four batch-32 messages in flight
    for b in buffers:
        b[::4096] = b"x" * len(b[::4096])
    del buffers
for _ in range(5):
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_message_buffers_are_reused_not_faulted_in_again() -> None:
    """With glibc's start-up thresholds, four 512 KiB buffers freed together are trimmed away and faulted in
    again on every cycle (128 page faults per buffer); with the agent's thresholds they are reused."""
    root = Path(__file__).resolve().parent.parent
    faults = {kind: int(subprocess.run([sys.executable, "-c", _FAULTS, kind], cwd=root, check=True,
                                       capture_output=True, text=True).stdout)
              for kind in ("default", "tuned")}
    if faults["default"] < 100 * 4 * 64:
        pytest.skip(f"this C library does not hand freed buffers back at once ({faults})")
    assert faults["tuned"] < faults["default"] / 20, faults


_RUNS = """
import resource, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np
from runners.agent import _limit_malloc_arenas
from runners._stage import load_session
_limit_malloc_arenas()
path = Path("resources/models/heavy.onnx")
session = load_session(path, 1) if sys.argv[1] == "default" else load_session(path, 1, arena=False)
x = np.random.default_rng(0).random((32, 1, 64, 64), dtype=np.float32)
pool = ThreadPoolExecutor(2)  # the agent's compute pool runs the model off the event loop
for _ in range(3):
    pool.submit(session.run, None, {"image": x}).result()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    pool.submit(session.run, None, {"image": x}).result()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_a_stage_keeps_onnxruntime_working_memory_between_runs() -> None:
    """Without onnxruntime's arena, every run of the heavy model at batch 32 on the compute pool faulted its
    activations in afresh (about 1,700 page faults a run here, 22–35 % more CPU); a stage keeps it by default, and
    --no-ort-arena (load_session(arena=False)) still gives it back."""
    root = Path(__file__).resolve().parent.parent
    faults = {kind: int(subprocess.run([sys.executable, "-c", _RUNS, kind], cwd=root, check=True,
                                       capture_output=True, text=True).stdout)
              for kind in ("default", "no-arena")}
    if faults["no-arena"] < 10 * 200:
        pytest.skip(f"this C library keeps freed activations without the arena too ({faults})")
    assert faults["default"] < faults["no-arena"] / 10, faults


def test_the_node_flag_turns_the_arena_off(tmp_path: Path) -> None:
    """--no-ort-arena reaches the agent's configuration; the default keeps the arena."""
    from runners.agent import build_parser, config_from_args

    base = ["--data-dir", str(tmp_path), "--insecure"]
    assert config_from_args(build_parser().parse_args(base)).ort_arena is True
    assert config_from_args(build_parser().parse_args([*base, "--no-ort-arena"])).ort_arena is False
