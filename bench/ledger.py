"""What the hard-example ledger costs the request path: a device stage that escalates every row (the ledger's
worst case: every row is escalated with its 64×64 image) to an edge stage, with the ledger at its default
recording rate (50 rows/s), recording every row (`--ledger-max-rows-per-s 0`) and off (`--ledger-max-mb 0`),
interleaved, the same edge agent behind all three.

    python -m bench.ledger [--seconds 3] [--repeats 3] [--concurrency 4] [--batch 16] [--json OUT]

Prints rows/s through the device (median of the repeats) and the ledger's own counters: rows written, rows the
recording rate or the bounded hand-off dropped (both drop rather than slow a request), and its size on disk.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

from bench._common import Agent, print_table, write_json
from resources import scenes
from runners._forward import CHANNEL_OPTIONS
from runners._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from runners._proto import tierdeck_control_pb2 as ctl
from runners.client import NodeClient, infer_request, manifest_for

MODELS = Path(__file__).resolve().parent.parent / "resources" / "models"


async def _deploy(device: str, edge: str) -> None:
    detector, classifier = (MODELS / "detector.onnx").read_bytes(), (MODELS / "classifier.onnx").read_bytes()
    async with NodeClient(edge) as client:
        rule = ctl.EscalationRule(output="probs", labels=["water", "cargo", "tanker", "fishing", "patrol"])
        await client.deploy(manifest_for("classifier", classifier, "1", rule=rule), classifier)
    async with NodeClient(device) as client:
        rule = ctl.EscalationRule(output="probs", labels=["water", "vessel"], confidence_below=1.01)  # every row
        await client.deploy(manifest_for("detector", detector, "1", rule=rule, next_hop=ctl.NextHop(
            address=edge, model="classifier")), detector)


async def _ledger(address: str) -> ctl.HardExampleLedger:
    async with NodeClient(address) as client:
        return (await client.hard_examples(ctl.ListHardExamplesRequest(limit=1))).ledger


def rate(address: str, x: np.ndarray, seconds: float, concurrency: int) -> float:
    """Rows/s through the device stage: each client thread sends its batches back to back."""
    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)

    def worker() -> int:
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            stub.ModelInfer(infer_request("detector", {"image": x}))
            done += len(x)
        return done

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        total = sum(pool.map(lambda _: worker(), range(concurrency)))
    elapsed = time.perf_counter() - start
    channel.close()
    return total / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (median taken)")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--batch", type=int, default=16, help="rows per request (default 16)")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    images, _ = scenes.load_heldout()
    x = scenes.to_model_input(images[:args.batch])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        edge = Agent(root / "edge", name="edge")
        devices = {"ledger on (50 rows/s)": Agent(root / "on", name="on", tier="device"),
                   "ledger on (every row)": Agent(root / "every", "--ledger-max-rows-per-s", "0", name="every",
                                                  tier="device"),
                   "ledger off": Agent(root / "off", "--ledger-max-mb", "0", name="off", tier="device")}
        folders = dict(zip(devices, ("on", "every", "off"), strict=True))
        try:
            for device in devices.values():
                asyncio.run(_deploy(device.address, edge.address))
                rate(device.address, x, 0.5, args.concurrency)  # warm-up
            rates: dict[str, list[float]] = {k: [] for k in devices}
            for _ in range(args.repeats):
                for label, device in devices.items():
                    rates[label].append(rate(device.address, x, args.seconds, args.concurrency))
            time.sleep(1.0)  # let the writer finish before reading its counters
            ledgers = {k: asyncio.run(_ledger(d.address)) for k, d in devices.items()}
            sizes = {k: (root / folders[k] / "ledger.sqlite").stat().st_size for k in devices}
        finally:
            for agent in (*devices.values(), edge):
                agent.stop()
    rows = []
    for label in devices:
        ledger = ledgers[label]
        rows.append([label, statistics.median(rates[label]), min(rates[label]), max(rates[label]),
                     ledger.recorded_total, ledger.dropped_total, ledger.evicted_total, sizes[label] / 2**20])
    base = statistics.median(rates["ledger off"])
    costs = {k: 1 - statistics.median(v) / base if base else 0.0 for k, v in rates.items() if k != "ledger off"}
    print(f"\ndevice detector escalates every row ({args.batch} rows/request, {args.concurrency} clients, "
          f"{args.repeats}×{args.seconds:g} s interleaved) to an edge classifier\n")
    print_table(["device", "rows/s (median)", "min", "max", "ledger rows written", "dropped (rate, hand-off)",
                 "evicted", "ledger.sqlite MiB"], rows)
    for label, cost in costs.items():
        print(f"throughput cost, {label}: {cost * 100:.1f} %")
    write_json(args.json, {"batch": args.batch, "concurrency": args.concurrency, "seconds": args.seconds,
                           "repeats": args.repeats, "rates": rates, "cost_fraction": costs,
                           "ledger": {k: {"recorded_total": v.recorded_total, "dropped_total": v.dropped_total,
                                          "evicted_total": v.evicted_total, "rows": v.rows, "bytes": v.bytes}
                                      for k, v in ledgers.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
