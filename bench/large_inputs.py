"""An operator's own large-input stage on a device node under load: what the node's memory does.

    python bench/large_inputs.py [--side 224] [--batch 8] [--requests 240] [--concurrency 4] [--json OUT]

Two models built here (not the bundled ones): float images [N, 3, side, side] → GlobalAveragePool → a 3×2
MatMul → Softmax, a device stage whose rule escalates rows below 0.9 confidence (half the rows, by the
first channel's mean) to a cloud stage on a second `tierdeck-node`. Clients send `--requests` requests of
`--batch` images with `--concurrency` in flight, each on its own StreamInfer stream, as a sensor's gateway
would. Shadow sampling is at its default (1 % of settled rows); the device's hard-example ledger records the
escalated rows at its default rate (50 rows/s).

Side by side in one run, each on fresh agents: the device with its ledger on (the default) and off
(`--ledger-max-mb 0`). Reported per case: inputs/s, the device's RSS after the stage was deployed, its peak
RSS under load (sampled every 20 ms) and what the load added, the request size, and the ledger's recorded
and dropped rows. What the load adds beyond the requests in flight is what the node holds on to.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import numpy as np  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from bench._common import Agent, print_table, write_json  # noqa: E402
from bench.cascade import Node, RssSampler  # noqa: E402
from runners._proto import tierdeck_control_pb2 as ctl  # noqa: E402
from runners.client import NodeClient, manifest_for  # noqa: E402

LABELS = ["calm", "alert"]


def image_model(side: int) -> bytes:
    """Float images [N, 3, side, side] → class probabilities [N, 2], confident when channel 0's mean is far from 0."""
    weight = numpy_helper.from_array(np.array([[20.0, -20.0], [0.0, 0.0], [0.0, 0.0]], np.float32), "w")
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(
        nodes, "large-inputs", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, side, side])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 2])], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


async def ledger_counts(address: str) -> tuple[int, int]:
    """(recorded, dropped) rows of the node's hard-example ledger, once its writer has caught up."""
    await asyncio.sleep(1.0)  # the writer commits every 0.25 s
    async with NodeClient(address) as client:
        ledger = (await client.info()).hard_example_ledger
    return ledger.recorded_total, ledger.dropped_total


async def one_case(ledger: bool, side: int, batch: int, requests: int, concurrency: int) -> dict[str, Any]:
    """Fresh device and cloud agents, the stages deployed, the load driven; the device's figures."""
    model = image_model(side)
    with tempfile.TemporaryDirectory() as tmp:
        device = Agent(Path(tmp) / "device", *([] if ledger else ["--ledger-max-mb", "0"]), name="device",
                       tier="device")
        cloud = Agent(Path(tmp) / "cloud", name="cloud", tier="cloud")
        try:
            async with NodeClient(cloud.address) as client:
                await client.deploy(manifest_for("own-big", model, "1", input_names=["image"], output_names=["probs"],
                                                 rule=ctl.EscalationRule(output="probs", labels=LABELS)), model)
            rule = ctl.EscalationRule(output="probs", labels=LABELS)
            rule.confidence_below = 0.9
            hop = ctl.NextHop(address=cloud.address, model="own-big", labels=LABELS)
            async with NodeClient(device.address) as client:
                await client.deploy(manifest_for("own-small", model, "1", input_names=["image"],
                                                 output_names=["probs"], rule=rule, next_hop=hop), model)
            rng = np.random.default_rng(0)
            x = rng.random((batch, 3, side, side), dtype=np.float32)
            x[:, 0] = np.where(np.arange(batch) % 2 == 0, 0.0, 0.6)[:, None, None]  # half escalate, half settle
            node = Node("device", device, "own-small")
            before = node.proc.memory_info().rss
            node.rss_peak = before
            async with NodeClient(device.address) as client:
                todo = iter(range(requests))

                async def worker() -> None:
                    link = client.stream_link()
                    try:
                        for _ in todo:
                            await client.infer("own-small", {"image": x}, timeout=120, link=link)
                    finally:
                        await link.close()

                start = time.perf_counter()
                with RssSampler([node]):  # the device's RSS every 20 ms, its peak kept (as bench/cascade.py)
                    await asyncio.gather(*(worker() for _ in range(concurrency)))
                wall = time.perf_counter() - start
            peak = node.rss_peak
            recorded, dropped = await ledger_counts(device.address)
        finally:
            device.stop()
            cloud.stop()
    return {"ledger": ledger, "inputs_per_s": requests * batch / wall, "request_mib": x.nbytes / 2**20,
            "rss_after_deploy_mb": before / 2**20, "rss_peak_mb": peak / 2**20,
            "load_added_mb": (peak - before) / 2**20, "ledger_recorded": recorded, "ledger_dropped": dropped}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--batch", type=int, default=8, help="images per request (default 8)")
    parser.add_argument("--requests", type=int, default=240, help="requests per case (default 240)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    results = [asyncio.run(one_case(ledger, args.side, args.batch, args.requests, args.concurrency))
               for ledger in (True, False)]
    print(f"large inputs — 3×{args.side}×{args.side} float images, {args.batch} a request "
          f"({results[0]['request_mib']:.1f} MiB), {args.requests} requests, {args.concurrency} in flight, "
          "device → cloud, shadow 1 %\n")
    print_table(["device ledger", "inputs/s", "RSS after deploy (MB)", "peak RSS under load (MB)",
                 "load adds (MB)", "ledger rows recorded / dropped"],
                [["on (default)" if r["ledger"] else "off", r["inputs_per_s"], r["rss_after_deploy_mb"],
                  r["rss_peak_mb"], r["load_added_mb"], f"{r['ledger_recorded']} / {r['ledger_dropped']}"]
                 for r in results])
    write_json(args.json, {"args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
