"""Planning (placement, next hops, the per-node diff) and the fit check, on fleet snapshots."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_app_support import write_pipeline

from app._deployer import ADD, REMOVE, UNCHANGED, UPDATE, plan, requirements_for
from app._fit import SESSION_OVERHEAD, Requirements, check_fit, memory_estimate, read_model_card
from app._records import NodeInfoSummary, NodeSnapshot, NodeState, StageSnapshot
from app.pipeline_file import Pipeline, load_pipeline

MiB = 1 << 20
INFO = NodeInfoSummary(ram_free_bytes=4096 * MiB, execution_providers=("CPUExecutionProvider",))


def node(node_id: str, tier: str, state: NodeState = NodeState.ONLINE, info: NodeInfoSummary = INFO,
         stages: tuple[StageSnapshot, ...] = ()) -> NodeSnapshot:
    address = f"10.0.{ord(node_id[0])}.{int(node_id[1:])}:50051"
    return NodeSnapshot(node_id, node_id, f"{tier}-{node_id}", tier, address, state=state, info=info, stages=stages)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return load_pipeline(write_pipeline(tmp_path_factory.mktemp("p")))


def test_tiers_get_every_reachable_node_and_next_hops_go_round_robin(pipeline: Pipeline) -> None:
    fleet = [node(f"d{i}", "device") for i in (3, 1, 0, 2)] + [node("e1", "edge"), node("e0", "edge"),
                                                                node("c0", "cloud")]
    p = plan(pipeline, fleet)
    assert p.ok and p.has_changes
    hops = {n.node_id: n.actions[0].next_node for n in p.nodes if n.tier == "device"}
    assert hops == {"d0": "e0", "d1": "e1", "d2": "e0", "d3": "e1"}
    assert {n.node_id: n.actions[0].next_node for n in p.nodes if n.tier == "edge"} == {"e0": "c0", "e1": "c0"}
    cloud = p.node("c0")
    assert cloud is not None and cloud.actions[0].next_hop == "" and cloud.actions[0].kind == ADD
    by_node = {n["node_id"]: n for n in p.as_json()["nodes"]}
    reordered = {n["node_id"]: n for n in plan(pipeline, list(reversed(fleet))).as_json()["nodes"]}
    assert by_node == reordered, "the plan does not depend on the order nodes became known"
    json.dumps(p.as_json())


def test_the_diff_says_add_update_remove_unchanged_and_why(pipeline: Pipeline) -> None:
    fleet = [node("d0", "device"), node("e0", "edge"), node("c0", "cloud")]
    first = plan(pipeline, fleet)
    version = {n.node_id: n.actions[0].version for n in first.nodes}
    detector = pipeline.stage("detector")
    running = [
        replace(fleet[0], stages=(StageSnapshot("detector", version["d0"], detector.sha256,
                                                next_hop=fleet[1].address),)),
        replace(fleet[1], stages=(StageSnapshot("classifier", "old-version", "0" * 64),)),
        replace(fleet[2], stages=(StageSnapshot("heavy", version["c0"], pipeline.stage("heavy").sha256),
                                  StageSnapshot("retired", "1", "1" * 64),
                                  StageSnapshot("someone-elses", "1", "2" * 64))),
    ]
    p = plan(pipeline, running, managed={"c0": {"heavy", "retired"}})
    kinds = {(n.node_id, a.stage_id): (a.kind, a.reason) for n in p.nodes for a in n.actions}
    assert kinds[("d0", "detector")] == (UNCHANGED, "same model and policy")
    assert kinds[("e0", "classifier")][0] == UPDATE and "model changed" in kinds[("e0", "classifier")][1]
    assert kinds[("c0", "heavy")][0] == UNCHANGED
    assert kinds[("c0", "retired")] == (REMOVE, "no longer in the pipeline")
    assert ("c0", "someone-elses") not in kinds, "stages of other pipelines are left alone"
    # ... but the plan says so, in the node's name, with the command that removes it
    left = [w for w in p.warnings if "someone-elses" in w]
    assert left and "cloud-c0 (cloud) also runs stage someone-elses" in left[0]
    assert "tierdeck undeploy someone-elses --node cloud-c0" in left[0]
    assert not any("retired" in w for w in p.warnings), "a stage the plan removes is not also warned about"
    # next-hop changes are said with node names and tiers
    moved = plan(pipeline, [replace(running[0], stages=(StageSnapshot("detector", "v", detector.sha256,
                                                                      next_hop="10.9.9.9:1"),)),
                            running[1], running[2]])
    why = next(a.reason for n in moved.nodes for a in n.actions if a.stage_id == "detector")
    assert why == "escalates to edge-e0 (edge) instead of 10.9.9.9:1"

    # Only the edge threshold changes: a policy update there, nothing else moves.
    tweaked = replace(pipeline, stages=tuple(
        replace(s, rule=replace(s.rule, confidence_below=0.7)) if s.id == "classifier" else s
        for s in pipeline.stages))
    edge_version = next(a.version for n in first.nodes for a in n.actions if a.stage_id == "classifier")
    edge_sha = pipeline.stage("classifier").sha256
    running[1] = replace(fleet[1], stages=(StageSnapshot("classifier", edge_version, edge_sha,
                                                         next_hop=fleet[2].address),))
    p2 = plan(tweaked, running)
    kinds2 = {(n.node_id, a.stage_id): (a.kind, a.reason) for n in p2.nodes for a in n.actions}
    assert kinds2[("e0", "classifier")] == (UPDATE, "rule, budget or tensors changed")
    assert kinds2[("d0", "detector")][0] == UNCHANGED


def test_a_stage_placed_elsewhere_now_is_removed(pipeline: Pipeline) -> None:
    fleet = [node("d0", "device", stages=(StageSnapshot("classifier", "v", "0" * 64),)), node("e0", "edge"),
             node("c0", "cloud")]
    p = plan(pipeline, fleet)
    d0 = p.node("d0")
    assert d0 is not None
    assert {(a.stage_id, a.kind, a.reason) for a in d0.actions} >= {("classifier", REMOVE, "placed on other nodes now")}


def test_unreachable_placements_block_the_plan_with_reasons(pipeline: Pipeline) -> None:
    fleet = [node("d0", "device"), node("d1", "device", NodeState.OFFLINE), node("e0", "edge")]
    p = plan(pipeline, fleet)
    assert not p.ok
    assert p.problems == ("stage heavy: no reachable node in tier cloud",)
    assert any("d1" in w and "offline" in w for w in p.warnings)
    pinned = replace(pipeline, stages=tuple(
        replace(s, placement=replace(s.placement, tier=None, nodes=("nope",))) if s.id == "heavy" else s
        for s in pipeline.stages))
    p2 = plan(pinned, [*fleet, node("c0", "cloud")])
    assert p2.problems == ("stage heavy: pinned node nope is not in the fleet",)


def test_fit_check_rejections_carry_their_reason(tmp_path: Path, pipeline: Pipeline) -> None:
    card = read_model_card(pipeline.stage("detector").model_path)  # type: ignore[arg-type]
    assert card.inputs[0].name == "x" and card.inputs[0].shape == (-1, 4) and card.opset == 17
    req = Requirements.from_card(card, "detector")
    assert req.memory_bytes == memory_estimate(card.size_bytes) == 3 * card.size_bytes + SESSION_OVERHEAD

    roomy = node("d0", "device")
    assert check_fit(req, roomy).fits

    tight = node("d1", "device", info=replace(INFO, ram_free_bytes=10 * MiB))
    result = check_fit(req, tight)
    assert not result.fits and "free" in result.reason and "10.0 MiB" in result.reason

    capped = node("d2", "device", info=replace(INFO, memory_cap_bytes=100))
    assert "memory cap" in check_fit(req, capped).reason

    gpu = Requirements(req.memory_bytes, req.model_bytes, ("CUDAExecutionProvider",))
    assert "needs execution provider CUDAExecutionProvider" in check_fit(gpu, roomy).reason

    budgeted = node("d3", "device", info=replace(INFO, power_budget_watts=10.0))
    hungry = Requirements(req.memory_bytes, req.model_bytes, watts=2.5)
    assert check_fit(hungry, budgeted, power_now_watts=5.0).fits
    over = check_fit(hungry, budgeted, power_now_watts=9.0)
    assert not over.fits and "power budget of 10.0 W" in over.reason and "11.5 W" in over.reason

    offline = node("d4", "device", NodeState.OFFLINE, info=INFO)
    assert "offline" in check_fit(req, offline).reason
    unknown = replace(node("d5", "device"), info=None, state=NodeState.CONNECTING)
    assert "unknown" in check_fit(req, unknown).reason

    # In a plan, a rejection blocks it and names the stage, the node and the reason.
    fleet = [tight, node("e0", "edge"), node("c0", "cloud")]
    p = plan(pipeline, fleet, requirements=requirements_for(pipeline))
    assert not p.ok
    assert p.problems[0].startswith(f"stage detector does not fit on {tight.name}: needs about")


def test_routing_and_odd_placements_in_words(pipeline: Pipeline) -> None:
    from app._routing import links, placement_warnings
    from app.pipeline_file import Placement

    fleet = [node("d0", "device"), node("d1", "device"), node("e0", "edge"), node("c0", "cloud")]
    chain = pipeline.chain()
    words = {link.stage_id: link.words() for link in links(chain, fleet)}
    assert words["detector"] == ["device-d0, device-d1 → edge-e0 (edge)"]
    assert placement_warnings(chain, fleet, {"detector": 1000, "classifier": 5000, "heavy": 50000}) == []
    # heavy pinned to one device node, right after the detector: everything funnels into device-d0
    odd = [chain[0], replace(chain[2], placement=Placement(nodes=("d0",))), chain[1]]
    said = placement_warnings(odd, fleet, {"detector": 1000, "classifier": 5000, "heavy": 50000})
    assert any(sid == "heavy" and "ahead of lighter model classifier" in w for sid, w in said)
    assert any(sid == "heavy" and "all 2 nodes running detector escalate to one node, device-d0 (device tier)" in w
               for sid, w in said)
    down = placement_warnings([chain[0], chain[2], chain[1]], fleet)
    assert ("classifier", "heavy on the cloud tier escalates down to classifier on the edge tier: escalations "
                          "normally go up, towards more compute") in down
