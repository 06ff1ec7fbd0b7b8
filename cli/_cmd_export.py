"""`tierdeck export`: telemetry, rollups, events and deployments from the console database, as CSV or JSON;
with `--hard-examples OUT`, the nodes' hard examples as a dataset (OUT.npz + OUT.json, see app/_hard_examples.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import sqlite_utils

from app._db import connect, default_db_path, deployment_rows, event_rows, rollup_rows, telemetry_rows
from cli._common import (
    add_db_option,
    add_fleet_id_option,
    async_connected,
    core_for,
    parse_when,
    run_headless,
    setup_logging,
)

TABLES = ("telemetry", "rollup", "events", "deployments")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    add_db_option(parser)
    parser.add_argument("--since", default="24h", metavar="WHEN",
                        help="start: 30m, 2h, 7d ago, an ISO date/time, or Unix ms (default 24h)")
    parser.add_argument("--until", default=None, metavar="WHEN", help="end (default: now)")
    parser.add_argument("--table", action="append", choices=TABLES, default=None,
                        help="what to export (repeatable; default: telemetry and events; CSV takes one)")
    parser.add_argument("--node", action="append", default=[], metavar="NODE",
                        help="telemetry: only this node's (its node id); with --hard-examples: a node to pull from, "
                             "HOST:PORT (repeatable)")
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV (one table)")
    fmt.add_argument("--json", action="store_true", help="JSON object keyed by table (the default)")
    parser.add_argument("--output", "-o", type=Path, default=None, metavar="FILE", help="write here, not stdout")
    hard = parser.add_argument_group(
        "hard examples", "--hard-examples OUT pulls the rows the nodes' ledgers kept (escalated, and shadow rows that "
        "disagreed), joined across nodes, within --since/--until, and writes OUT.npz (one array per input, stacked, "
        "and `labels`: the final answer) and OUT.json (labels, every stage's scores, provenance). Nodes: --node, "
        "--fleet, --interface (mDNS), else those the console database remembers")
    hard.add_argument("--hard-examples", type=Path, default=None, metavar="OUT", help="write the dataset here")
    hard.add_argument("--link", default="", metavar="'A → B'",
                      help="only rows that crossed this link (e.g. 'detector → classifier'; '->' works too)")
    hard.add_argument("--class", dest="label", default="", metavar="LABEL",
                      help="only rows where some stage answered this class")
    hard.add_argument("--disagreed", action="store_true",
                      help="only rows where a stage's answer differed from the one that came back from above it")
    hard.add_argument("--kind", choices=("escalated", "shadow_disagreed"), default="", help="only this kind")
    hard.add_argument("--limit", type=int, default=5000,
                      help="newest entries pulled per node, in pages of 1000 (default 5000)")
    hard.add_argument("--fleet", metavar="FILE", help="fleet file: one HOST:PORT [TIER] [NAME] per line, or JSON")
    hard.add_argument("--interface", action="append", default=[], metavar="IP",
                      help="browse mDNS on this IPv4 interface (repeatable)")
    add_fleet_id_option(hard)
    hard.add_argument("--discover-seconds", type=float, default=None, metavar="S",
                      help="how long to browse mDNS (default 3 when browsing)")
    hard.add_argument("--connect-timeout", type=float, default=15.0, metavar="S",
                      help="how long to wait for nodes to answer (default 15)")
    hard.add_argument("--tls", action="store_true", help="dial nodes with mutual TLS using the fleet CA")
    hard.add_argument("--fleet-dir", type=Path, default=None, metavar="DIR", help="where the fleet CA lives (--tls)")
    hard.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")


def run(args: argparse.Namespace) -> int:
    """Export; exit 0, or 2 on misuse (unknown database, bad time, several tables as CSV); with --hard-examples
    exit 1 when nothing matched or a node could not be read."""
    if args.hard_examples is not None:
        setup_logging(args.verbose)
        return run_headless("export", lambda: _hard_examples(args, sys.stdout))
    if len(args.node) > 1:
        print("tierdeck export: telemetry takes one --node (a node id)", file=sys.stderr)
        return 2
    path = args.db or default_db_path()
    if not Path(path).exists():
        print(f"tierdeck export: no database at {path}", file=sys.stderr)
        return 2
    try:
        since = parse_when(args.since)
        until = parse_when(args.until) if args.until else None
    except ValueError as exc:
        print(f"tierdeck export: {exc}", file=sys.stderr)
        return 2
    tables = args.table or (["telemetry"] if args.csv else ["telemetry", "events"])
    if args.csv and len(tables) != 1:
        print("tierdeck export: --csv exports one --table at a time", file=sys.stderr)
        return 2
    db = sqlite_utils.Database(connect(path, readonly=True))
    try:
        data = {t: _rows(db, t, since, until, args.node[0] if args.node else None) for t in tables}
    finally:
        db.conn.close()
    out: TextIO = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    try:
        if args.csv:
            _write_csv(data[tables[0]], out)
        else:
            json.dump({"since_ms": since, "until_ms": until, **data}, out, indent=1, default=str)
            out.write("\n")
    finally:
        if args.output:
            out.close()
    return 0


def _rows(db: sqlite_utils.Database, table: str, since: int, until: int | None, node: str | None
          ) -> list[dict[str, Any]]:
    if table == "telemetry":
        return telemetry_rows(db, since, until, node)
    if table == "rollup":
        return rollup_rows(db, since, until, node)
    if table == "events":
        return event_rows(db, since, until)
    return deployment_rows(db, since)


def _write_csv(rows: list[dict[str, Any]], out: TextIO) -> None:
    if not rows:
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in row.items()})


async def _hard_examples(args: argparse.Namespace, out: TextIO) -> int:
    """Pull, join, filter and write the dataset; prints one JSON summary line."""
    from app._hard_examples import RowFilter
    from runners._proto import tierdeck_control_pb2 as ctl

    since = parse_when(args.since)
    until = parse_when(args.until) if args.until else 0
    wanted = RowFilter(link=args.link.replace("->", "→"), label=args.label,
                       disagreed_only=args.disagreed, kind=args.kind, since_ms=since, until_ms=until or 0)
    core = core_for(args)
    async with core:
        await async_connected(core, args)
        # The time bounds go to the nodes; link, class and disagreement are properties of the joined row.
        request = ctl.ListHardExamplesRequest(since_unix_ms=since, until_unix_ms=until or 0,
                                              limit=max(1, min(args.limit, 1000)))
        pull = await core.async_hard_examples(request)
        while True:  # older pages, per node, up to --limit entries each
            older = {k: seq for k, seq in pull.older().items() if pull.fetched.get(k, 0) < args.limit}
            if not older:
                break
            pull = pull.merge(await core.async_hard_examples(request, before=older))
        rows = [row for row in pull.rows() if wanted.matches(row)]
        summary: dict[str, Any] = {"rows": len(rows), "nodes": sorted(pull.ledgers), "errors": pull.errors,
                                   "pulled_at_unix_ms": int(time.time() * 1000)}
        if rows:
            source = f"tierdeck export --hard-examples {args.hard_examples}"
            written = await core.async_export_hard_examples(rows, args.hard_examples, source=source)
            summary.update(npz=str(written.npz), manifest=str(written.manifest), rows=written.rows,
                           skipped=len(written.skipped))
    json.dump(summary, out)
    out.write("\n")
    if not rows:
        print("tierdeck export: no hard examples matched"
              + (f" (not read: {', '.join(sorted(pull.errors))})" if pull.errors else ""), file=sys.stderr)
    return 0 if rows and not pull.errors else 1
