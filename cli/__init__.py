"""The `tierdeck` command line: the console and its headless commands.

This package sits above both console layers: the headless commands use `app/` only, `console` and `demo`
also build `widgets/`. Nothing below it names it (import-linter contracts in pyproject.toml).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NamedTuple

from runners import __version__
from runners._lifeline import arm_from_env


class Command(NamedTuple):
    """A subcommand: its name, the module with `configure(parser)` and `run(args) -> int`, its one-line help."""

    name: str
    module: str
    help: str


# One line per command. Qt is imported only inside the run() of the commands that open windows, so the
# headless commands work without a display and without the console extra.
COMMANDS: tuple[Command, ...] = (
    Command("demo", "cli._cmd_demo", "a local demo fleet, sensor replays and the console (one command, no hardware)"),
    Command("nodes", "cli._cmd_nodes", "browse mDNS for tierdeck nodes and print them"),
    Command("fleet", "cli._cmd_fleet", "fleet identity: CA, node enrolment, revocation, client certificates"),
    Command("sensor", "cli._cmd_sensor", "replay recorded rows (.npz) into a stage, like a sensor (an OIP client)"),
    Command("deploy", "cli._cmd_deploy", "deploy a pipeline file to the fleet, all or nothing (headless)"),
    Command("undeploy", "cli._cmd_undeploy", "remove stages that are no longer wanted from the nodes that run them"),
    Command("dead-letters", "cli._cmd_dead_letters", "escalations a next hop refused: list, retry or discard"),
    Command("status", "cli._cmd_status", "show nodes, their state, stages and latest telemetry (headless)"),
    Command("export", "cli._cmd_export", "export telemetry, rollups, events and deployments as CSV or JSON"),
    Command("console", "cli._cmd_console", "the operations console: fleet, pipeline canvas, deploy, live dashboard"),
)


def build_parser() -> argparse.ArgumentParser:
    """Return the full argument parser with every subcommand configured."""
    parser = argparse.ArgumentParser(
        prog="tierdeck",
        description="tierdeck: operations console for cascaded inference at the edge.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        sub_parser = sub.add_parser(command.name, help=command.help, description=command.help)
        importlib.import_module(command.module).configure(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `tierdeck` command line; returns the process exit code (2: usage error)."""
    arm_from_env()  # first: a child of the demo dies with it (runners/_lifeline.py)
    # gRPC's own INFO lines (e.g. about fork handlers when the demo starts its sensors) are not for operators.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    module = importlib.import_module(next(c.module for c in COMMANDS if c.name == args.command))
    return int(module.run(args))
