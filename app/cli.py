"""The `tierdeck` command line: the console and its headless commands."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from runners._lifeline import arm_from_env

# Each command lives in its own module with `configure(parser)` and `run(args) -> int`; Qt is imported
# only inside the run() of the commands that open windows, so the headless commands work without a display.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("widgets._cmd_demo", "a local demo fleet, sensor replays and the console (one command, no hardware)"),
    "nodes": ("app._cmd_nodes", "browse mDNS for tierdeck nodes and print them"),
    "fleet": ("app._cmd_fleet", "fleet identity: CA, node enrolment, revocation, client certificates"),
    "sensor": ("app._cmd_sensor", "replay recorded rows (.npz) into a stage, like a sensor (an OIP client)"),
    "deploy": ("app._cmd_deploy", "deploy a pipeline file to the fleet, all or nothing (headless)"),
    "undeploy": ("app._cmd_undeploy", "remove stages that are no longer wanted from the nodes that run them"),
    "dead-letters": ("app._cmd_dead_letters", "escalations a next hop refused, per link: list, retry or discard"),
    "status": ("app._cmd_status", "show nodes, their state, stages and latest telemetry (headless)"),
    "export": ("app._cmd_export", "export telemetry, rollups, events and deployments as CSV or JSON"),
    "console": ("widgets._cmd_console", "the operations console: fleet, pipeline canvas, deploy, live dashboard"),
}


def build_parser() -> argparse.ArgumentParser:
    """Return the full argument parser with every subcommand configured."""
    parser = argparse.ArgumentParser(
        prog="tierdeck",
        description="tierdeck: operations console for cascaded inference at the edge.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).configure(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `tierdeck` command line; returns the process exit code."""
    arm_from_env()  # first: a child of the demo dies with it (runners/_lifeline.py)
    # gRPC's own INFO lines (e.g. about fork handlers when the demo starts its sensors) are not for operators.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.run(args))


if __name__ == "__main__":
    sys.exit(main())
