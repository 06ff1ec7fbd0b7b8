"""The demo: a local fleet on loopback, the console core on it, the ship-finder pipeline, sensor replays.

Used by `tierdeck demo` (cli/_cmd_demo.py builds the window around it). Everything here runs on
the caller's (main) thread or the console core's loop; children die with the process (_demo_fleet).
"""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from app._console import ConsoleCore
from app._demo_fleet import ChildExit, DemoFleet
from app._deployer import DeployResult
from app._records import NodeSample, NodeSnapshot, NodeState
from app.pipeline_file import Pipeline, load_pipeline

PIPELINE = Path(__file__).resolve().parent.parent / "resources" / "pipelines" / "ship-finder.pipeline.json"


@dataclass
class DemoConfig:
    """Counts, rates and where things live."""

    device: int = 4
    edge: int = 2
    cloud: int = 1
    rate: float = 20.0                  # patches per second per device node
    burst_every: float = 30.0
    pipeline: Path = PIPELINE
    base_dir: Path | None = None
    db: Path | None = None
    fleet_id: str = ""                  # "" = a new id per run
    mdns: bool = True                   # False: the console adds the demo's own agents by address, browses nothing


@dataclass
class Demo:
    """A running demo: the fleet processes, the console core and the latest sample per node."""

    config: DemoConfig
    fleet: DemoFleet = field(init=False)
    core: ConsoleCore = field(init=False)
    pipeline: Pipeline = field(init=False)
    latest: dict[str, NodeSample] = field(default_factory=dict)
    deploy_result: DeployResult | None = None
    sensors_started: bool = False

    def __post_init__(self) -> None:
        self.pipeline = load_pipeline(self.config.pipeline)
        # A fleet of its own: another run's nodes (or any stray node) on the same host are neither shown nor
        # deployed to.
        self.fleet_id = self.config.fleet_id or f"demo-{secrets.token_hex(4)}"
        self.fleet = DemoFleet(self.config.base_dir, fleet_id=self.fleet_id)
        db = self.config.db or self.fleet.base_dir / "console.sqlite"
        self.core = ConsoleCore(db, telemetry_interval_s=1.0, interfaces=["127.0.0.1"], fleet_id=self.fleet_id)

    @property
    def expected_nodes(self) -> int:
        """How many agents the demo starts."""
        return self.config.device + self.config.edge + self.config.cloud

    def start(self) -> None:
        """Start the agents (main thread: they must die with it) and the console core, which finds them by mDNS."""
        agents = self.fleet.start_agents(self.config.device, self.config.edge, self.config.cloud)
        if not self.config.mdns:
            # Other fleets advertising on this machine's loopback (other demos, tests) stay out of this console.
            fleet_file = self.fleet.base_dir / "fleet.txt"
            fleet_file.write_text("".join(f"{a.address} {a.tier} {a.name}\n" for a in agents))
            self.core.fleet_file = fleet_file
            self.core.interfaces = []
        self.core.start()
        self.core.subscribe_samples(self._on_sample)
        self.fleet.watch(self._on_child_exit)

    def _on_child_exit(self, ended: ChildExit) -> None:
        """Watcher thread: an unexpected death becomes an error event and a reason on the node it concerns."""
        try:
            self.core.report_process_exit(ended.describe(), ended.node_id, ended.as_json(),
                                          note=f"{ended.who} died: {ended.how}")
        except RuntimeError:  # the core is not running (stopping): the summary still lists it
            pass

    def _on_sample(self, sample: NodeSample) -> None:
        self.latest[sample.node_id] = sample  # loop thread; a dict assignment is atomic

    def wait_online(self, timeout: float = 90.0) -> list[NodeSnapshot]:
        """Block until every agent is online in the console (or the timeout); returns the nodes."""
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.core.nodes().result(10)
            online = [n for n in nodes if n.state == NodeState.ONLINE]
            if len(online) >= self.expected_nodes or time.monotonic() > deadline:
                return nodes
            time.sleep(0.2)

    def deploy(self, timeout: float = 300.0) -> DeployResult:
        """Plan and apply the pipeline on the fleet as the console sees it (all or nothing)."""
        plan = self.core.plan(self.pipeline).result(60)
        self.deploy_result = self.core.apply(plan).result(timeout)
        return self.deploy_result

    def start_sensors(self) -> None:
        """One sensor replay per device node, into the pipeline's first stage (main thread)."""
        entry = self.pipeline.chain()[0].id
        for index, agent in enumerate(a for a in self.fleet.agents() if a.tier == "device"):
            self.fleet.start_sensor(agent, entry, self.config.rate, burst_every=self.config.burst_every, seed=index)
        self.sensors_started = True

    def stop(self) -> None:
        """Stop sensors, the console core and the agents."""
        try:
            self.core.stop()
        finally:
            self.fleet.stop()

    def summary(self) -> dict[str, object]:
        """What the headless demo reports: nodes, stages, inputs per stage, escalation per link, power per node."""
        nodes = self.core.nodes().result(10)
        chain = [s.id for s in self.pipeline.chain()]
        per_stage: dict[str, dict[str, int]] = {sid: {"inferences": 0, "escalated": 0, "forwarded": 0,
                                                      "delivered": 0, "dropped": 0, "errors": 0, "nodes_ready": 0}
                                                for sid in chain}
        power = {}
        for node in nodes:
            for stage in node.stages:
                if stage.stage_id in per_stage and stage.serving:
                    per_stage[stage.stage_id]["nodes_ready"] += 1
            sample = self.latest.get(node.node_id)
            if sample is None:
                continue
            power[node.name] = {"tier": node.tier, "watts": round(sample.power_watts, 2),
                                "source": sample.power_source, "measured": sample.power_measured}
            for st in sample.stages:
                if st.stage_id in per_stage:
                    row = per_stage[st.stage_id]
                    row["inferences"] += st.inferences_total
                    row["escalated"] += st.escalated_total
                    row["forwarded"] += st.forwarded_total
                    row["delivered"] += st.delivered_total
                    row["dropped"] += st.dropped_total
                    row["errors"] += st.errors_total
        links = []
        for lower, upper in itertools.pairwise(chain):
            s = per_stage[lower]
            links.append({"link": f"{lower}->{upper}", "escalated": s["escalated"], "inferences": s["inferences"],
                          "escalation_rate": s["escalated"] / s["inferences"] if s["inferences"] else 0.0,
                          "reached_next": s["forwarded"] + s["delivered"]})
        result = self.deploy_result
        deployed = bool(result and result.ok)
        found = sum(1 for n in nodes if n.state in (NodeState.ONLINE, NodeState.DEGRADED))
        # Inputs answered at every tier (the deployer's smoke inferences are not counted by the agents); a stage
        # served by an engine tierdeck does not run counts as reached when the stage before it got answers from it.
        answered = {}
        for k, sid in enumerate(chain):
            if self.pipeline.stage(sid).endpoint is not None and k:
                answered[sid] = per_stage[chain[k - 1]]["forwarded"] + per_stage[chain[k - 1]]["delivered"] > 0
            else:
                answered[sid] = per_stage[sid]["inferences"] > 0
        flowed = all(answered.values())
        self.fleet.check_children()
        exits = [e.as_json() for e in self.fleet.unexpected_exits]
        return {
            "fleet_id": self.fleet_id,
            "nodes_expected": self.expected_nodes,
            "nodes_found": found,
            "nodes": [{"name": n.name, "tier": n.tier, "state": str(n.state), "address": n.address,
                       "stages": [s.stage_id for s in n.stages]} for n in nodes],
            "deploy_ok": deployed,
            "deploy_reason": "" if result is None else result.reason,
            "stages": per_stage,
            "links": links,
            "power": power,
            "unexpected_exits": exits,
            "answered_at_every_tier": flowed,
            "not_answered": [sid for sid, ok in answered.items() if not ok],
            "ok": found >= self.expected_nodes and deployed and flowed and not exits,
        }
