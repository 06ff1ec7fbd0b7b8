"""Options and helpers shared by the commands."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import re
import sys
import time
from datetime import datetime
from pathlib import Path

from app._db import default_db_path
from runners.client import ClientTLS

CONSOLE_EXTRA = ("PySide6", "pyqtgraph")


def missing_console_extra(command: str) -> str | None:
    """One line saying how to install the console extra when `command` needs it and it is missing, else None."""
    missing = [name for name in CONSOLE_EXTRA if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (f"tierdeck {command} needs the console extra ({', '.join(missing)} missing): "
            "pip install 'tierdeck[console]' (from a checkout: pip install '.[console]')")


def add_db_option(parser: argparse.ArgumentParser) -> None:
    """`--db PATH` (default: the console database in the user data dir)."""
    parser.add_argument("--db", type=Path, default=None, metavar="PATH",
                        help=f"console database (default: {default_db_path()})")


def add_fleet_options(parser: argparse.ArgumentParser) -> None:
    """Where the nodes come from: fleet file, addresses, mDNS interfaces."""
    parser.add_argument("--fleet", metavar="FILE", help="fleet file: one HOST:PORT [TIER] [NAME] per line, or JSON")
    parser.add_argument("--node", action="append", default=[], metavar="HOST:PORT",
                        help="a node by address (repeatable)")
    parser.add_argument("--interface", action="append", default=[], metavar="IP",
                        help="browse mDNS on this IPv4 interface (repeatable); without --fleet/--node/--interface "
                             "every IPv4 interface is browsed")
    parser.add_argument("--discover-seconds", type=float, default=None, metavar="S",
                        help="how long to browse mDNS before acting (default 3 when browsing)")
    parser.add_argument("--connect-timeout", type=float, default=15.0, metavar="S",
                        help="how long to wait for nodes to answer (default 15)")
    parser.add_argument("--tls", action="store_true",
                        help="dial nodes with mutual TLS using the fleet CA (see `tierdeck fleet`); default insecure")
    parser.add_argument("--fleet-dir", type=Path, default=None, metavar="DIR",
                        help="where the fleet CA lives (with --tls; default: the user data dir)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")


def tls_for(args: argparse.Namespace) -> ClientTLS | None:
    """The console's fleet credentials with --tls, else None (insecure, loopback development)."""
    if not args.tls:
        return None
    from app.fleet_ca import FleetCA, FleetError, default_fleet_dir

    try:
        return FleetCA(args.fleet_dir or default_fleet_dir()).console_tls()
    except (FleetError, OSError) as exc:
        raise ValueError(str(exc)) from exc


def interfaces_for(args: argparse.Namespace) -> list[str]:
    """mDNS interfaces: those given, or every IPv4 interface when no other source was given."""
    if args.interface:
        return list(args.interface)
    if args.fleet or args.node:
        return []
    from discovery import all_ipv4_interfaces

    return all_ipv4_interfaces()


def setup_logging(verbose: bool) -> None:
    """Log to stderr; WARNING unless --verbose."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_when(text: str, now: float | None = None) -> int:
    """A time as Unix ms: '15m'/'2h'/'7d' ago, an ISO 8601 date/time (local time unless it has a zone), or ms."""
    now = time.time() if now is None else now
    text = text.strip()
    match = _RELATIVE.match(text)
    if match:
        return int((now - float(match.group(1)) * _UNITS[match.group(2)]) * 1000)
    if text.isdigit():
        return int(text)
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use e.g. 30m, 2h, 7d, 2025-01-31T12:00 or Unix ms)") from None
