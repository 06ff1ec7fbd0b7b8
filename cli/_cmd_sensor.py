"""`tierdeck sensor`: replay recorded sensor patches into a stage, like a camera feeding its device node.

An ordinary Open Inference Protocol client: it reads the held-out maritime patches (`.npz` with
`images` uint8 [N, 64, 64] and `labels`), sends them in a loop at `--rate` patches per second in
batches of `--batch`, and now and then plays a burst of vessel traffic (only patches that hold a
vessel) so that escalation rates move. Prints one JSON summary line when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from resources.scenes import HELDOUT_PATH, load_heldout, to_model_input
from runners.client import ClientTLS, NodeClient


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    parser.add_argument("--target", required=True, metavar="HOST:PORT", help="the node to send to")
    parser.add_argument("--model", required=True, metavar="STAGE_ID", help="the stage (OIP model name)")
    parser.add_argument("--data", type=Path, default=HELDOUT_PATH, metavar="FILE",
                        help="patches to replay (.npz with images and labels; default: the bundled held-out set)")
    parser.add_argument("--input", default="image", help="the model's input tensor name (default image)")
    parser.add_argument("--rate", type=float, default=20.0, help="patches per second (default 20)")
    parser.add_argument("--batch", type=int, default=1, help="patches per request (default 1)")
    parser.add_argument("--burst-every", type=float, default=30.0, metavar="S",
                        help="seconds between bursts of vessel traffic (0 = no bursts; default 30)")
    parser.add_argument("--burst-seconds", type=float, default=5.0, metavar="S", help="length of a burst (default 5)")
    parser.add_argument("--duration", type=float, default=0.0, metavar="S", help="stop after S seconds (0 = run until "
                        "interrupted)")
    parser.add_argument("--tls-dir", type=Path, metavar="DIR",
                        help="ca.pem, key.pem, cert.pem from `tierdeck fleet client-cert` (default: insecure)")
    parser.add_argument("--node-id", default="", help="with --tls-dir: the node id the target must prove")
    parser.add_argument("--seed", type=int, default=0, help="order of the replay")


def run(args: argparse.Namespace) -> int:
    """Replay until the duration ends or SIGINT/SIGTERM; print the summary."""
    summary = asyncio.run(replay(args))
    print(json.dumps(summary), flush=True)
    return 0 if summary["answered"] else 1


async def replay(args: argparse.Namespace) -> dict[str, object]:
    """The replay loop; returns counts of what was sent and how it was answered."""
    images, labels = load_heldout(args.data)
    order = np.random.default_rng(args.seed).permutation(len(images))
    vessels = order[labels[order] != 0]
    tls = None
    if args.tls_dir:
        d = args.tls_dir
        tls = ClientTLS((d / "ca.pem").read_bytes(), (d / "key.pem").read_bytes(), (d / "cert.pem").read_bytes())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    counts: Counter[str] = Counter()
    decided: Counter[str] = Counter()
    started = time.monotonic()
    interval = max(1, args.batch) / max(args.rate, 1e-3)
    cursor = burst_cursor = 0
    async with NodeClient(args.target, tls=tls, node_id=args.node_id) as client:
        tick = started
        while not stop.is_set() and not (args.duration and time.monotonic() - started >= args.duration):
            now = time.monotonic()
            in_burst = bool(args.burst_every) and (now - started) % args.burst_every > args.burst_every - \
                args.burst_seconds and len(vessels)
            if in_burst:
                rows = vessels[np.arange(burst_cursor, burst_cursor + args.batch) % len(vessels)]
                burst_cursor += args.batch
            else:
                rows = order[np.arange(cursor, cursor + args.batch) % len(order)]
                cursor += args.batch
            counts["sent"] += len(rows)
            counts["burst"] += len(rows) if in_burst else 0
            try:
                result = await client.infer(args.model, {args.input: to_model_input(images[rows])}, timeout=10)
            except grpc.aio.AioRpcError as exc:
                counts["errors"] += len(rows)
                counts[f"error_{exc.code().name}"] += 1
            else:
                counts["answered"] += len(rows)
                counts["provisional"] += int(result.parameters.get("tierdeck.provisional_rows", 0))
                for stage in result.outputs.get("decision_stage", np.array([], dtype=object)):
                    decided[stage.decode() if isinstance(stage, bytes) else str(stage)] += 1
            tick += interval
            delay = tick - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
            else:
                tick = time.monotonic()  # behind schedule: do not try to catch up in a burst
    elapsed = time.monotonic() - started
    return {"event": "sensor_done", "target": args.target, "model": args.model, "seconds": round(elapsed, 2),
            "sent": counts["sent"], "answered": counts["answered"], "provisional": counts["provisional"],
            "errors": counts["errors"], "burst": counts["burst"], "decided_by": dict(decided),
            "error_codes": {k[6:]: v for k, v in counts.items() if k.startswith("error_")}}
