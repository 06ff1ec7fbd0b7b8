"""`tierdeck sensor`: replay recorded rows into a stage, like a camera or a sensor feeding its device node.

An ordinary Open Inference Protocol client. It reads one array of an `.npz` file (`--array`, default
`images` when present, else the file's only or first array), asks the node for the stage's input
(ModelMetadata) and sends the rows in a loop at `--rate` rows per second in batches of `--batch`:

* the bundled maritime patches (uint8 [N, 64, 64]) into a stage that takes FP32 [N, 1, 64, 64] are
  scaled to 0..1 as the bundled models expect (`resources.scenes.to_model_input`);
* any other array is sent as it is, cast to the input's datatype (never float to integer), and
  reshaped when each row has the same number of values as the input's row (e.g. [N, 8, 8] → [N, 64]);
  an array that cannot fit is refused before anything is sent, with the reason.

When the file also holds `labels`, a burst of rows whose label is not 0 plays now and then (the demo's
vessel traffic) so that escalation rates move. The first refusal by the node is printed with its
reason. A stage that is not deployed yet (or a node that does not answer) is waited for, once said.
Prints one JSON summary line when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from resources.scenes import HELDOUT_PATH, to_model_input
from runners._tensors import DATATYPES
from runners.client import ClientTLS, NodeClient


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    parser.add_argument("--target", required=True, metavar="HOST:PORT", help="the node to send to")
    parser.add_argument("--model", required=True, metavar="STAGE_ID", help="the stage (OIP model name)")
    parser.add_argument("--data", type=Path, default=HELDOUT_PATH, metavar="FILE",
                        help="rows to replay: an .npz file (default: the bundled held-out maritime patches)")
    parser.add_argument("--array", default="", metavar="NAME",
                        help="the array of the .npz to send (default: 'images' if present, else the only/first one)")
    parser.add_argument("--input", default="", metavar="NAME",
                        help="the stage's input tensor (default: its only input, from the node's metadata)")
    parser.add_argument("--rate", type=float, default=20.0, help="rows per second (default 20)")
    parser.add_argument("--batch", type=int, default=1, help="rows per request (default 1)")
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
    """Replay until the duration ends or SIGINT/SIGTERM; print the summary (exit 2 when the data cannot fit)."""
    try:
        summary = asyncio.run(replay(args))
    except ReplayError as exc:
        print(f"tierdeck sensor: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary), flush=True)
    return 0 if summary["answered"] else 1


class ReplayError(Exception):
    """The data cannot be sent to this stage (the message says why)."""


class StageNotReady(ReplayError):
    """The stage is not (yet) there: not deployed, or the node not answering; the sensor waits for it."""


def load_rows(path: Path, array: str = "") -> tuple[str, np.ndarray, np.ndarray | None]:
    """(array name, rows, labels or None) from an .npz file."""
    try:
        data = np.load(path)
    except (OSError, ValueError) as exc:
        raise ReplayError(f"cannot read {path}: {exc}") from exc
    with data:
        names = list(data.files)
        if not names:
            raise ReplayError(f"{path} holds no arrays")
        name = array or ("images" if "images" in names else names[0])
        if name not in names:
            raise ReplayError(f"{path} has no array {name!r} (arrays: {', '.join(names)})")
        rows = data[name]
        labels = data["labels"] if "labels" in names and name != "labels" else None
    if rows.ndim == 0 or len(rows) == 0:
        raise ReplayError(f"array {name!r} of {path} holds no rows (shape {list(rows.shape)})")
    if labels is not None and len(labels) != len(rows):
        labels = None
    return name, rows, labels


def fit_rows(rows: np.ndarray, datatype: str, shape: list[int]) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """A converter from rows of the file to the stage's input, and a note of what it does ("" = as is)."""
    if datatype not in DATATYPES or datatype == "BYTES":
        raise ReplayError(f"the stage's input is {datatype}; tierdeck sensor sends numeric arrays only")
    want = DATATYPES[datatype]
    row_shape = list(shape[1:])
    if rows.dtype == np.uint8 and rows.ndim == 3 and want == np.float32 and len(row_shape) == 3 \
            and row_shape[0] in (1, -1) and row_shape[1:] in ([rows.shape[1], rows.shape[2]], [-1, -1]):
        return to_model_input, "8-bit images scaled to 0..1, [N, H, W] → [N, 1, H, W]"
    if rows.dtype.kind == "f" and want.kind in "iub":
        raise ReplayError(f"the array holds {rows.dtype} values and the stage takes {datatype}: convert them "
                          "yourself (tierdeck sensor never rounds floats to integers)")
    if rows.dtype.kind not in "biuf":
        raise ReplayError(f"the array holds {rows.dtype} values, not numbers")
    notes = []
    if rows.dtype != want:
        notes.append(f"{rows.dtype} → {datatype}")
    target = list(rows.shape[1:])
    if len(row_shape) != len(target) or any(d >= 0 and d != t for d, t in zip(row_shape, target, strict=False)):
        fixed = [d for d in row_shape if d >= 0]
        free = len(row_shape) - len(fixed)
        per_row = int(np.prod(target)) if target else 1
        if free == 0 and int(np.prod(fixed)) == per_row:
            target = row_shape
        elif free == 1 and fixed and per_row % int(np.prod(fixed)) == 0:
            target = [d if d >= 0 else per_row // int(np.prod(fixed)) for d in row_shape]
        else:
            raise ReplayError(f"rows of shape {list(rows.shape[1:])} do not fit the stage's input "
                              f"{datatype} {shape} (-1 = any)")
        notes.append(f"rows {list(rows.shape[1:])} → {target}")
    return (lambda batch: np.ascontiguousarray(batch.reshape(len(batch), *target), dtype=want)), ", ".join(notes)


async def replay(args: argparse.Namespace) -> dict[str, object]:
    """The replay loop; returns counts of what was sent and how it was answered."""
    array_name, images, labels = load_rows(args.data, args.array)
    order = np.random.default_rng(args.seed).permutation(len(images))
    vessels = order[labels[order] != 0] if labels is not None else order[:0]
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
    first_error = ""
    async with NodeClient(args.target, tls=tls, node_id=args.node_id) as client:
        waiting = ""
        while True:  # a sensor started before its stage is deployed (or while the node restarts) waits for it
            try:
                convert, input_name, note = await _input_for(client, args, images)
                break
            except StageNotReady as exc:
                if not waiting:
                    waiting = str(exc)
                    print(f"tierdeck sensor: waiting for stage {args.model}: {exc}", file=sys.stderr, flush=True)
                if stop.is_set() or (args.duration and time.monotonic() - started >= args.duration):
                    raise ReplayError(str(exc)) from None
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass
        if note:
            print(f"tierdeck sensor: sending {array_name!r} to {args.model}/{input_name}: {note}", file=sys.stderr)
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
                result = await client.infer(args.model, {input_name: convert(images[rows])}, timeout=10)
            except grpc.aio.AioRpcError as exc:
                counts["errors"] += len(rows)
                counts[f"error_{exc.code().name}"] += 1
                if not first_error:
                    first_error = f"{exc.code().name}: {exc.details()}"
                    print(f"tierdeck sensor: the node refused a request: {first_error}", file=sys.stderr, flush=True)
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
            "error_codes": {k[6:]: v for k, v in counts.items() if k.startswith("error_")},
            "first_error": first_error}


async def _input_for(client: NodeClient, args: argparse.Namespace,
                     rows: np.ndarray) -> tuple[Callable[[np.ndarray], np.ndarray], str, str]:
    """(converter, input name, note) for the stage's input, from the node's ModelMetadata."""
    try:
        meta = await client.metadata(args.model, timeout=10)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            raise ReplayError(f"{args.target} answers {exc.code().name}: {exc.details()}") from exc
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            raise StageNotReady(f"{args.target} answers NOT_FOUND: {exc.details()}") from exc
        raise StageNotReady(f"{args.target} is not reachable: {exc.code().name}: {exc.details()}") from exc
    inputs = {t.name: t for t in meta.inputs}
    name = args.input or (next(iter(inputs)) if len(inputs) == 1 else "")
    if not name:
        raise ReplayError(f"stage {args.model} takes {len(inputs)} inputs ({', '.join(inputs)}): name one with "
                          "--input (tierdeck sensor sends one array)")
    if name not in inputs:
        raise ReplayError(f"stage {args.model} has no input {name!r} (inputs: {', '.join(inputs) or 'none'})")
    if len(inputs) > 1:
        raise ReplayError(f"stage {args.model} takes {len(inputs)} inputs ({', '.join(inputs)}); tierdeck sensor "
                          "sends one array")
    spec = inputs[name]
    convert, note = fit_rows(rows, spec.datatype, list(spec.shape))
    return convert, name, note
