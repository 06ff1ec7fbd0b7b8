"""What a thread's wait costs it: the same per-message Python work, back to back and after a wait.

    python bench/wake_penalty.py [--rounds 300] [--json OUT]

The work is an agent's own handling of one batch-32 message of the bundled stages' input (32 × 16 KiB
float32: read the received request, decode its tensors without copying, check them for NaN/inf, encode the
four decision outputs of an answer), timed as the thread's CPU time (`time.thread_time_ns`), so time spent
runnable but not running is not in it: what grows is the work itself, on caches and TLB entries that other
work evicted while the thread waited. Gaps, interleaved in a shuffled order each round:

  back to back           the next message at once (a busy event loop)
  sleep 1 / 5 / 13 ms    the thread slept that long (13 ms: heavy's onnxruntime run at batch 32 here)
  heavy on a pool thread the thread waited on a future while heavy ran batch 32 on another thread (what an
                         agent's event loop does while its compute pool runs a large stage)

Reported: median and p90 in µs, and the median against back to back. Not a test: numbers depend on the
machine (on this project's 2-core VM a thread that slept 13 ms paid several times the back-to-back cost).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from bench._common import print_table, write_json  # noqa: E402
from runners._proto import grpc_predict_v2_pb2 as pb  # noqa: E402
from runners._rules import Decisions  # noqa: E402
from runners._tensors import decode_inputs, encode_outputs, nonfinite, read_request, request_bytes  # noqa: E402

HEAVY = ROOT / "resources" / "models" / "heavy.onnx"
BATCH = 32
SLEEPS_MS = (1, 5, 13)


def message_work(data: bytes) -> None:
    """An agent's own per-message handling (no model): read, decode, check, answer."""
    request = read_request(data)
    feeds = decode_inputs(request)  # type: ignore[arg-type]
    for array in feeds.values():
        if nonfinite(array):
            raise ValueError("non-finite input")
    rows = len(next(iter(feeds.values())))
    decisions = Decisions(["water", "vessel"], np.zeros(rows, np.int32), np.ones(rows, np.float32), ["detector"],
                          np.zeros(rows, np.int32), np.ones(rows, bool))
    response = pb.ModelInferResponse(model_name="detector", id="bench")
    encode_outputs(response, list(decisions.outputs().items()))
    response.SerializeToString()


def measure(rounds: int) -> dict[str, list[float]]:
    """Per gap kind, the work's thread CPU time in µs, one value a round."""
    x = np.random.default_rng(0).random((BATCH, 1, 64, 64)).astype(np.float32)
    data = request_bytes(pb.ModelInferRequest(model_name="detector", id="bench"), [("image", x)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    heavy = ort.InferenceSession(str(HEAVY), options, providers=["CPUExecutionProvider"])
    heavy_feed = {heavy.get_inputs()[0].name: x}
    pool = ThreadPoolExecutor(max_workers=1)
    pool.submit(heavy.run, None, heavy_feed).result()  # first-run costs paid before measuring

    def timed() -> float:
        start = time.thread_time_ns()
        message_work(data)
        return (time.thread_time_ns() - start) / 1000

    gaps: dict[str, Any] = {"back to back": lambda: None}
    for ms in SLEEPS_MS:
        gaps[f"sleep {ms} ms"] = lambda s=ms / 1000: time.sleep(s)
    gaps["heavy on a pool thread"] = lambda: pool.submit(heavy.run, None, heavy_feed).result()
    for _ in range(20):  # warm
        timed()
    samples: dict[str, list[float]] = {name: [] for name in gaps}
    order = list(gaps)
    shuffle = random.Random(1)
    for _ in range(rounds):
        shuffle.shuffle(order)
        for name in order:
            if name == "back to back":
                timed()  # the one before: the measured run follows a run at once
            else:
                gaps[name]()
            samples[name].append(timed())
    pool.shutdown()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="measurements per gap (default 300)")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    samples = measure(args.rounds)
    base = statistics.median(samples["back to back"])
    summary = {}
    rows = []
    for name, values in samples.items():
        median = statistics.median(values)
        p90 = float(np.percentile(values, 90))
        summary[name] = {"median_us": median, "p90_us": p90, "vs_back_to_back": median / base}
        rows.append([name, f"{median:.1f}", f"{p90:.1f}", f"{median / base:.2f}×"])
    print(f"wake penalty — one batch-{BATCH} message's own handling (read, decode, check, answer), thread CPU time, "
          f"{args.rounds} rounds\n")
    print_table(["gap before the message", "median µs", "p90 µs", "median vs back to back"], rows)
    write_json(args.json, {"rounds": args.rounds, "batch": BATCH, "summary": summary, "samples_us": samples})
    return 0


if __name__ == "__main__":
    sys.exit(main())
