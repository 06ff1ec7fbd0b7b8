"""Soak: the three-tier demo cascade under sustained load while links flap and (optionally) agents are killed.

Three agents (device, edge, cloud) and a client each get a host of their own: network namespaces on
one bridge (tests/netns.py), so a flap is a real `ip link set eth0 down` on a real interface. The
client deploys the ship-finder pipeline with `tierdeck deploy`, then a sensor (this script's own
client, in the client's namespace) replays the held-out patches into the device node for the whole
run. Every `--flap-every` seconds one tier's link (cloud, then edge, alternating) goes down for
`--flap-down` seconds. With `--kill-agents`, every `--kill-every-s` seconds an agent gets SIGKILL
(device, edge or cloud: each once per round, rounds in a random order from `--seed`; `--kill-tiers`
narrows the choice) and, `--kill-down-s` later, is started again with the same data dir, address and
port (so its node id, its stages, its on-disk queue and the hops wired to it are the same).

Accounting survives kill -9 because it never rests on a counter a killed process kept in memory:

* inputs, from the sensor's side: every input sent gets an answer. A call that fails because the device
  node was just killed (or is restarting) is retried with the same rows until answered (counted as
  retried: the device then runs those rows again, and escalates them again under new row ids); an input
  never answered, or refused for good, is lost. An input answered "provisional" had an escalation queued
  on some link; it is delivered later when every queued row id of every link reaches its next hop
  (checked per row id below, with the queues on disk empty and no dead letters at the end).
* escalations, by row id: the agents run through bench/_soak_agent.py, which appends each escalated row
  id a forwarder takes and each one a receiver runs to a trace file with write(2), so a kill -9 loses
  nothing written. Per link: every row id the sender handed over (answered live, queued, or still sent
  after its caller gave up) must have been run or answered from memory by the next hop, else it is lost;
  and no row id may be *completed* twice (a completed run is one whose answer was about to be sent).
  Row ids the sender took but never handed over because it was killed mid-call are orphans: their input
  is re-sent from upstream. A run cut off by a kill of the receiver is re-run when the row is re-sent.
* exits: every agent process's exit status; the SIGKILLs the soak sent apart from any other exit.
* RSS and open fds of every agent process, sampled every 5 s; growth is judged per process lifetime over
  the second half of that lifetime, for processes sampled at least `--rss-min-life-s` (a restarted agent
  is a new process: its warm-up is not growth).

Usage: python bench/soak.py --minutes 30 --kill-agents --kill-every-s 180 --rate 40 --json OUT
(needs root for `ip netns`; exits 1 when anything was lost, run twice, or exited abnormally)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from netns import Agent, Host, NetLab, netns_permitted  # noqa: E402

from bench._common import print_table, write_json  # noqa: E402

PIPELINE = ROOT / "resources" / "pipelines" / "ship-finder.pipeline.json"
PORT = 50051
TIERS = (("device", "detector"), ("edge", "classifier"), ("cloud", "heavy"))
TRACED_AGENT = [sys.executable, "-m", "bench._soak_agent", "--no-mdns", "--log-level", "WARNING"]
# Refusals no retry can change: the sensor counts them as lost at once.
FINAL_CODES = {"INVALID_ARGUMENT", "OUT_OF_RANGE", "UNIMPLEMENTED", "PERMISSION_DENIED", "UNAUTHENTICATED"}


# -- helpers run inside the client's namespace ------------------------------------------------------------
def _collect(addresses: list[str]) -> None:
    """(runs inside the client's namespace) Print every agent's stage counters (this boot's) as JSON."""
    from runners.client import NodeClient

    async def one(address: str) -> dict[str, Any]:
        async with NodeClient(address) as client:
            stream = client.telemetry(0.2)
            await anext(stream)
            sample = await anext(stream)
            await stream.aclose()  # type: ignore[attr-defined]
        fields = ("inferences_total", "escalated_total", "forwarded_total", "queued_total", "delivered_total",
                  "overflow_total", "shed_total", "duplicates_total", "provisional_total", "errors_total",
                  "queue_depth", "dropped_total", "dead_letters")
        return {"boot_id": sample.boot_id,
                "stages": {s.stage_id: {f: getattr(s, f) for f in fields} | {"link_state": s.link_state}
                           for s in sample.stages}}

    async def main() -> None:
        print(json.dumps({a: await one(a) for a in addresses}))
    asyncio.run(main())


async def _sensor(target: str, rate: float, batch: int, seconds: float, grace: float, seed: int) -> dict[str, Any]:
    """(runs inside the client's namespace) Replay patches into the device's detector; retry failed calls.

    Vessel bursts (4 s every 20 s) make escalations move, as `tierdeck sensor` does. A failed call is
    retried with the same rows (and the same request id) until it is answered or `grace` seconds after
    the run's end; new inputs wait meanwhile, as a sensor buffering its camera would."""
    import grpc
    import numpy as np

    from resources.scenes import load_heldout, to_model_input
    from runners.client import NodeClient

    images, labels = load_heldout()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    vessels = order[labels[order] != 0]
    counts: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    decided: Counter[str] = Counter()
    provisional_requests: dict[str, int] = {}
    retried: dict[str, int] = {}
    longest_outage = 0.0
    options = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
               ("grpc.max_reconnect_backoff_ms", 1000)]
    async with NodeClient(target, options=options) as client:
        started = time.monotonic()
        while True:  # the stage is deployed before the sensor starts; the node may still be warming
            try:
                await client.metadata("detector", timeout=5)
                break
            except grpc.aio.AioRpcError:
                if time.monotonic() - started > 120:
                    raise
                await asyncio.sleep(0.5)
        started = tick = time.monotonic()
        interval = batch / rate
        cursor = burst_cursor = n = 0
        while time.monotonic() - started < seconds:
            now = time.monotonic()
            if (now - started) % 20.0 > 16.0 and len(vessels):
                rows = vessels[np.arange(burst_cursor, burst_cursor + batch) % len(vessels)]
                burst_cursor += batch
            else:
                rows = order[np.arange(cursor, cursor + batch) % len(order)]
                cursor += batch
            request_id = f"s{n}"
            n += 1
            counts["sent"] += len(rows)
            feeds = {"image": to_model_input(images[rows])}
            first_failure = 0.0
            while True:
                try:
                    result = await client.infer("detector", feeds, request_id=request_id, timeout=10)
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1
                    first_failure = first_failure or time.monotonic()
                    retried[request_id] = retried.get(request_id, 0) + 1
                    if exc.code().name in FINAL_CODES:
                        counts["refused"] += len(rows)
                        break
                    if time.monotonic() > started + seconds + grace:
                        counts["never_answered"] += len(rows)
                        break
                    await asyncio.sleep(0.25)
                    continue
                counts["answered"] += len(rows)
                provisional = int(result.parameters.get("tierdeck.provisional_rows", 0))
                counts["provisional"] += provisional
                if provisional:
                    provisional_requests[request_id] = provisional
                if request_id in retried:
                    counts["retried_rows"] += len(rows)
                for stage in result.outputs.get("decision_stage", np.array([], dtype=object)):
                    decided[stage.decode() if isinstance(stage, bytes) else str(stage)] += 1
                break
            if first_failure:
                longest_outage = max(longest_outage, time.monotonic() - first_failure)
                tick = time.monotonic()  # after an outage: carry on at the rate, no catch-up burst
            tick += interval
            delay = tick - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                tick = time.monotonic()
    return {"seconds": round(time.monotonic() - started, 1), "sent": counts["sent"], "answered": counts["answered"],
            "provisional": counts["provisional"], "errors": counts["refused"] + counts["never_answered"],
            "refused": counts["refused"], "never_answered": counts["never_answered"],
            "retried_requests": len(retried), "retried_rows": counts["retried_rows"],
            "failed_calls": sum(retried.values()), "error_codes": dict(codes), "decided_by": dict(decided),
            "longest_outage_s": round(longest_outage, 2), "provisional_requests": len(provisional_requests)}


# -- processes ------------------------------------------------------------------------------------------
@dataclass
class Boot:
    """One agent process: a tier's life between a start and an exit."""

    tier: str
    index: int
    agent: Agent
    started_s: float
    ended_s: float | None = None
    returncode: int | None = None
    cause: str = ""  # "soak kill -9", "soak stop", or "" (not ended by the soak)

    @property
    def pid(self) -> int:
        """The agent's pid (`ip netns exec` execs, so it is the agent itself)."""
        return self.agent.proc.pid


@dataclass
class Fleet:
    """The three agents, their boots, and how to start one again with the same data dir and address."""

    hosts: dict[str, Host]
    tmp: Path
    t0: float
    boots: list[Boot] = field(default_factory=list)
    current: dict[str, Boot] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def trace_path(self, tier: str) -> Path:
        """The row trace all of a tier's processes append to."""
        return self.tmp / f"trace-{tier}.log"

    def start(self, tier: str) -> Boot:
        """Start (or start again) the tier's agent and wait until it listens."""
        os.environ["TIERDECK_SOAK_TRACE"] = str(self.trace_path(tier))  # the Popen below copies the environment
        try:
            agent = Agent(tier, tier, self.tmp / tier, listen=f"{self.hosts[tier].address}:{PORT}",
                          mdns_interfaces=(), host=self.hosts[tier], argv=TRACED_AGENT, log_dir=self.tmp)
        finally:
            os.environ.pop("TIERDECK_SOAK_TRACE", None)
        boot = Boot(tier, sum(b.tier == tier for b in self.boots), agent, time.monotonic() - self.t0)
        with self.lock:
            self.boots.append(boot)
            self.current[tier] = boot
        agent.wait_listening(120)
        return boot

    def end(self, tier: str, how: signal.Signals) -> Boot:
        """SIGKILL or SIGTERM the tier's current process and reap it."""
        boot = self.current[tier]
        boot.cause = "soak kill -9" if how == signal.SIGKILL else "soak stop"
        boot.returncode = boot.agent.kill() if how == signal.SIGKILL else boot.agent.stop()
        boot.ended_s = time.monotonic() - self.t0
        return boot

    def reap_unexpected(self) -> list[Boot]:
        """Boots that exited without the soak ending them (recorded; the caller restarts them)."""
        dead = []
        for boot in list(self.current.values()):
            if boot.ended_s is None and boot.agent.proc.poll() is not None:
                boot.returncode, boot.ended_s = boot.agent.proc.returncode, time.monotonic() - self.t0
                boot.agent._log.close()
                dead.append(boot)
        return dead

    def pids(self) -> list[tuple[str, int, int]]:
        """(tier, boot index, pid) of the processes running now."""
        with self.lock:
            return [(b.tier, b.index, b.pid) for b in self.current.values() if b.ended_s is None]


class Sampler(threading.Thread):
    """RSS and open fds of every running agent process every few seconds."""

    def __init__(self, fleet: Fleet, every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.fleet, self.every, self.rows = fleet, every, []  # type: ignore[var-annotated]
        self.stop_event = threading.Event()
        self._procs: dict[int, psutil.Process] = {}

    def run(self) -> None:
        while not self.stop_event.is_set():
            t = time.monotonic() - self.fleet.t0
            for tier, index, pid in self.fleet.pids():
                try:
                    proc = self._procs.setdefault(pid, psutil.Process(pid))
                    self.rows.append({"t": round(t, 1), "tier": tier, "boot": index, "pid": pid,
                                      "rss": proc.memory_info().rss, "fds": proc.num_fds()})
                except psutil.Error:
                    pass
            self.stop_event.wait(self.every)


def _run(host_cmd: list[str], timeout: float) -> str:
    proc = subprocess.run(host_cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(host_cmd[:8])}… failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@dataclass
class Plan:
    """What the soak does to the fleet."""

    seconds: float
    flap_every: float = 60.0
    flap_down: float = 5.0
    rate: float = 200.0
    batch: int = 4
    kill_agents: bool = False
    kill_every: float = 180.0
    kill_down: float = 3.0
    kill_tiers: tuple[str, ...] = ("device", "edge", "cloud")
    seed: int = 0
    drain_s: float = 240.0
    rss_min_life_s: float = 240.0


def soak(plan: Plan) -> dict[str, Any]:
    """Run the scenario; returns the accounting."""
    tmp = Path(tempfile.mkdtemp(prefix="tierdeck-soak-"))
    py = sys.executable
    rng = random.Random(plan.seed)
    events: list[dict[str, Any]] = []
    with NetLab() as lab:
        hosts = {tier: lab.add_host() for tier, _ in TIERS}
        client = lab.add_host()
        fleet = Fleet(hosts, tmp, time.monotonic())
        sampler = Sampler(fleet)
        sensor: subprocess.Popen[str] | None = None
        try:
            for tier, _ in TIERS:
                fleet.start(tier)
            addresses = {tier: fleet.current[tier].agent.address for tier, _ in TIERS}
            deploy = [py, "-m", "cli", "deploy", str(PIPELINE), "--db", str(tmp / "console.sqlite"), "--json"]
            for tier, _ in reversed(TIERS):
                deploy += ["--node", addresses[tier]]
            _run(client.wrap(deploy), 300)
            collect = [py, str(Path(__file__).resolve()), "--collect", *addresses.values()]
            sampler.start()
            sensor = subprocess.Popen(
                client.wrap([py, str(Path(__file__).resolve()), "--sensor", addresses["device"], "--rate",
                             str(plan.rate), "--batch", str(plan.batch), "--seconds", str(plan.seconds),
                             "--grace", str(plan.drain_s), "--seed", str(plan.seed)]),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
            started = time.monotonic()
            fleet_t = started - fleet.t0
            end = started + plan.seconds
            next_flap, which = started + plan.flap_every, 0
            next_kill = started + plan.kill_every
            order: list[str] = []
            while sensor.poll() is None:
                now = time.monotonic()
                for boot in fleet.reap_unexpected():
                    events.append({"event": "unexpected exit", "tier": boot.tier, "at_s": round(now - started, 1),
                                   "returncode": boot.returncode, "log_tail": boot.agent.log()[-1500:]})
                    fleet.start(boot.tier)
                if plan.flap_every and now >= next_flap and now + plan.flap_down < end:
                    tier = ("cloud", "edge")[which % 2]
                    which += 1
                    subprocess.run(["ip", "-n", hosts[tier].ns, "link", "set", "eth0", "down"], check=True)
                    time.sleep(plan.flap_down)
                    subprocess.run(["ip", "-n", hosts[tier].ns, "link", "set", "eth0", "up"], check=True)
                    events.append({"event": "flap", "tier": tier, "at_s": round(now - started, 1),
                                   "down_s": plan.flap_down})
                    next_flap += plan.flap_every
                # The last kill leaves time for the restart and a few batches before the sensor stops.
                if plan.kill_agents and now >= next_kill and now + plan.kill_down + 15 < end:
                    if not order:  # every tier once per round, in a random order
                        order = rng.sample(list(plan.kill_tiers), len(plan.kill_tiers))
                    tier = order.pop()
                    old = fleet.end(tier, signal.SIGKILL)
                    time.sleep(plan.kill_down)
                    new = fleet.start(tier)
                    events.append({"event": "kill", "tier": tier, "at_s": round(now - started, 1),
                                   "pid": old.pid, "returncode": old.returncode, "new_pid": new.pid,
                                   "back_after_s": round(time.monotonic() - now, 1)})
                    next_kill += plan.kill_every
                time.sleep(0.2)
            out, err = sensor.communicate()
            sensor_rc = sensor.returncode
            if sensor_rc != 0 or not out.strip():
                raise RuntimeError(f"sensor failed ({sensor_rc}): {err[-3000:]}")
            client_summary = json.loads(out.strip().splitlines()[-1])
            # Let the queues drain, then read the last boots' counters.
            deadline = time.monotonic() + plan.drain_s
            while True:
                totals = json.loads(_run(client.wrap(collect), 120))
                depth = sum(s["queue_depth"] for node in totals.values() for s in node["stages"].values())
                if depth == 0 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            sampler.stop_event.set()
            sampler.join()
            for boot in fleet.reap_unexpected():
                events.append({"event": "unexpected exit", "tier": boot.tier, "returncode": boot.returncode,
                               "log_tail": boot.agent.log()[-1500:]})
        finally:
            if sensor is not None and sensor.poll() is None:  # interrupted: the sensor goes too
                sensor.terminate()
                sensor.wait(30)
            for tier in list(fleet.current):
                if fleet.current[tier].ended_s is None:
                    fleet.end(tier, signal.SIGTERM)
    result = _account(plan, client_summary, totals, events, fleet, sampler.rows, fleet_t)
    result["sensor_returncode"] = sensor_rc
    result["tmp"] = str(tmp)
    return result


# -- accounting -----------------------------------------------------------------------------------------
def read_trace(path: Path) -> dict[str, dict[str, list[int]]]:
    """{event letter: {row id: [pid of each occurrence]}} from a trace file (a torn last line is skipped)."""
    out: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split(" ")
            if len(parts) == 3 and parts[0].isdigit():
                out[parts[1]][parts[2]].append(int(parts[0]))
    return out


def link_accounting(sender: dict[str, dict[str, list[int]]], receiver: dict[str, dict[str, list[int]]],
                    killed_senders: set[int], killed_receivers: set[int]) -> dict[str, Any]:
    """Per-row-id accounting of one link from the sender's and the receiver's traces."""
    escalated = set(sender["E"])
    live, queued, cancelled = set(sender["A"]), set(sender["P"]), set(sender["C"])
    handed = live | queued | cancelled
    orphans = escalated - handed
    orphan_pids = {pid for rid in orphans for pid in sender["E"][rid]}
    ran, completed, remembered = set(receiver["F"]), receiver["R"], set(receiver["D"])
    reached = ran | remembered
    answered = set(completed) | remembered
    lost = handed - answered
    twice = {rid: pids for rid, pids in completed.items() if len(pids) > 1}
    twice_same = {rid for rid, pids in twice.items() if len(set(pids)) < len(pids)}
    cut_off_killed = cut_off_alive = 0
    for rid, pids in receiver["F"].items():
        done = Counter(completed.get(rid, []))
        for pid, started in Counter(pids).items():
            missing = max(0, started - done.get(pid, 0))
            if pid in killed_receivers:
                cut_off_killed += missing
            else:
                cut_off_alive += missing
    never_completed = {rid for rid in ran if rid not in completed and rid not in remembered}
    return {"escalated": len(escalated), "answered_by_next_hop": len(live), "queued": len(queued),
            "cancelled_by_caller": len(cancelled), "delivered_later": len(queued & answered),
            "orphaned_by_sender_kill": len(orphans), "orphans_from_unkilled_sender": len(orphan_pids - killed_senders),
            "orphans_that_reached_next_hop": len(orphans & reached), "lost": len(lost),
            "lost_sample": sorted(lost)[:10], "next_tier_ran": sum(len(p) for p in completed.values()),
            "next_tier_distinct": len(completed),
            "next_tier_duplicates_absorbed": sum(len(p) for p in receiver["D"].values()),
            "run_cut_off_by_receiver_kill": cut_off_killed, "run_cut_off_receiver_alive": cut_off_alive,
            "never_completed": len(never_completed - orphans),
            "completed_twice": len(twice), "completed_twice_same_process": len(twice_same),
            "completed_twice_sample": {rid: pids for rid, pids in list(twice.items())[:10]},
            "receiver_kills": len(killed_receivers),
            "once_each": not lost and not twice}


def _signal_name(rc: int | None) -> str:
    if rc is None:
        return "running"
    if rc < 0:
        try:
            return f"{signal.Signals(-rc).name} ({rc})"
        except ValueError:
            return str(rc)
    return f"exit {rc}"


def _rss(plan: Plan, samples: list[dict[str, Any]], fleet: Fleet) -> list[dict[str, Any]]:
    """Per process lifetime: RSS at the middle of its life (after warm-up) and at its end, fds."""
    rows = []
    for boot in fleet.boots:
        mine = [s for s in samples if s["pid"] == boot.pid and s["tier"] == boot.tier]
        if len(mine) < 2:
            continue
        life = mine[-1]["t"] - mine[0]["t"]
        half = mine[0]["t"] + life / 2
        mid = min(mine, key=lambda s: abs(s["t"] - half))
        judged = life >= plan.rss_min_life_s
        rows.append({"tier": boot.tier, "boot": boot.index, "pid": boot.pid, "sampled_s": round(life),
                     "rss_first_mb": mine[0]["rss"] / 2**20, "rss_half_mb": mid["rss"] / 2**20,
                     "rss_end_mb": mine[-1]["rss"] / 2**20,
                     "growth_second_half_pct": 100.0 * (mine[-1]["rss"] - mid["rss"]) / mid["rss"],
                     "judged": judged, "fds_first": mine[0]["fds"], "fds_end": mine[-1]["fds"],
                     "fds_max": max(s["fds"] for s in mine),
                     "rss_mb_series": [round(s["rss"] / 2**20, 1) for s in mine]})
    return rows


def _queue_files(fleet: Fleet) -> dict[str, dict[str, int]]:
    """Rows left in each agent's on-disk queue (waiting, dead letters), read after the agents stopped."""
    out = {}
    for tier, _ in TIERS:
        path = fleet.tmp / tier / "queue.sqlite"
        if not path.exists():
            out[tier] = {"waiting": 0, "dead_letters": 0}
            continue
        db = sqlite3.connect(path)
        try:
            out[tier] = {"waiting": db.execute("SELECT count(*) FROM escalations").fetchone()[0],
                         "dead_letters": db.execute("SELECT count(*) FROM dead_letter").fetchone()[0]}
        finally:
            db.close()
    return out


def _account(plan: Plan, client: dict[str, Any], totals: dict[str, Any], events: list[dict[str, Any]],
             fleet: Fleet, samples: list[dict[str, Any]], sensor_t: float) -> dict[str, Any]:
    traces = {tier: read_trace(fleet.trace_path(tier)) for tier, _ in TIERS}
    killed = {tier: {b.pid for b in fleet.boots if b.tier == tier and b.cause == "soak kill -9"} for tier, _ in TIERS}
    queues = _queue_files(fleet)
    links = []
    for (tier, model), (up_tier, up_model) in itertools.pairwise(TIERS):
        link = {"link": f"{model}->{up_model}"} | link_accounting(traces[tier], traces[up_tier], killed[tier],
                                                                  killed[up_tier])
        link["still_queued"] = queues[tier]["waiting"]
        link["dead_letters"] = queues[tier]["dead_letters"]
        link["lost"] += link["still_queued"]
        link["once_each"] = link["once_each"] and not link["still_queued"] and not link["dead_letters"]
        links.append(link)
    exits = []
    for boot in fleet.boots:
        expected = (boot.cause == "soak kill -9" and boot.returncode == -signal.SIGKILL) or \
            (boot.cause == "soak stop" and boot.returncode == 0)
        exits.append({"tier": boot.tier, "boot": boot.index, "pid": boot.pid, "started_s": round(boot.started_s, 1),
                      "ended_s": round(boot.ended_s, 1) if boot.ended_s is not None else None,
                      "exit": _signal_name(boot.returncode), "by": boot.cause or "nobody (unexpected)",
                      "abnormal": not expected})
    processes = _rss(plan, samples, fleet)
    last = {addr: node for addr, node in totals.items()}
    errors = {tier: sum(s["errors_total"] for s in node["stages"].values())
              for (tier, _), node in zip(TIERS, last.values(), strict=True)}
    lost_inputs = int(client["sent"]) - int(client["answered"])
    return {"seconds": plan.seconds, "plan": plan.__dict__, "sensor_started_at_s": round(sensor_t, 1),
            "events": events, "flaps": [e for e in events if e["event"] == "flap"],
            "kills": [e for e in events if e["event"] == "kill"], "client": client, "links": links,
            "exits": exits, "abnormal_exits": sum(e["abnormal"] for e in exits), "processes": processes,
            "rss_judged_max_growth_pct": max((p["growth_second_half_pct"] for p in processes if p["judged"]),
                                             default=None),
            "queues_on_disk": queues, "last_boot_counters": totals, "errors_last_boots": errors,
            "lost_inputs": lost_inputs,
            "lost_total": lost_inputs + sum(int(link["lost"]) for link in links)}


def report(result: dict[str, Any]) -> None:
    """Print the accounting tables."""
    c, plan = result["client"], result["plan"]
    kills = result["kills"]
    print(f"\nsoak — {plan['seconds']:.0f} s of input at {plan['rate']:g} patches/s in batches of {plan['batch']}, "
          f"{len(result['flaps'])} link flaps of {plan['flap_down']:g} s, {len(kills)} agent kills (-9) "
          f"[{', '.join(k['tier'] for k in kills) or 'none'}]\n")
    print_table(["inputs sent", "answered", "provisional rows", "retried requests", "failed calls",
                 "longest outage s", "refused", "never answered", "inputs lost"],
                [[c["sent"], c["answered"], c["provisional"], c["retried_requests"], c["failed_calls"],
                  c["longest_outage_s"], c["refused"], c["never_answered"], result["lost_inputs"]]])
    print()
    print_table(["link", "escalated ids", "answered live", "queued", "delivered later", "still queued",
                 "dead letters", "orphans (sender killed)", "lost", "next tier completed", "completed twice",
                 "cut off by receiver kill", "cut off, receiver alive", "answered from memory", "once each"],
                [[lk["link"], lk["escalated"], lk["answered_by_next_hop"], lk["queued"], lk["delivered_later"],
                  lk["still_queued"], lk["dead_letters"], lk["orphaned_by_sender_kill"], lk["lost"],
                  lk["next_tier_ran"], lk["completed_twice"], lk["run_cut_off_by_receiver_kill"],
                  lk["run_cut_off_receiver_alive"], lk["next_tier_duplicates_absorbed"], lk["once_each"]]
                 for lk in result["links"]])
    print()
    print_table(["agent", "boot", "pid", "started s", "ended s", "exit", "ended by", "abnormal"],
                [[e["tier"], e["boot"], e["pid"], e["started_s"], e["ended_s"], e["exit"], e["by"], e["abnormal"]]
                 for e in result["exits"]])
    print(f"abnormal exits (not caused by the soak): {result['abnormal_exits']}")
    print()
    print_table(["agent", "boot", "pid", "sampled s", "RSS first MB", "RSS mid-life MB", "RSS end MB",
                 "growth 2nd half of life %", "judged", "fds first", "fds end", "fds max"],
                [[p["tier"], p["boot"], p["pid"], p["sampled_s"], p["rss_first_mb"], p["rss_half_mb"],
                  p["rss_end_mb"], p["growth_second_half_pct"], p["judged"], p["fds_first"], p["fds_end"],
                  p["fds_max"]] for p in result["processes"]])
    print(f"largest RSS growth over the second half of a life ≥ {plan['rss_min_life_s']:g} s: "
          f"{result['rss_judged_max_growth_pct']}")
    print(f"errors_total of the last processes: {result['errors_last_boots']}; "
          f"queues on disk at the end: {result['queues_on_disk']}")
    print(f"lost in all (inputs + escalations): {result['lost_total']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, help="overrides --minutes (short runs for tests)")
    parser.add_argument("--flap-every", type=float, default=60.0, metavar="S", help="0 = no link flaps")
    parser.add_argument("--flap-down", type=float, default=5.0, metavar="S")
    parser.add_argument("--rate", type=float, default=200.0, help="patches per second into the device node")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--kill-agents", action="store_true",
                        help="kill -9 a random agent every --kill-every-s and start it again (same data dir, "
                        "address and port)")
    parser.add_argument("--kill-every-s", type=float, default=180.0, metavar="S")
    parser.add_argument("--kill-down-s", type=float, default=3.0, metavar="S",
                        help="how long a killed agent stays down before it is started again")
    parser.add_argument("--kill-tiers", default="device,edge,cloud", metavar="LIST",
                        help="which agents may be killed (comma-separated; default all three)")
    parser.add_argument("--seed", type=int, default=0, help="which agents are killed, and the replay order")
    parser.add_argument("--drain-s", type=float, default=240.0, metavar="S",
                        help="after the run: how long retries and queue drains may take")
    parser.add_argument("--rss-min-life-s", type=float, default=240.0, metavar="S",
                        help="judge RSS growth only for processes sampled at least this long")
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument("--collect", nargs="+", metavar="ADDR", help=argparse.SUPPRESS)
    parser.add_argument("--sensor", metavar="ADDR", help=argparse.SUPPRESS)
    parser.add_argument("--grace", type=float, default=240.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.collect:
        _collect(args.collect)
        return 0
    seconds = args.seconds or args.minutes * 60
    if args.sensor:
        print(json.dumps(asyncio.run(_sensor(args.sensor, args.rate, args.batch, seconds, args.grace, args.seed))),
              flush=True)
        return 0
    reason = netns_permitted()
    if reason:
        print(f"soak needs network namespaces: {reason}", file=sys.stderr)
        return 2
    kill_tiers = tuple(t.strip() for t in args.kill_tiers.split(",") if t.strip())
    unknown = set(kill_tiers) - {t for t, _ in TIERS}
    if unknown or not kill_tiers:
        parser.error(f"--kill-tiers: choose among device, edge, cloud (not {', '.join(sorted(unknown)) or 'none'})")
    plan = Plan(seconds, args.flap_every, args.flap_down, args.rate, args.batch, args.kill_agents, args.kill_every_s,
                args.kill_down_s, kill_tiers, args.seed, args.drain_s, args.rss_min_life_s)
    result = soak(plan)
    report(result)
    write_json(args.json, result)
    return 0 if result["lost_total"] == 0 and all(lk["once_each"] for lk in result["links"]) \
        and result["abnormal_exits"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
