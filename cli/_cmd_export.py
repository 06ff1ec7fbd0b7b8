"""`tierdeck export`: telemetry, rollups, events and deployments from the console database, as CSV or JSON."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import sqlite_utils

from app._db import connect, default_db_path, deployment_rows, event_rows, rollup_rows, telemetry_rows
from cli._common import add_db_option, parse_when

TABLES = ("telemetry", "rollup", "events", "deployments")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    add_db_option(parser)
    parser.add_argument("--since", default="24h", metavar="WHEN",
                        help="start: 30m, 2h, 7d ago, an ISO date/time, or Unix ms (default 24h)")
    parser.add_argument("--until", default=None, metavar="WHEN", help="end (default: now)")
    parser.add_argument("--table", action="append", choices=TABLES, default=None,
                        help="what to export (repeatable; default: telemetry and events; CSV takes one)")
    parser.add_argument("--node", default=None, metavar="NODE_ID", help="only this node's telemetry")
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV (one table)")
    fmt.add_argument("--json", action="store_true", help="JSON object keyed by table (the default)")
    parser.add_argument("--output", "-o", type=Path, default=None, metavar="FILE", help="write here, not stdout")


def run(args: argparse.Namespace) -> int:
    """Export; exit 0, or 2 on misuse (unknown database, bad time, several tables as CSV)."""
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
        data = {t: _rows(db, t, since, until, args.node) for t in tables}
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
