"""From an empty canvas to a live three-tier cascade on a real X display: how many operator actions, how long.

Xvfb + openbox + xdotool (tests/display.py): `tierdeck demo --empty` (a demo fleet of real agents on
loopback, default 4 device, 2 edge, 1 cloud) shows its window; the "operator" is xdotool moving the real
mouse and pressing real keys:

1-3. drag detector.onnx onto the Device lane, classifier.onnx onto Edge, heavy.onnx onto Cloud
     (each stage starts with its model card's recommended rule and threshold);
4.   Ctrl+D (plan);  5. Enter (Deploy — the button has the focus once the plan is ready).

Every click, drag and key press is counted. Reported: the actions, seconds from window-up to the fleet
on the canvas, to the first drag and to deploy succeeded, and afterwards the inferences/s and escalated/s
per tier (mean of the probe's samples over --measure seconds; the sensors replay --rate patches/s into
each device node). Target (issue #11): ≤ 8 actions and < 60 s, every tier receiving traffic.

Usage: python bench/compose.py [--json OUT] [--device 4 --edge 2 --cloud 1] [--rate 20] [--measure 20]
                               [--screenshots DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from display import Console, Operator, XDisplay, missing_tools  # noqa: E402

TIERS = ("device", "edge", "cloud")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One empty-canvas-to-live-cascade run; returns the report."""
    folder = Path(tempfile.mkdtemp(prefix="tierdeck-compose-"))
    shots = args.screenshots
    with XDisplay() as display:
        console = Console(display, folder, device=args.device, edge=args.edge, cloud=args.cloud, rate=args.rate)
        op = Operator(display)
        try:
            p = console.wait(lambda p: p["window"]["visible"] and p["palette"], 120, "the window")
            t_window = time.monotonic()
            nodes = args.device + args.edge + args.cloud
            console.wait(lambda p: len(p["cards"]) == nodes and all(n["state"] == "online" and n["node_id"]
                                                                   for n in p["nodes"]), 180, "the fleet")
            t_fleet = time.monotonic()
            if shots:
                display.screenshot(shots / "compose-0-empty.png")
            for i, (model, tier) in enumerate((("detector", "device"), ("classifier", "edge"), ("heavy", "cloud"))):
                p = console.probe()
                op.drag(p["palette"][f"{model}.onnx"], p["lanes"][tier], model)
                console.wait(lambda p, n=i + 1: len(p["stages"]) == n, 15, f"{model} placed")
                if shots:
                    display.screenshot(shots / f"compose-{i + 1}-{model}.png")
            op.key("ctrl+d")
            console.wait(lambda p: any(d.get("deploy_enabled") for d in p["dialogs"]), 60, "the plan")
            if shots:
                display.screenshot(shots / "compose-4-plan.png")
            op.key("Return")
            p = console.wait(lambda p: p["deploy"] is not None, 240, "the deployment")
            t_deployed = time.monotonic()
            if not p["deploy"]["ok"]:
                raise RuntimeError(f"deploy failed: {p['deploy']}")
            actions = list(op.actions)
            console.wait(lambda p: all(p["tiers"].get(t, {}).get("inferences_total", 0) > 0 for t in TIERS), 90,
                         "traffic at every tier")
            samples: dict[str, list[tuple[float, float]]] = {t: [] for t in TIERS}
            end = time.monotonic() + args.measure
            while time.monotonic() < end:
                tiers = console.probe().get("tiers", {})
                for t in TIERS:
                    row = tiers.get(t, {})
                    samples[t].append((row.get("inferences_per_s", 0.0), row.get("escalated_per_s", 0.0)))
                time.sleep(1.0)
            if shots:
                op.key("ctrl+shift+d")
                time.sleep(3)
                display.screenshot(shots / "compose-5-dashboard.png")
        finally:
            console.stop()
    per_tier = {t: {"inferences_per_s": round(statistics.fmean(v[0] for v in samples[t]), 1) if samples[t] else 0.0,
                    "escalated_per_s": round(statistics.fmean(v[1] for v in samples[t]), 2) if samples[t] else 0.0}
                for t in TIERS}
    seconds = t_deployed - t_window
    return {
        "fleet": {"device": args.device, "edge": args.edge, "cloud": args.cloud, "rate_per_device": args.rate},
        "actions": len(actions), "action_list": actions,
        "seconds_window_to_fleet_on_canvas": round(t_fleet - t_window, 1),
        "seconds_fleet_to_deployed": round(t_deployed - t_fleet, 1),
        "seconds_window_to_deployed": round(seconds, 1),
        "tiers": per_tier,
        "target": {"actions_max": 8, "seconds_max": 60},
        "ok": len(actions) <= 8 and seconds < 60 and all(per_tier[t]["inferences_per_s"] > 0 for t in TIERS),
    }


def table(report: dict[str, Any]) -> str:
    """The report as a text table."""
    lines = [f"fleet: {report['fleet']}",
             f"operator actions to a live cascade: {report['actions']} ({', '.join(report['action_list'])})",
             f"window up → fleet on canvas: {report['seconds_window_to_fleet_on_canvas']:.1f} s; "
             f"fleet → deploy succeeded: {report['seconds_fleet_to_deployed']:.1f} s; "
             f"window up → deploy succeeded: {report['seconds_window_to_deployed']:.1f} s",
             "", f"{'tier':<8} {'inferences/s':>13} {'escalated/s':>12}"]
    for tier, row in report["tiers"].items():
        lines.append(f"{tier:<8} {row['inferences_per_s']:>13.1f} {row['escalated_per_s']:>12.2f}")
    lines.append("")
    lines.append(f"target ≤ {report['target']['actions_max']} actions and < {report['target']['seconds_max']} s, "
                 f"traffic at every tier: {'MET' if report['ok'] else 'NOT MET'}")
    return "\n".join(lines)


def main() -> int:
    """Parse arguments, run once, print the table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the report here")
    parser.add_argument("--device", type=int, default=4)
    parser.add_argument("--edge", type=int, default=2)
    parser.add_argument("--cloud", type=int, default=1)
    parser.add_argument("--rate", type=float, default=20.0, help="patches/s replayed into each device node")
    parser.add_argument("--measure", type=float, default=20.0, help="seconds of traffic to average")
    parser.add_argument("--screenshots", type=Path, default=None, metavar="DIR", help="a screenshot per step")
    args = parser.parse_args()
    if missing_tools():
        print(f"needs {', '.join(missing_tools())} (apt-get install xvfb xdotool openbox)", file=sys.stderr)
        return 2
    report = run(args)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
