"""The bundled models on every execution provider the installed onnxruntime build offers, side by side with the CPU.

One run, in this process: for each bundled model (detector, classifier, heavy) and each provider the
build offers (TensorRT, CUDA, OpenVINO, ... and always the CPU provider), a session is opened the way
the agent opens it (runners/_providers.py: that provider first, the CPU provider as fallback, the
agent's provider options; TensorRT engines cached in a temporary folder) on real held-out patches
(resources.scenes), at batch 1 and batch 32. Reported per row: what the session really ran on (from the
warm-up profile, with CPU-fallback nodes), the first warm-up inference (engine builds and compilation
show here), median and p95 latency per batch, inputs/s, and the largest absolute difference of the
output from the CPU provider's on the same inputs.

Usage: python bench/providers.py [--json OUT] [--threads N] [--seconds S] [--providers LIST]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import ROOT, print_table, write_json
from resources import scenes
from runners._providers import (
    CPU,
    DEFAULT_ORDER,
    ProviderSettings,
    check_builds,
    measure_placement,
    plan_for,
    short_name,
)
from runners._stage import load_session

MODELS = ("detector", "classifier", "heavy")
BATCHES = (1, 32)


def _providers(wanted: str) -> list[str]:
    available = ort.get_available_providers()
    if wanted:
        names = list(ProviderSettings.parse_order(wanted))
        missing = [n for n in names if n not in available]
        if missing:
            raise SystemExit(f"providers.py: this build ({check_builds().summary}) does not offer {missing}")
    else:
        names = [p for p in DEFAULT_ORDER if p in available] + \
            [p for p in available if p not in DEFAULT_ORDER and p != "AzureExecutionProvider"]
    return [CPU] + [n for n in names if n != CPU]


def _time_runs(session: ort.InferenceSession, feeds: list[dict[str, np.ndarray]], seconds: float) -> list[float]:
    """Latency of each run (seconds), cycling through `feeds`, for at least `seconds` and 20 runs."""
    times: list[float] = []
    start = time.perf_counter()
    i = 0
    while len(times) < 20 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        session.run(None, feeds[i % len(feeds)])
        times.append(time.perf_counter() - t0)
        i += 1
        if len(times) >= 5000:
            break
    return times


def bench(provider: str, model: str, batch: int, x: np.ndarray, threads: int, seconds: float,
          cache: Path, reference: dict[tuple[str, int], np.ndarray]) -> dict[str, Any]:
    """One row: `model` on `provider` at `batch`."""
    settings = ProviderSettings(order=(provider,), cache_dir=cache, threads=threads)
    plan = plan_for(settings, ort.get_available_providers(), prefer=[provider])
    path = ROOT / "resources" / "models" / f"{model}.onnx"
    session = load_session(path, threads, plan, cache)
    name = session.get_inputs()[0].name
    feeds = [{name: np.ascontiguousarray(x[i:i + batch])} for i in range(0, len(x) - batch + 1, batch)][:64]
    placement = measure_placement(session, lambda: session.run(None, feeds[0]))
    times = _time_runs(session, feeds, seconds)
    outputs = np.concatenate([session.run(None, f)[0] for f in feeds])
    key = (model, batch)
    if provider == CPU:
        reference[key] = outputs
    diff = float(np.abs(outputs.astype(np.float64) - reference[key]).max()) if key in reference else float("nan")
    median = statistics.median(times)
    return {
        "model": model, "provider": provider, "batch": batch, "runs_on": placement.runs_on,
        "cpu_fallback_nodes": placement.cpu_fallback_nodes, "nodes": placement.nodes,
        "session_providers": list(placement.session_providers), "notes": list(placement.notes),
        "warmup_first_ms": placement.warmup_first_ms, "latency_median_ms": median * 1000,
        "latency_p95_ms": float(np.percentile(times, 95)) * 1000, "inputs_per_s": batch / median,
        "max_abs_diff_vs_cpu": diff, "runs": len(times),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print the table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per session (agent default 1)")
    parser.add_argument("--seconds", type=float, default=1.5, help="timing per row, seconds (default 1.5)")
    parser.add_argument("--providers", default="", help="providers to compare (default: all the build offers)")
    args = parser.parse_args(argv)
    providers = _providers(args.providers)
    build = check_builds(imported_version=ort.__version__)
    images, _ = scenes.load_heldout()
    x = scenes.to_model_input(images)[:64 * 32]
    print(f"onnxruntime {ort.__version__} ({build.summary}); providers {', '.join(map(short_name, providers))}; "
          f"{args.threads} thread(s); {platform.processor() or platform.machine()}", flush=True)
    for problem in build.problems:
        print(f"warning: {problem}")
    rows: list[dict[str, Any]] = []
    reference: dict[tuple[str, int], np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="tierdeck-providers-") as tmp:
        for model in MODELS:
            for batch in BATCHES:
                for provider in providers:
                    try:
                        rows.append(bench(provider, model, batch, x, args.threads, args.seconds, Path(tmp),
                                          reference))
                    except Exception as exc:  # a provider that cannot open this model is a result, not a crash
                        rows.append({"model": model, "provider": provider, "batch": batch, "error": str(exc)[:300]})
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["model"], short_name(r["provider"]), r["batch"], "error: " + r["error"][:60],
                          "", "", "", "", ""])
            continue
        runs = short_name(r["runs_on"]) + (f" (+{r['cpu_fallback_nodes']} CPU)" if r["cpu_fallback_nodes"] else "")
        table.append([r["model"], short_name(r["provider"]), r["batch"], runs, r["warmup_first_ms"],
                      r["latency_median_ms"], r["latency_p95_ms"], r["inputs_per_s"],
                      f"{r['max_abs_diff_vs_cpu']:.1e}"])
    text = print_table(["model", "provider", "batch", "runs on", "first ms", "median ms", "p95 ms", "inputs/s",
                        "max |Δ| vs CPU"], table)
    write_json(args.json, {"onnxruntime": ort.__version__, "build": build.summary, "threads": args.threads,
                           "machine": platform.machine(), "providers": providers, "rows": rows, "table": text})
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
