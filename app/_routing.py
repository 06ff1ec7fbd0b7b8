"""Where escalations go: which nodes run each stage and which node each of them escalates to (no Qt, no I/O).

One source for the deployer's placement and next-hop rules, so the canvas shows exactly what a
deployment will wire up:

* a stage placed on a tier runs on every reachable (online or degraded) node of that tier; a
  stage pinned to nodes runs on exactly those that are known and reachable;
* the nodes of each stage are taken in node-id order, and the i-th node of stage k escalates to
  node i mod m of stage k+1 (round-robin over the m nodes of the next stage).

`placement_warnings` puts into words the placements that deploy but make little sense: a heavier
model filtering ahead of a lighter one, several nodes funnelling into a single node of their own
tier or below, escalations going down a tier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from app._records import NodeSnapshot, NodeState
from app.pipeline_file import TIERS, Stage

REACHABLE = (NodeState.ONLINE, NodeState.DEGRADED)
TIER_ORDER = {t: i for i, t in enumerate(TIERS)}


@dataclass(frozen=True)
class Targets:
    """The nodes a stage runs on, and what stops or limits that (in words)."""

    stage_id: str
    nodes: tuple[NodeSnapshot, ...]
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    """One node's escalations for a stage: from (node running stage k) to (node running stage k+1)."""

    source: NodeSnapshot
    target: NodeSnapshot


@dataclass(frozen=True)
class Link:
    """The escalation link from one stage to the next, node by node."""

    stage_id: str
    next_stage_id: str
    routes: tuple[Route, ...]

    def words(self, limit: int = 4) -> list[str]:
        """'device-1, device-3 → edge-1 (edge)' — one line per target node, in target order."""
        by_target: dict[str, list[NodeSnapshot]] = {}
        targets: dict[str, NodeSnapshot] = {}
        for r in self.routes:
            key = r.target.node_id or r.target.key
            by_target.setdefault(key, []).append(r.source)
            targets[key] = r.target
        lines = []
        for key, sources in by_target.items():
            names = sorted(s.name for s in sources)
            shown = ", ".join(names[:limit]) + (f" +{len(names) - limit}" if len(names) > limit else "")
            lines.append(f"{shown} → {targets[key].name} ({targets[key].tier})")
        return lines


def stage_targets(stage: Stage, nodes: Sequence[NodeSnapshot]) -> Targets:
    """The reachable nodes a stage goes to, sorted by node id (the deployer's and the canvas's rule)."""
    problems: list[str] = []
    warnings: list[str] = []
    chosen: list[NodeSnapshot] = []
    if stage.placement.tier:
        tier_nodes = [n for n in nodes if n.tier == stage.placement.tier]
        chosen = [n for n in tier_nodes if n.state in REACHABLE]
        for n in tier_nodes:
            if n.state not in REACHABLE:
                warnings.append(f"{n.name} ({stage.placement.tier}) is {n.state}: stage {stage.id} is not deployed "
                                "there")
        if not chosen:
            problems.append(f"stage {stage.id}: no reachable node in tier {stage.placement.tier}")
    else:
        by_key = {n.key: n for n in nodes}
        by_id = {n.node_id: n for n in nodes if n.node_id}
        for wanted in stage.placement.nodes:
            found = by_id.get(wanted) or by_key.get(wanted)
            if found is None:
                problems.append(f"stage {stage.id}: pinned node {wanted} is not in the fleet")
            elif found.state not in REACHABLE:
                problems.append(f"stage {stage.id}: pinned node {found.name} is {found.state}")
            else:
                chosen.append(found)
    return Targets(stage.id, tuple(sorted(chosen, key=lambda n: n.node_id or n.key)), tuple(problems),
                   tuple(warnings))


def next_hop(index: int, hops: Sequence[NodeSnapshot]) -> NodeSnapshot | None:
    """The node the `index`-th node of a stage escalates to (round-robin over the next stage's nodes)."""
    return hops[index % len(hops)] if hops else None


def links(chain: Sequence[Stage], nodes: Sequence[NodeSnapshot]) -> list[Link]:
    """Every escalation link of a chain of stages, node by node, as a deployment would wire it."""
    targets = {s.id: stage_targets(s, nodes).nodes for s in chain}
    out = []
    for k in range(len(chain) - 1):
        stage, following = chain[k], chain[k + 1]
        hops = targets[following.id]
        routes = []
        for i, node in enumerate(targets[stage.id]):
            hop = next_hop(i, hops)
            if hop is not None:
                routes.append(Route(node, hop))
        out.append(Link(stage.id, following.id, tuple(routes)))
    return out


def stage_tier(stage: Stage, nodes: Sequence[NodeSnapshot]) -> str:
    """A stage's tier: its placement's, or that of its first known pinned node ('' when unknown)."""
    if stage.placement.tier:
        return stage.placement.tier
    by_id = {n.node_id: n for n in nodes if n.node_id}
    for wanted in stage.placement.nodes:
        node = by_id.get(wanted)
        if node is not None:
            return node.tier
    return ""


def placement_warnings(chain: Sequence[Stage], nodes: Sequence[NodeSnapshot],
                       model_bytes: Mapping[str, int] | None = None) -> list[tuple[str, str]]:
    """(stage id, words) for placements that deploy but make little sense; the stage is the one to look at."""
    out: list[tuple[str, str]] = []
    sizes = model_bytes or {}
    for k, stage in enumerate(chain):
        size = sizes.get(stage.id, 0)
        lighter = [s for s in chain[k + 1:] if 0 < sizes.get(s.id, 0) * 2 < size]
        if lighter:
            names = ", ".join(f"{s.id} ({sizes[s.id] / 2**20:.1f} MiB)" for s in lighter)
            out.append((stage.id, f"{stage.id} ({size / 2**20:.1f} MiB) filters ahead of lighter "
                                  f"{'models' if len(lighter) > 1 else 'model'} {names}: a cascade usually "
                                  "runs the cheapest model first and escalates to the heavy one"))
    for k in range(len(chain) - 1):
        stage, following = chain[k], chain[k + 1]
        here, there = stage_tier(stage, nodes), stage_tier(following, nodes)
        if here and there and TIER_ORDER.get(there, 0) < TIER_ORDER.get(here, 0):
            out.append((following.id, f"{stage.id} on the {here} tier escalates down to {following.id} on the "
                                      f"{there} tier: escalations normally go up, towards more compute"))
    for link in links(chain, nodes):
        sources = {r.source.node_id or r.source.key for r in link.routes}
        targets = {r.target.node_id or r.target.key: r.target for r in link.routes}
        if len(sources) > 1 and len(targets) == 1:
            target = next(iter(targets.values()))
            source_tier = max((TIER_ORDER.get(r.source.tier, 0) for r in link.routes), default=0)
            if TIER_ORDER.get(target.tier, 0) <= source_tier:
                out.append((link.next_stage_id,
                            f"all {len(sources)} nodes running {link.stage_id} escalate to one node, "
                            f"{target.name} ({target.tier} tier), which also takes their whole load: place "
                            f"{link.next_stage_id} on a higher tier, or on more nodes"))
    return out
