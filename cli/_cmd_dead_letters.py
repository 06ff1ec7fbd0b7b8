"""`tierdeck dead-letters`: escalations a next hop refused as invalid, per link — list, retry or discard them.

A next hop that answers a forwarded row with INVALID_ARGUMENT (wrong tensor, a model that changed under
the link) gets that row set aside on the sending node rather than retried forever: a dead letter. They stay
on the node (with the reason and when) until the operator puts them back in the queue (`--retry`, after
fixing the hop) or drops them (`--discard`). The counts are the node's telemetry (`dead_letters`,
`dead_letter_total`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, TextIO

import grpc

from cli._common import (
    add_db_option,
    add_fleet_options,
    async_connected,
    core_for,
    run_headless,
    setup_logging,
)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    parser.add_argument("stage", nargs="?", default="", metavar="STAGE",
                        help="the stage whose escalations were refused (default: every stage; required to act)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--retry", action="store_true", help="put them back in the queue toward the next hop")
    action.add_argument("--discard", action="store_true", help="drop them for good")
    parser.add_argument("--seq", type=int, action="append", default=[], metavar="N",
                        help="only these letters (repeatable; default all of the stage)")
    parser.add_argument("--on", action="append", default=[], metavar="NODE",
                        help="only on this node: name, node id or HOST:PORT (repeatable)")
    parser.add_argument("--limit", type=int, default=100, help="letters listed per node (default 100)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_fleet_options(parser)
    add_db_option(parser)


def run(args: argparse.Namespace) -> int:
    """List (exit 0) or retry/discard (exit 0 when done, 1 when a node refused); 2 on misuse."""
    setup_logging(args.verbose)
    if (args.retry or args.discard) and not args.stage:
        print("tierdeck dead-letters: name the STAGE to --retry or --discard", file=sys.stderr)
        return 2
    return run_headless("dead-letters", lambda: _dead_letters(args, sys.stdout))


async def _dead_letters(args: argparse.Namespace, out: TextIO) -> int:
    core = core_for(args)
    report: list[dict[str, Any]] = []
    status = 0
    async with core:
        assert core.fleet is not None
        await async_connected(core, args)
        wanted = set(args.on)
        for node, listing in await core.async_dead_letters(args.stage, args.limit):
            if wanted and not wanted & {node.name, node.node_id, node.key, node.address}:
                continue
            entry: dict[str, Any] = {"node": node.name, "total": listing.total, "letters": [
                {"seq": d.seq, "stage": d.stage_id, "request_id": d.request_id, "error": d.error,
                 "age_s": round(time.time() - d.dead_unix_ms / 1000, 1) if d.dead_unix_ms else None,
                 "bytes": d.payload_bytes} for d in listing.letters]}
            if (args.retry or args.discard) and listing.total:
                try:
                    entry["retried" if args.retry else "discarded"] = await core.async_settle_dead_letters(
                        node, args.stage, args.retry, args.seq)
                except grpc.aio.AioRpcError as exc:
                    entry["error"] = f"{exc.code().name}: {exc.details()}"
                    status = 1
                except ConnectionError as exc:
                    entry["error"] = str(exc)
                    status = 1
            report.append(entry)
        await asyncio.wrap_future(core.db.flush())
    if args.json:
        out.write(json.dumps({"stage": args.stage, "nodes": report}, indent=2) + "\n")
        return status
    if not any(e["total"] for e in report):
        out.write("no dead letters\n")
    for entry in report:
        if not entry["total"]:
            continue
        out.write(f"{entry['node']}: {entry['total']} dead letter(s)\n")
        for d in entry["letters"]:
            age = f"{d['age_s']:.0f} s ago" if d["age_s"] is not None else "age unknown"
            out.write(f"  #{d['seq']:<6} {d['stage']:<14} {age:<14} {d['error']}\n")
        for key in ("retried", "discarded"):
            if key in entry:
                out.write(f"  {entry[key]} {key}\n")
        if "error" in entry:
            out.write(f"  refused: {entry['error']}\n")
    return status
