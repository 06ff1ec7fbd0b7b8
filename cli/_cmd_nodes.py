"""`tierdeck nodes`: browse mDNS (plus a fleet file) for tierdeck nodes and print them."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from typing import TextIO

from cli._common import add_fleet_id_option
from discovery import TIERS, Browser, NodeAdvert, NodeEvent, all_ipv4_interfaces

log = logging.getLogger(f"tierdeck.{__name__}")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    parser.add_argument(
        "--interface", action="append", default=[], metavar="IP",
        help="IPv4 address of an interface to browse on (repeatable; default: every IPv4 interface)",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS",
        help="how long to browse (default 3; with --watch: until interrupted)",
    )
    parser.add_argument("--fleet", metavar="FILE", help="also list the nodes of this fleet file")
    add_fleet_id_option(parser)
    parser.add_argument("--json", action="store_true",
                        help="print JSON: a list of nodes (with --watch: one event object per line)")
    parser.add_argument("--watch", action="store_true",
                        help="print nodes as they are added, updated and removed instead of a final list")
    parser.add_argument("-v", "--verbose", action="store_true", help="log discovery details to stderr")


def run(args: argparse.Namespace) -> int:
    """Browse and print nodes; returns the exit code."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    timeout = args.timeout if args.timeout is not None else (None if args.watch else 3.0)
    if timeout is not None and timeout < 0:
        print("tierdeck nodes: --timeout must be >= 0", file=sys.stderr)
        return 2
    interfaces = args.interface or all_ipv4_interfaces()
    try:
        browser = Browser(interfaces, fleet_file=args.fleet, fleet_id=args.fleet_id)
        return asyncio.run(_browse(browser, timeout, args.watch, args.json, sys.stdout))
    except (ValueError, OSError) as exc:
        print(f"tierdeck nodes: {exc}", file=sys.stderr)
        return 2


async def _browse(browser: Browser, timeout: float | None, watch: bool, as_json: bool, out: TextIO) -> int:
    """Browse for `timeout` seconds (or until SIGINT/SIGTERM) and print what was found."""
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, done.set)
    if watch:
        browser.subscribe(lambda event: _print_event(event, as_json, out))
    await browser.async_start()
    if watch and as_json:
        # Tells a reading program (tests, bench/discovery.py) that browsing has begun.
        out.write(json.dumps({"event": "browsing", "time": time.time(), "interfaces": browser.interfaces}) + "\n")
        out.flush()
    try:
        await asyncio.wait_for(done.wait(), timeout)
    except TimeoutError:
        pass
    finally:
        await browser.async_stop()
    if not watch:
        _print_nodes(list(browser.nodes().values()), as_json, out)
    return 0


def _print_event(event: NodeEvent, as_json: bool, out: TextIO) -> None:
    """One line per event, flushed at once so a pipe reader sees it when it happens."""
    if as_json:
        record: dict[str, object] = {"event": event.kind, "time": time.time(), "node": event.advert.as_json()}
        if event.previous_key:
            record["previous_key"] = event.previous_key
        out.write(json.dumps(record) + "\n")
    else:
        advert = event.advert
        out.write(f"{event.kind:<8} {advert.name} [{advert.tier or '?'}] {advert.address} id={advert.key}\n")
    out.flush()


def _print_nodes(nodes: list[NodeAdvert], as_json: bool, out: TextIO) -> None:
    """The final list: JSON objects, or a table grouped by tier."""
    order = {tier: index for index, tier in enumerate(TIERS)}
    nodes.sort(key=lambda n: (order.get(n.tier, len(order)), n.name.lower(), n.key))
    if as_json:
        out.write(json.dumps([node.as_json() for node in nodes], indent=2) + "\n")
        return
    if not nodes:
        out.write("no tierdeck nodes found\n")
        return
    rows = [("NAME", "TIER", "ADDRESS", "VERSION", "SOURCE", "ID")]
    rows += [(n.name, n.tier or "?", n.address, n.version or "-", n.source, n.key) for n in nodes]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.write("  ".join([*cells, row[-1]]) + "\n")
