"""Shadow sampling: does the miss estimate hold the truth, and what does it cost? (issue 16)

One run, one held-out stream (resources.scenes test split: 10,000 patches, --quick 2,000, 90 % water), the
ship-finder cascade (resources/pipelines/ship-finder.pipeline.json) on three `tierdeck-node` processes
(device → edge → cloud), driven over gRPC on loopback with the same batch size and concurrency:

- throughput: rounds of passes over the stream with the shadow rate of every linked stage set live
  (UpdatePolicy) to 0, 1 % and 5 %, one pass per rate per round in a rotating order, `--repeats` rounds; the
  cost of a rate is 1 − the median over rounds of (inputs/s at that rate / inputs/s at 0 % in the same round),
  so that the drift of a shared machine cancels; the agents' CPU-seconds per 1,000 inputs are reported too;
- the estimate: every shadow row of every pass counts (they are all samples of settled rows of the same
  stream), plus `--estimate-passes` passes at `--estimate-rate` (default 25 %) so that the interval is narrow
  enough to say something. Per link: the estimated miss rate (answered shadow rows the next tier classed
  differently / answered shadow rows) with its 95 % Wilson interval, beside
  * the true miss rate from the labels: for the detector (a class-of-interest rule, class_in vessel), settled
    rows that are really vessels; for the classifier, settled rows whose class is wrong;
  * the rate the estimate samples: the share of all settled rows the rest of the cascade answers differently
    (computed in-process on every settled row).

Targets: the true rate inside the interval on every link; throughput cost ≤ 2 % at 1 %.

Usage: python bench/shadow.py [--json OUT] [--quick] [--n N] [--batch B] [--concurrency C] [--repeats R]
                              [--estimate-rate R] [--estimate-passes P]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app._miss import ShadowCounts, miss_estimate
from app.pipeline_file import load_pipeline
from bench._common import ROOT, Agent, print_table, write_json
from bench.cascade import Node, deploy_cascade, drive, run_model, telemetry_snapshot
from resources import scenes
from runners._proto import tierdeck_control_pb2 as ctl
from runners.client import NodeClient

PIPELINE = ROOT / "resources" / "pipelines" / "ship-finder.pipeline.json"
RATES = (0.0, 0.01, 0.05)
TARGET_COST_AT_1 = 0.02


async def set_shadow_rate(nodes: list[Node], rate: float) -> None:
    """Set the shadow rate of every stage with a next hop, live (keeping its budget otherwise)."""
    for node in nodes[:-1]:
        async with NodeClient(node.agent.address) as client:
            info = next(s for s in await client.stages() if s.manifest.stage_id == node.stage)
            budget = ctl.Budget()
            budget.CopyFrom(info.manifest.budget)
            budget.shadow_rate = rate
            await client.update_policy(ctl.UpdatePolicyRequest(stage_id=node.stage, budget=budget))


async def shadow_totals(node: Node) -> ctl.StageTelemetry:
    """The stage's telemetry with every shadow row answered (waits for the link's last shadow call)."""
    deadline = time.monotonic() + 30
    while True:
        sample = await telemetry_snapshot(node.agent.address)
        st = next(s for s in sample.stages if s.stage_id == node.stage)
        if st.shadow_answered_total + st.shadow_shed_total >= st.shadow_sent_total or time.monotonic() > deadline:
            return st
        await asyncio.sleep(0.1)


def truths(chain: list[Any], x: np.ndarray, labels: np.ndarray) -> list[dict[str, float]]:
    """Per link, in-process: settled share, true miss rate (labels), and the next tier's disagreement on every
    settled row (what the shadow sample estimates)."""
    classes = list(chain[-1].rule.labels)
    d, c, h = (run_model(s.model_path, x) for s in chain)
    rule1, rule2 = chain[0].rule, chain[1].rule
    settled1 = (d.argmax(1) == list(rule1.labels).index("water")) & (d.max(1) >= rule1.confidence_below)
    reach2 = ~settled1
    settled2 = reach2 & (c.max(1) >= rule2.confidence_below)
    cascade_after1 = np.where(c.max(1) < rule2.confidence_below, h.argmax(1), c.argmax(1))  # classifier → heavy
    return [
        {"link": f"{chain[0].id} → {chain[1].id}", "settles": float(settled1.mean()),
         "settled_rows": int(settled1.sum()), "what": "vessels",
         "true_miss": float((labels[settled1] > 0).mean()),
         "next_tier_disagrees": float((cascade_after1[settled1] != classes.index("water")).mean())},
        {"link": f"{chain[1].id} → {chain[2].id}", "settles": float(settled2.sum() / max(1, reach2.sum())),
         "settled_rows": int(settled2.sum()), "what": "wrong class",
         "true_miss": float((labels[settled2] != c.argmax(1)[settled2]).mean()),
         "next_tier_disagrees": float((h.argmax(1)[settled2] != c.argmax(1)[settled2]).mean())},
    ]


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Start the cascade, measure throughput per shadow rate, then compare the estimate with the truth."""
    chain = load_pipeline(PIPELINE).chain()
    n = args.n or (2000 if args.quick else 10_000)
    images, labels = scenes.split("test", n)
    x = scenes.to_model_input(images)
    warm = scenes.to_model_input(scenes.split("val", 256)[0])
    print(f"stream: test split seed {scenes.SPLITS['test']}, {n} patches; batch {args.batch}, concurrency "
          f"{args.concurrency}; {args.repeats} pass(es) per shadow rate", flush=True)
    truth = truths(chain, x, labels)
    tiers = ["device", "edge", "cloud"]
    nodes = [Node(tiers[i], Agent(tmp / tiers[i], "--ort-threads", "1", name=f"shadow-{tiers[i]}", tier=tiers[i]),
                  s.id) for i, s in enumerate(chain)]
    throughput: dict[float, list[float]] = {r: [] for r in RATES}
    cpu: dict[float, list[float]] = {r: [] for r in RATES}
    try:
        await deploy_cascade(chain, nodes)
        await drive(nodes[0].agent.address, nodes[0].stage, warm, args.batch, args.concurrency, ["decision_label"])
        order = list(RATES)
        for r in range(args.repeats):
            for rate in order[r % len(order):] + order[:r % len(order)]:
                await set_shadow_rate(nodes, rate)
                cpu0 = sum(node.cpu() for node in nodes)
                t0 = time.perf_counter()
                await drive(nodes[0].agent.address, nodes[0].stage, x, args.batch, args.concurrency,
                            ["decision_label"])
                wall = time.perf_counter() - t0
                throughput[rate].append(n / wall)
                cpu[rate].append((sum(node.cpu() for node in nodes) - cpu0) / n * 1000)
                print(f"  pass {r + 1} shadow {rate * 100:g} %: {n / wall:,.0f} inputs/s", flush=True)
        await set_shadow_rate(nodes, args.estimate_rate)
        for p in range(args.estimate_passes):
            await drive(nodes[0].agent.address, nodes[0].stage, x, args.batch, args.concurrency, ["decision_label"])
            print(f"  estimate pass {p + 1} at shadow {args.estimate_rate * 100:g} %", flush=True)
        totals = [await shadow_totals(node) for node in nodes[:-1]]
    finally:
        for node in nodes:
            node.agent.stop()

    links = []
    for t, st in zip(truth, totals, strict=True):
        counts = ShadowCounts(st.shadow_sent_total, st.shadow_answered_total, st.shadow_agreed_total,
                              st.shadow_shed_total)
        est = miss_estimate(counts)
        links.append(t | {"shadow_sent": st.shadow_sent_total, "shadow_answered": st.shadow_answered_total,
                          "shadow_disagreed": est.disagreed, "shadow_shed": st.shadow_shed_total,
                          "estimate": est.rate, "low": est.low, "high": est.high,
                          "true_inside": est.low <= t["true_miss"] <= est.high,
                          "sampled_inside": est.low <= t["next_tier_disagrees"] <= est.high,
                          "pairs": {f"{p.settled}→{p.answered}": p.count for p in st.shadow.disagreements}})
    costs = {rate: 1.0 - statistics.median(a / b for a, b in zip(v, throughput[0.0], strict=True))
             for rate, v in throughput.items()}
    cpu_costs = {rate: statistics.median(a / b for a, b in zip(v, cpu[0.0], strict=True)) - 1.0
                 for rate, v in cpu.items()}
    return {"stream": {"split": "test", "seed": scenes.SPLITS["test"], "n": n},
            "settings": {"batch": args.batch, "concurrency": args.concurrency, "repeats": args.repeats,
                         "estimate_rate": args.estimate_rate, "estimate_passes": args.estimate_passes},
            "links": links,
            "throughput": {f"{rate:g}": {"inputs_per_s": v, "median": statistics.median(v),
                                         "cost": costs[rate], "agent_cpu_s_per_1000": cpu[rate],
                                         "cpu_cost": cpu_costs[rate]} for rate, v in throughput.items()},
            "targets": {"true_inside_every_link": all(link["true_inside"] for link in links),
                        "cost_at_1pct": costs[0.01], "cost_at_1pct_ok": costs[0.01] <= TARGET_COST_AT_1}}


def pct(value: float) -> str:
    """A share in percent with enough digits for small rates."""
    return f"{value * 100:.3f} %" if value < 0.01 else f"{value * 100:.2f} %"


def print_report(report: dict[str, Any]) -> None:
    """The two tables and the targets."""
    print("\nEstimated miss rate per link (95 % Wilson interval) beside the truth")
    print_table(["link", "settles", "shadow rows answered", "disagreed", "estimated miss (95 % CI)",
                 "true miss (labels)", "inside", "next tier on all settled rows", "inside"],
                [[link["link"], pct(link["settles"]), link["shadow_answered"], link["shadow_disagreed"],
                  f"{pct(link['estimate'])} ({pct(link['low'])}–{pct(link['high'])})",
                  f"{pct(link['true_miss'])} ({link['what']})", "yes" if link["true_inside"] else "NO",
                  pct(link["next_tier_disagrees"]), "yes" if link["sampled_inside"] else "NO"]
                 for link in report["links"]])
    print("\nThroughput against shadow rate (same run; rounds of one pass per rate; cost = median per-round ratio)")
    print_table(["shadow rate", "inputs/s (median)", "passes", "throughput cost vs 0 %",
                 "agent CPU-s / 1,000 inputs (median)", "CPU cost vs 0 %"],
                [[f"{float(rate) * 100:g} %", f"{t['median']:,.0f}",
                  " ".join(f"{v:,.0f}" for v in t["inputs_per_s"]), f"{t['cost'] * 100:+.2f} %",
                  f"{statistics.median(t['agent_cpu_s_per_1000']):.3f}", f"{t['cpu_cost'] * 100:+.2f} %"]
                 for rate, t in report["throughput"].items()])
    tg = report["targets"]
    inside = "yes" if tg["true_inside_every_link"] else "NO"
    print(f"\ntargets: true rate inside the interval on every link: {inside}; cost at 1 %: "
          f"{tg['cost_at_1pct'] * 100:+.2f} % (target ≤ 2 %): {'ok' if tg['cost_at_1pct_ok'] else 'MISSED'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="OUT", help="write the results here")
    parser.add_argument("--quick", action="store_true", help="2,000 patches instead of 10,000")
    parser.add_argument("--n", type=int, help="stream length (overrides --quick)")
    parser.add_argument("--batch", type=int, default=32, help="inputs per request (default 32)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="throughput passes per shadow rate (default 5)")
    parser.add_argument("--estimate-rate", type=float, default=0.25,
                        help="shadow rate of the extra passes for the estimate (default 0.25)")
    parser.add_argument("--estimate-passes", type=int, default=2, help="extra passes for the estimate (default 2)")
    args = parser.parse_args()
    if (args.n is not None and args.n < 1) or args.repeats < 1 or not 0 <= args.estimate_rate <= 1:
        parser.error("--n and --repeats must be positive, --estimate-rate in [0, 1]")
    with tempfile.TemporaryDirectory(prefix="tierdeck-shadow-") as tmp:
        report = asyncio.run(run(args, Path(tmp)))
        print_report(report)
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
