"""Options and helpers shared by the commands."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import re
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any

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


def add_node_sources(parser: argparse.ArgumentParser) -> None:
    """Where the nodes come from: fleet file, addresses, mDNS interfaces, the fleet id that scopes mDNS."""
    parser.add_argument("--fleet", metavar="FILE", help="fleet file: one HOST:PORT [TIER] [NAME] per line, or JSON")
    parser.add_argument("--node", action="append", default=[], metavar="HOST:PORT",
                        help="a node by address (repeatable)")
    parser.add_argument("--interface", action="append", default=[], metavar="IP",
                        help="browse mDNS on this IPv4 interface (repeatable); without --fleet/--node/--interface "
                             "every IPv4 interface is browsed")
    add_fleet_id_option(parser)


def add_fleet_options(parser: argparse.ArgumentParser) -> None:
    """Where the nodes come from (see add_node_sources), how long to look, and how to dial them."""
    add_node_sources(parser)
    parser.add_argument("--discover-seconds", type=float, default=None, metavar="S",
                        help="how long to browse mDNS before acting (default 3 when browsing)")
    parser.add_argument("--connect-timeout", type=float, default=15.0, metavar="S",
                        help="how long to wait for nodes to answer (default 15)")
    parser.add_argument("--tls", action="store_true",
                        help="dial nodes with mutual TLS using the fleet CA (see `tierdeck fleet`); default insecure")
    parser.add_argument("--fleet-dir", type=Path, default=None, metavar="DIR",
                        help="where the fleet CA lives (with --tls; default: the user data dir)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")


def add_fleet_id_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--fleet-id ID`: show and act on only the mDNS nodes that advertise this fleet id."""
    parser.add_argument("--fleet-id", default="", metavar="ID", type=_fleet_id,
                        help="only the mDNS nodes started with `tierdeck-node --fleet-id ID` (other fleets and stray "
                             "nodes on the segment are left out; nodes given by address are kept)")


def _fleet_id(text: str) -> str:
    from discovery import check_fleet_id

    if not text:  # argparse runs the default through here too: "" = no scope
        return ""
    try:
        return check_fleet_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def tls_for(args: argparse.Namespace) -> ClientTLS | None:
    """The console's fleet credentials with --tls, else None (insecure, loopback development)."""
    if not args.tls:
        return None
    from app.fleet_ca import FleetCA, FleetError, default_fleet_dir

    try:
        return FleetCA(args.fleet_dir or default_fleet_dir()).console_tls()
    except (FleetError, OSError) as exc:
        raise ValueError(str(exc)) from exc


def revocations_for(args: argparse.Namespace) -> Callable[[], list[int]] | None:
    """With --tls: reads the fleet's revoked serials, for the console to push to each node it (re)connects to."""
    if not args.tls:
        return None
    from app.fleet_ca import FleetCA, default_fleet_dir

    return FleetCA(args.fleet_dir or default_fleet_dir()).revoked


def core_for(args: argparse.Namespace) -> Any:
    """The console core a headless command works through, set up from its fleet options."""
    from app._console import ConsoleCore

    return ConsoleCore(args.db, interfaces=interfaces_for(args), fleet_file=args.fleet, tls=tls_for(args),
                       fleet_id=args.fleet_id, revocations=revocations_for(args))


def interfaces_for(args: argparse.Namespace) -> list[str]:
    """mDNS interfaces: those given, or every IPv4 interface when no other source was given."""
    if args.interface:
        return list(args.interface)
    if args.fleet or args.node:
        return []
    from discovery import all_ipv4_interfaces

    return all_ipv4_interfaces()


async def async_gather_nodes(core: Any, args: argparse.Namespace, *, remembered: bool = True) -> None:
    """Add the nodes the options name (and, when none is named, those the database remembers); browse mDNS
    for a while when it is on."""
    addresses = list(args.node)
    if remembered and not (args.fleet or args.node or args.interface):
        addresses += await asyncio.wrap_future(core.db.read(lambda db: [row["address"] for row in db.query(
            "SELECT address FROM nodes WHERE forgotten = 0 AND address IS NOT NULL AND address != ''")]))
    for address in addresses:
        core.fleet.add_address(address)
    if interfaces_for(args):
        await asyncio.sleep(args.discover_seconds if args.discover_seconds is not None else 3.0)


async def async_connected(core: Any, args: argparse.Namespace) -> None:
    """`async_gather_nodes`, then wait (up to --connect-timeout) until every node answered or is offline."""
    from app._records import NodeState

    await async_gather_nodes(core, args)
    settled = (NodeState.OFFLINE, NodeState.ONLINE, NodeState.DEGRADED)
    await core.fleet.async_wait_for(lambda nodes: all(n.state in settled for n in nodes), args.connect_timeout)


def run_headless(command: str, work: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run a headless command's coroutine; a bad option or an unreachable file is a usage error (exit 2)."""
    try:
        return asyncio.run(work())
    except (OSError, ValueError) as exc:
        print(f"tierdeck {command}: {exc}", file=sys.stderr)
        return 2


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
