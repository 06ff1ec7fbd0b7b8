"""What one onnxruntime session adds to a process's memory, per model, batch size and session options.

    python bench/session_memory.py [--batches 1 32] [--runs 200] [--json OUT]

Each measurement is a fresh process that imports onnxruntime, caps glibc's malloc arenas as the agent
does, settles, resets its peak-RSS mark (/proc/self/clear_refs), then opens one session on a bundled
model and runs `--runs` inferences at the batch size; "added" is the peak RSS (VmHWM) minus the RSS
just before the session was opened — the same definition as bench/cascade.py's "memory each stage
adds to its agent", without the agent around it. The device figure is the detector's added memory
against the heavy model's (issue 15 target: ≥ 73 % below).

Option sets:
  agent         runners/_stage.py load_session as it is: no CPU arena, 1 intra-op / 1 inter-op thread
  arena         onnxruntime's default CPU arena (what the agent had before it turned the arena off)
  arena-small   a shared (environment) arena that grows by what is asked (initial chunk 64 KiB)
  no-pattern    agent + enable_mem_pattern off (no pre-planned activation buffer per shape)
  no-prepack    agent + session.disable_prepacking (no second, pre-packed copy of the weights)
  global-pools  agent + the environment's global thread pools instead of per-session ones
  lean          agent + no-pattern + no-prepack + global-pools
  warm          agent, but a detector session was opened (and kept) before the mark: the marginal
                cost of one more session once onnxruntime is initialised in the process
  warm-run      as warm, and that detector session also ran once at the batch size before the mark
                (onnxruntime's first-run costs paid too): what one more stage really adds
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from bench._common import print_table, write_json  # noqa: E402

MODELS = {name: ROOT / "resources" / "models" / f"{name}.onnx" for name in ("detector", "classifier", "heavy")}
OPTION_SETS = ("agent", "arena", "arena-small", "no-pattern", "no-prepack", "global-pools", "lean", "warm",
               "warm-run")
TARGET_SAVING = 0.73


def rss_kib(field: str) -> int:
    """A line of /proc/self/status in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(model: str, batch: int, option_set: str, runs: int) -> dict[str, Any]:
    """One measurement in this (fresh) process."""
    import numpy as np
    import onnxruntime as ort
    from onnxruntime.capi import _pybind_state as capi

    ctypes.CDLL("libc.so.6").mallopt(-8, 2)   # M_ARENA_MAX, as runners/agent.py does
    if option_set in ("global-pools", "lean"):
        capi.set_global_thread_pool_sizes(1, 1)

    def options() -> ort.SessionOptions:
        o = ort.SessionOptions()
        o.intra_op_num_threads = 1
        o.inter_op_num_threads = 1
        o.log_severity_level = 3
        o.enable_cpu_mem_arena = option_set in ("arena", "arena-small")
        if option_set in ("no-pattern", "lean"):
            o.enable_mem_pattern = False
        if option_set in ("no-prepack", "lean"):
            o.add_session_config_entry("session.disable_prepacking", "1")
        if option_set in ("global-pools", "lean"):
            o.use_per_session_threads = False
        if option_set == "arena-small":
            o.add_session_config_entry("session.use_env_allocators", "1")
        return o

    if option_set == "arena-small":
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        capi.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, 64 * 1024, -1))   # kSameAsRequested
    keep = []
    if option_set in ("warm", "warm-run"):
        keep.append(ort.InferenceSession(str(MODELS["detector"]), sess_options=options(),
                                         providers=["CPUExecutionProvider"]))
    if option_set == "warm-run":
        warm_input = keep[0].get_inputs()[0]
        keep[0].run(None, {warm_input.name: np.zeros([batch, *warm_input.shape[1:]], dtype=np.float32)})
    gc.collect()
    before = rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")      # reset the peak (VmHWM) to the current RSS
    session = ort.InferenceSession(str(MODELS[model]), sess_options=options(), providers=["CPUExecutionProvider"])
    after_load = rss_kib("VmRSS")
    meta = session.get_inputs()[0]
    shape = [batch if not isinstance(d, int) or d < 0 else d for d in meta.shape]
    shape[0] = batch
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    for _ in range(runs):
        session.run(None, {meta.name: x})
    return {"model": model, "batch": batch, "options": option_set, "rss_before_kib": before,
            "load_added_mib": (after_load - before) / 1024, "peak_added_mib": (rss_kib("VmHWM") - before) / 1024,
            "after_runs_added_mib": (rss_kib("VmRSS") - before) / 1024, "kept": len(keep)}


def measure(model: str, batch: int, option_set: str, runs: int, repeats: int) -> dict[str, Any]:
    """Median of `repeats` fresh processes."""
    results = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, "--child", model, str(batch), option_set, str(runs)],
                             check=True, capture_output=True, text=True, cwd=ROOT)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    r = dict(results[0])
    for key in ("load_added_mib", "peak_added_mib", "after_runs_added_mib"):
        r[key] = statistics.median(x[key] for x in results)
    r["repeats"] = repeats
    return r


def main() -> int:
    """Measure every option set, print the tables, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per figure (median)")
    parser.add_argument("--options", nargs="+", default=list(OPTION_SETS), choices=OPTION_SETS)
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "BATCH", "OPTIONS", "RUNS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, batch, option_set, runs = args.child
        print(json.dumps(child(model, int(batch), option_set, int(runs))))
        return 0
    results = [measure(m, b, o, args.runs, args.repeats) for o in args.options for b in args.batches for m in MODELS]
    rows, summary = [], []
    for o in args.options:
        for b in args.batches:
            by = {r["model"]: r for r in results if r["options"] == o and r["batch"] == b}
            det, heavy = by["detector"]["peak_added_mib"], by["heavy"]["peak_added_mib"]
            saving = 1 - det / heavy if heavy > 0 else float("nan")
            summary.append({"options": o, "batch": b, "device_saving": saving})
            rows.append((o, b, *(f"{by[m]['load_added_mib']:.1f} / {by[m]['peak_added_mib']:.1f}" for m in MODELS),
                         f"{saving * 100:.0f} %" + (" ✔" if saving >= TARGET_SAVING else "")))
    print_table(["options", "batch", *(f"{m} load / peak MiB" for m in MODELS), "device below heavy (≥ 73 %)"], rows)
    write_json(args.json, {"results": results, "summary": summary, "runs": args.runs, "target_saving": TARGET_SAVING})
    return 0


if __name__ == "__main__":
    sys.exit(main())
