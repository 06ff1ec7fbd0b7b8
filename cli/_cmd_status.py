"""`tierdeck status`: nodes, their state and stages, and their latest telemetry figures (headless)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from app._records import NodeSample, NodeSnapshot, NodeState
from cli._common import (
    add_db_option,
    add_fleet_options,
    async_gather_nodes,
    core_for,
    run_headless,
    setup_logging,
)
from runners._providers import short_name
from runners.protocol import STAGE_COUNTERS


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    add_fleet_options(parser)
    add_db_option(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list of nodes")
    parser.add_argument("--no-remembered", action="store_true",
                        help="do not contact the nodes remembered in the database")


def run(args: argparse.Namespace) -> int:
    """Print the fleet's status; exit 0 when every node is online, 1 when some is degraded/offline, 2 on misuse."""
    setup_logging(args.verbose)
    return run_headless("status", lambda: _status(args, sys.stdout))


async def _status(args: argparse.Namespace, out: TextIO) -> int:
    core = core_for(args)
    async with core:
        assert core.fleet is not None
        await async_gather_nodes(core, args, remembered=not args.no_remembered)

        def settled(nodes: list[NodeSnapshot]) -> bool:
            return all(n.state == NodeState.OFFLINE or n.node_id in core.latest for n in nodes)

        await core.fleet.async_wait_for(settled, args.connect_timeout)
        nodes = core.fleet.nodes()
        latest = dict(core.latest)
    rows = [_node_json(n, latest.get(n.node_id)) for n in nodes]
    if args.json:
        out.write(json.dumps(rows, indent=2) + "\n")
    else:
        _print_table(rows, out)
    return 0 if all(n.state == NodeState.ONLINE for n in nodes) else 1


def _node_json(node: NodeSnapshot, sample: NodeSample | None) -> dict[str, Any]:
    row = node.as_json()
    if sample is not None:
        row["telemetry"] = {
            "ts_ms": sample.ts_ms, "cpu_percent": sample.cpu_percent, "rss_bytes": sample.rss_bytes,
            "power_watts": sample.power_watts, "power_source": sample.power_source,
            "power_measured": sample.power_measured, "energy_joules_total": sample.energy_joules_total,
            "backlog": sample.backlog,
            "stages": {s.stage_id: {
                **{name: getattr(s, name) for name in STAGE_COUNTERS},  # every counter the agent sends
                "inferences_per_s": s.inferences_per_s, "escalation_rate": s.escalation_rate,
                "latency_p95_ms": s.latency_p95_ms, "queue_depth": s.queue_depth, "link_state": s.link_state,
                } for s in sample.stages},
        }
    else:
        row["telemetry"] = None
    return row


def _print_table(rows: list[dict[str, Any]], out: TextIO) -> None:
    if not rows:
        out.write("no nodes (give --fleet, --node or --interface)\n")
        return
    table = [("NAME", "TIER", "STATE", "ADDRESS", "STAGES", "CPU%", "POWER", "INFER/S", "ESC")]
    for r in rows:
        t = r["telemetry"]
        stages = ", ".join(f"{s['stage_id']}@{s['version']}"
                           + (f" on {short_name(s['runs_on'])}" if s.get("runs_on") else "")
                           for s in r["stages"]) or "-"
        if t is not None:
            power = f"{t['power_watts']:.1f} W" + ("" if t["power_measured"] else " est")
            rate = sum(s["inferences_per_s"] for s in t["stages"].values())
            esc = max((s["escalation_rate"] for s in t["stages"].values()), default=0.0)
            figures = (f"{t['cpu_percent']:.1f}", power, f"{rate:.1f}", f"{esc:.2f}")
        else:
            figures = ("-", "-", "-", "-")
        state = r["state"] + (f" ({'; '.join(r['reasons'])})" if r["reasons"] else "")
        table.append((r["name"], r["tier"] or "?", state, r["address"], stages, *figures))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    for row in table:
        out.write("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
    out.write(f"({len(rows)} nodes, {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
