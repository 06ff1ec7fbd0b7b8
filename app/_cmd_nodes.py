"""`tierdeck nodes`: placeholder until discovery lands."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    parser.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Browse and print nodes."""
    raise SystemExit("tierdeck nodes: not built yet")
