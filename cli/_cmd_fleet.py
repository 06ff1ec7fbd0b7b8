"""`tierdeck fleet`: create the fleet CA, enrol nodes with their pairing code, revoke, issue client certificates."""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict
from pathlib import Path

from app.fleet_ca import FleetCA, FleetError, default_fleet_dir


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the fleet subcommands."""
    parser.add_argument("--fleet-dir", type=Path, default=None,
                        help=f"where the fleet CA lives (default {default_fleet_dir()})")
    sub = parser.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    sub.add_parser("init", help="create the fleet CA and the console's certificate")
    enroll = sub.add_parser("enroll", help="enrol an unenrolled node with the pairing code it printed")
    enroll.add_argument("address", metavar="HOST:PORT")
    enroll.add_argument("--code", required=True, help="the pairing code shown by the node")
    revoke = sub.add_parser("revoke", help="revoke a node or client (by node id, name or serial) fleet-wide")
    revoke.add_argument("who")
    client = sub.add_parser("client-cert", help="issue a certificate for a third-party OIP client")
    client.add_argument("name")
    client.add_argument("--out", type=Path, required=True, help="directory for key.pem, cert.pem, ca.pem")
    sub.add_parser("list", help="list what the fleet CA has issued")


def run(args: argparse.Namespace) -> int:
    """Run one fleet action."""
    directory = args.fleet_dir or default_fleet_dir()
    try:
        if args.fleet_command == "init":
            FleetCA.init(directory)
            print(f"fleet CA created in {directory}")
            return 0
        fleet = FleetCA(directory)
        if args.fleet_command == "enroll":
            member = asyncio.run(fleet.enroll(args.address, args.code))
            print(f"enrolled node {member.node_id} ({member.name}) at {member.address}, "
                  f"certificate fingerprint {member.fingerprint}")
        elif args.fleet_command == "revoke":
            hits, errors = asyncio.run(fleet.revoke(args.who))
            for member in hits:
                print(f"revoked {member.role} {member.name} (serial {member.serial})")
            for node_id, error in errors.items():
                print(f"warning: node {node_id} did not get the revocation list: {error}")
            return 1 if errors else 0
        elif args.fleet_command == "client-cert":
            member = fleet.issue_client(args.name, args.out)
            print(f"issued client certificate {member.serial} for {member.name} in {args.out}")
        elif args.fleet_command == "list":
            revoked = set(fleet.revoked())
            print(json.dumps([dict(asdict(m), revoked=int(m.serial) in revoked)
                              for m in fleet.members().values()], indent=1))
    except FleetError as exc:
        print(f"tierdeck fleet: {exc}")
        return 1
    return 0
