"""Soak: the three-tier demo cascade under sustained load while the links between tiers flap.

Three agents (device, edge, cloud) and a client each get a host of their own: network namespaces on
one bridge (tests/netns.py), so a flap is a real `ip link set eth0 down` on a real interface. The
client deploys the ship-finder pipeline with `tierdeck deploy` and replays the held-out patches with
`tierdeck sensor` for the whole run; every `--flap-every` seconds one tier's link (cloud, then edge,
alternating) goes down for `--flap-down` seconds. Afterwards the store-and-forward queues drain and
every agent's counters are read back to account for each escalation:

    lost = escalated - shed - refused at the bound - answered by the next hop - delivered later - still queued
    and the next tier must have run exactly (answered + delivered) rows: once each, none twice.

RSS and open file descriptors of every agent are sampled through the run.
Usage: python bench/soak.py --minutes 10 --json OUT   (needs root for `ip netns`)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from netns import AGENT, Agent, NetLab, netns_permitted  # noqa: E402

from bench._common import print_table, write_json  # noqa: E402

PIPELINE = ROOT / "resources" / "pipelines" / "ship-finder.pipeline.json"
PORT = 50051
TIERS = (("device", "detector"), ("edge", "classifier"), ("cloud", "heavy"))


def _collect(addresses: list[str]) -> None:
    """(runs inside the client's namespace) Print every agent's stage counters as JSON."""
    from runners.client import NodeClient

    async def one(address: str) -> dict[str, dict[str, float]]:
        async with NodeClient(address) as client:
            stream = client.telemetry(0.2)
            await anext(stream)
            sample = await anext(stream)
            await stream.aclose()
        fields = ("inferences_total", "escalated_total", "forwarded_total", "queued_total", "delivered_total",
                  "overflow_total", "shed_total", "duplicates_total", "provisional_total", "errors_total",
                  "queue_depth", "dropped_total")
        return {s.stage_id: {f: getattr(s, f) for f in fields} | {"link_state": s.link_state}  # type: ignore[misc]
                for s in sample.stages}

    async def main() -> None:
        print(json.dumps({a: await one(a) for a in addresses}))
    asyncio.run(main())


class Sampler(threading.Thread):
    """RSS and open fds of the agent processes every few seconds."""

    def __init__(self, pids: dict[str, int], every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.pids, self.every, self.rows = pids, every, []  # type: ignore[var-annotated]
        self.stop_event = threading.Event()

    def run(self) -> None:
        procs = {name: psutil.Process(pid) for name, pid in self.pids.items()}
        while not self.stop_event.is_set():
            row = {"t": time.monotonic()}
            for name, proc in procs.items():
                try:
                    row[f"{name}_rss"] = proc.memory_info().rss
                    row[f"{name}_fds"] = proc.num_fds()
                except psutil.Error:
                    pass
            self.rows.append(row)
            self.stop_event.wait(self.every)


def _run(host_cmd: list[str], timeout: float) -> str:
    proc = subprocess.run(host_cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(host_cmd[:8])}… failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def soak(seconds: float, flap_every: float, flap_down: float, rate: float, batch: int) -> dict[str, object]:
    """Run the scenario; returns the accounting."""
    tmp = Path(tempfile.mkdtemp(prefix="tierdeck-soak-"))
    py = sys.executable
    with NetLab() as lab:
        hosts = {tier: lab.add_host() for tier, _ in TIERS}
        client = lab.add_host()
        agents = {tier: Agent(tier, tier, tmp / tier, listen=f"{hosts[tier].address}:{PORT}",
                              mdns_interfaces=(), host=hosts[tier], argv=[*AGENT, "--no-mdns",
                                                                          "--log-level", "WARNING"],
                              log_dir=tmp).wait_listening()
                  for tier, _ in TIERS}
        addresses = {tier: agents[tier].address for tier, _ in TIERS}
        try:
            deploy = [py, "-m", "cli", "deploy", str(PIPELINE), "--db", str(tmp / "console.sqlite"), "--json"]
            for tier, _ in reversed(TIERS):
                deploy += ["--node", addresses[tier]]
            _run(client.wrap(deploy), 300)
            collect = [py, str(Path(__file__).resolve()), "--collect", *addresses.values()]
            # The deployer's smoke inferences count too: account from the counters as they stand now.
            baseline = json.loads(_run(client.wrap(collect), 120))
            sampler = Sampler({tier: agents[tier].proc.pid for tier, _ in TIERS})
            sampler.start()
            sensor = subprocess.Popen(client.wrap([py, "-m", "cli", "sensor", "--target", addresses["device"],
                                                   "--model", "detector", "--rate", str(rate), "--batch",
                                                   str(batch), "--duration", str(seconds), "--burst-every", "20",
                                                   "--burst-seconds", "4"]),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
            flaps: list[dict[str, object]] = []
            started = time.monotonic()
            next_flap, which = started + flap_every, 0
            while sensor.poll() is None:
                if flap_every and time.monotonic() >= next_flap and time.monotonic() + flap_down < started + seconds:
                    tier = ("cloud", "edge")[which % 2]
                    which += 1
                    subprocess.run(["ip", "-n", hosts[tier].ns, "link", "set", "eth0", "down"], check=True)
                    time.sleep(flap_down)
                    subprocess.run(["ip", "-n", hosts[tier].ns, "link", "set", "eth0", "up"], check=True)
                    flaps.append({"tier": tier, "at_s": round(time.monotonic() - started - flap_down, 1),
                                  "down_s": flap_down})
                    next_flap += flap_every
                time.sleep(0.2)
            out, err = sensor.communicate()
            if sensor.returncode not in (0, 1):
                raise RuntimeError(f"sensor failed: {err[-2000:]}")
            client_summary = json.loads(out.strip().splitlines()[-1])
            # Let the queues drain, then read every agent's counters.
            deadline = time.monotonic() + 180
            while True:
                totals = json.loads(_run(client.wrap(collect), 120))
                depth = sum(s["queue_depth"] for node in totals.values() for s in node.values())
                if depth == 0 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            sampler.stop_event.set()
            sampler.join()
        finally:
            for agent in agents.values():
                agent.stop()
    return _account(client_summary, baseline, totals, addresses, flaps, sampler.rows, seconds)


def _account(client: dict, baseline: dict, totals: dict, addresses: dict, flaps: list, samples: list,  # type: ignore[type-arg]
             seconds: float) -> dict:  # type: ignore[type-arg]
    stage = {}
    for tier, model in TIERS:
        now, before = totals[addresses[tier]][model], baseline[addresses[tier]].get(model, {})
        stage[tier] = {k: (v - before.get(k, 0) if k.endswith("_total") else v) for k, v in now.items()}
    links = []
    for (tier, model), (up_tier, up_model) in itertools.pairwise(TIERS):
        s, up = stage[tier], stage[up_tier]
        answered_up = s["forwarded_total"] + s["delivered_total"]
        lost = s["escalated_total"] - s["shed_total"] - s["overflow_total"] - answered_up - s["queue_depth"]
        links.append({"link": f"{model}->{up_model}", "escalated": s["escalated_total"],
                      "answered_by_next_hop": s["forwarded_total"], "queued": s["queued_total"],
                      "delivered_later": s["delivered_total"], "shed_by_budget": s["shed_total"],
                      "refused_at_bound": s["overflow_total"], "still_queued": s["queue_depth"], "lost": lost,
                      "next_tier_ran": up["inferences_total"], "next_tier_duplicates_absorbed": up["duplicates_total"],
                      "once_each": up["inferences_total"] == answered_up})
    growth = {}
    for tier, _ in TIERS:
        rss = [r[f"{tier}_rss"] for r in samples if f"{tier}_rss" in r]
        fds = [r[f"{tier}_fds"] for r in samples if f"{tier}_fds" in r]
        base = rss[min(len(rss) - 1, max(1, len(rss) // 10))]  # after warm-up
        half = rss[len(rss) // 2]
        growth[tier] = {"rss_start_mb": base / 2**20, "rss_half_mb": half / 2**20, "rss_end_mb": rss[-1] / 2**20,
                        "rss_growth_pct": 100.0 * (rss[-1] - base) / base,
                        "rss_growth_second_half_pct": 100.0 * (rss[-1] - half) / half,
                        "fds_start": fds[0], "fds_end": fds[-1], "fds_max": max(fds),
                        "rss_mb_series": [round(r / 2**20, 1) for r in rss]}
    return {"seconds": seconds, "flaps": flaps, "client": client, "links": links, "processes": growth,
            "errors": {tier: stage[tier]["errors_total"] for tier, _ in TIERS},
            "lost_total": sum(int(link["lost"]) for link in links) + int(client["sent"]) - int(client["answered"])
            - int(client["errors"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, help="overrides --minutes (short runs for tests)")
    parser.add_argument("--flap-every", type=float, default=60.0, metavar="S")
    parser.add_argument("--flap-down", type=float, default=5.0, metavar="S")
    parser.add_argument("--rate", type=float, default=200.0, help="patches per second into the device node")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument("--collect", nargs="+", metavar="ADDR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.collect:
        _collect(args.collect)
        return 0
    reason = netns_permitted()
    if reason:
        print(f"soak needs network namespaces: {reason}", file=sys.stderr)
        return 2
    seconds = args.seconds or args.minutes * 60
    result = soak(seconds, args.flap_every, args.flap_down, args.rate, args.batch)
    c = result["client"]
    print(f"\nsoak — {seconds:.0f} s, {len(result['flaps'])} link flaps of {args.flap_down:g} s, "  # type: ignore[arg-type]
          f"{args.rate:g} patches/s in batches of {args.batch}\n")
    print_table(["inputs sent", "answered", "provisional", "client errors", "lost (all links + client)"],
                [[c["sent"], c["answered"], c["provisional"], c["errors"], result["lost_total"]]])  # type: ignore[index]
    print()
    print_table(["link", "escalated", "answered by hop", "queued", "delivered later", "shed", "refused at bound",
                 "still queued", "lost", "next tier ran", "duplicates absorbed", "once each"],
                [[lk["link"], lk["escalated"], lk["answered_by_next_hop"], lk["queued"], lk["delivered_later"],
                  lk["shed_by_budget"], lk["refused_at_bound"], lk["still_queued"], lk["lost"], lk["next_tier_ran"],
                  lk["next_tier_duplicates_absorbed"], lk["once_each"]] for lk in result["links"]])  # type: ignore[attr-defined]
    print()
    print_table(["agent", "RSS after warm-up MB", "RSS half-way MB", "RSS end MB", "RSS growth %",
                 "growth 2nd half %", "fds start", "fds end", "fds max", "errors"],
                [[t, p["rss_start_mb"], p["rss_half_mb"], p["rss_end_mb"], p["rss_growth_pct"],
                  p["rss_growth_second_half_pct"], p["fds_start"], p["fds_end"], p["fds_max"], result["errors"][t]]
                 for t, p in result["processes"].items()])  # type: ignore[attr-defined,index]
    write_json(args.json, result)
    return 0 if result["lost_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
