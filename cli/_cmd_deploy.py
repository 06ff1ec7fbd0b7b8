"""`tierdeck deploy`: plan a pipeline file onto the fleet, apply it all-or-nothing, report (headless)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, TextIO

from app._deployer import DeployProgress, Plan
from app.pipeline_file import PipelineError, load_pipeline
from cli._common import (
    add_db_option,
    add_fleet_options,
    async_gather_nodes,
    core_for,
    run_headless,
    setup_logging,
)
from runners._providers import short_name


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    parser.add_argument("pipeline", metavar="PIPELINE_FILE", help="the *.pipeline.json to deploy")
    add_fleet_options(parser)
    add_db_option(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object: plan, progress, result")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")


def run(args: argparse.Namespace) -> int:
    """Deploy; exit 0 on success (or nothing to do), 1 when the deployment failed or was refused, 2 on misuse."""
    setup_logging(args.verbose)
    try:
        pipeline = load_pipeline(args.pipeline)
    except PipelineError as exc:
        print(f"tierdeck deploy: {exc}", file=sys.stderr)
        return 2
    return run_headless("deploy", lambda: _deploy(args, pipeline, sys.stdout))


async def _deploy(args: argparse.Namespace, pipeline: Any, out: TextIO) -> int:
    core = core_for(args)
    progress: list[DeployProgress] = []

    def report(p: DeployProgress) -> None:
        progress.append(p)
        if not args.json:
            out.write(f"  {p.node_name:<16} {p.stage_id:<14} {p.step:<9} {p.status:<8} {p.message}\n")
            out.flush()

    async with core:
        assert core.fleet is not None
        await async_gather_nodes(core, args, remembered=False)
        await core.fleet.async_wait_settled(args.connect_timeout)
        the_plan = await core.async_plan(pipeline)
        if not args.json:
            _print_plan(the_plan, out)
        if not the_plan.ok or args.dry_run:
            if args.json:
                out.write(json.dumps({"plan": the_plan.as_json(), "result": None}, indent=2) + "\n")
            if not the_plan.ok:
                print(f"tierdeck deploy: refused: {'; '.join(the_plan.problems)}", file=sys.stderr)
                return 1
            return 0
        result = await core.async_apply(the_plan, report)
        await asyncio.wrap_future(core.db.flush())
    if args.json:
        out.write(json.dumps({"plan": the_plan.as_json(), "progress": [p.__dict__ for p in progress],
                              "result": result.as_json()}, indent=2) + "\n")
    else:
        out.write(f"deployment {result.deployment_id}: {result.status}\n")
        for node in result.nodes:
            if node.reason or node.rolled_back:
                back = f" (rolled back: {', '.join(node.rolled_back)})" if node.rolled_back else ""
                out.write(f"  {node.name}: {node.reason or 'ok'}{back}\n")
    if not result.ok:
        print(f"tierdeck deploy: failed: {result.reason}", file=sys.stderr)
        return 1
    return 0


def _print_plan(the_plan: Plan, out: TextIO) -> None:
    out.write(f"plan for {the_plan.pipeline.name}:\n")
    for node in the_plan.nodes:
        out.write(f"  {node.name} ({node.tier}, {node.address})\n")
        for a in node.actions:
            versions = f"{a.running_version or '-'} → {a.version or '-'}"
            hop = f" → {a.next_hop}" if a.next_hop else ""
            runs = f"  [{short_name(a.provider)}]" if a.provider else ""
            out.write(f"    {a.kind:<9} {a.stage_id:<14} {versions}  {a.reason}{hop}{runs}\n")
    for warning in the_plan.warnings:
        out.write(f"  warning: {warning}\n")
    for problem in the_plan.problems:
        out.write(f"  problem: {problem}\n")
    out.flush()
