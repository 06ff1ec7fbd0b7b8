"""`tierdeck undeploy`: remove stages that are no longer wanted from the nodes that run them (headless).

The nodes come from the same places as for `tierdeck status` (fleet file, addresses, mDNS, the nodes the
console database remembers). Without `--on`, a stage is removed from every node that runs it; with it,
only from the nodes named. A stage that another node's stage escalates to is left alone unless `--force`
(its escalations would queue until it comes back), and so is everything with `--dry-run`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, TextIO

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
    parser.add_argument("stages", nargs="+", metavar="STAGE", help="stage id(s) to remove")
    parser.add_argument("--on", action="append", default=[], metavar="NODE",
                        help="only from this node: name, node id or HOST:PORT (repeatable; default every node)")
    parser.add_argument("--force", action="store_true",
                        help="also remove a stage that other stages still escalate to")
    parser.add_argument("--dry-run", action="store_true", help="say what would be removed, change nothing")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_fleet_options(parser)
    add_db_option(parser)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every stage was removed (or --dry-run), 1 when a stage was refused, failed or not found."""
    setup_logging(args.verbose)
    return run_headless("undeploy", lambda: _undeploy(args, sys.stdout))


async def _undeploy(args: argparse.Namespace, out: TextIO) -> int:
    core = core_for(args)
    report: list[dict[str, Any]] = []
    status = 0
    async with core:
        assert core.fleet is not None
        await async_connected(core, args)
        for stage_id in args.stages:
            targets, feeding = core.undeploy_targets(stage_id, args.on)
            entry: dict[str, Any] = {"stage": stage_id, "nodes": [n.name for n in targets], "fed_by": feeding,
                                     "removed": [], "failed": {}}
            if not targets:
                entry["refused"] = "no node runs it" + (f" among {', '.join(args.on)}" if args.on else "")
                status = 1
            elif feeding and not args.force:
                entry["refused"] = f"still a next hop: {'; '.join(feeding)} (redeploy those first, or --force)"
                status = 1
            elif not args.dry_run:
                results = await core.async_undeploy(stage_id, targets)
                entry["removed"] = [name for name, error in results.items() if not error]
                entry["failed"] = {name: error for name, error in results.items() if error}
                status = status or (1 if entry["failed"] else 0)
            report.append(entry)
        await asyncio.wrap_future(core.db.flush())
    if args.json:
        out.write(json.dumps({"dry_run": args.dry_run, "stages": report}, indent=2) + "\n")
        return status
    for entry in report:
        if "refused" in entry:
            out.write(f"{entry['stage']}: not removed: {entry['refused']}\n")
        elif args.dry_run:
            out.write(f"{entry['stage']}: would be removed from {', '.join(entry['nodes'])}\n")
        else:
            if entry["removed"]:
                out.write(f"{entry['stage']}: removed from {', '.join(entry['removed'])}\n")
            for name, error in entry["failed"].items():
                out.write(f"{entry['stage']}: not removed from {name}: {error}\n")
    return status
