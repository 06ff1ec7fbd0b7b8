"""Helpers for the console-core tests: a three-stage pipeline of real ONNX files, agents, waiting.

Imported by the other tests/test_app_*.py modules; its own test checks that the generated pipeline
is one the pipeline-file loader accepts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
from agents import AgentProcess, start_agent
from models import classifier

from app._console import ConsoleCore
from app._records import NodeSample, NodeSnapshot, NodeState, StageSample
from app.pipeline_file import load_pipeline
from runners._proto import tierdeck_control_pb2 as ctl
from runners.client import NodeClient
from runners.protocol import STAGE_COUNTERS

RNG = np.random.default_rng(11)
W_DEVICE = RNG.normal(size=(4, 2)).astype(np.float32)
W_EDGE = RNG.normal(size=(4, 3)).astype(np.float32)
W_CLOUD = RNG.normal(size=(4, 3)).astype(np.float32)
X = RNG.normal(size=(300, 4)).astype(np.float32)
EDGE_LABELS = ["cargo", "tanker", "fishing"]
TIERS = ("device", "edge", "cloud")


def write_pipeline(folder: Path, name: str = "test-chain", weights: dict[str, np.ndarray] | None = None,
                   edge_threshold: float = 0.6, placements: dict[str, dict[str, object]] | None = None) -> Path:
    """Write three models and a pipeline file (detector → classifier → heavy) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    w = {"detector": W_DEVICE, "classifier": W_EDGE, "heavy": W_CLOUD, **(weights or {})}
    stages = []
    specs = [
        ("detector", "device", {"output": "probs", "labels": ["water", "vessel"], "drop_class": ["water"],
                                "class_in": ["vessel"]}),
        ("classifier", "edge", {"output": "probs", "labels": EDGE_LABELS, "confidence_below": edge_threshold}),
        ("heavy", "cloud", {"output": "probs", "labels": EDGE_LABELS}),
    ]
    for stage_id, tier, rule in specs:
        path = classifier(folder / f"{stage_id}-{hashlib.sha256(w[stage_id].tobytes()).hexdigest()[:8]}.onnx",
                          w[stage_id])
        stages.append({
            "id": stage_id,
            "model": path.name,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "placement": (placements or {}).get(stage_id, {"tier": tier}),
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, w[stage_id].shape[1]]}],
            "rule": rule,
            "budget": {"max_escalations_per_s": 0, "priority": "normal"},
        })
    doc = {"format": "tierdeck.pipeline", "version": 1, "name": name, "stages": stages}
    target = folder / f"{name}.pipeline.json"
    target.write_text(json.dumps(doc, indent=2))
    return target


@contextmanager
def three_agents(root: Path, *args: str) -> Iterator[dict[str, AgentProcess]]:
    """A device, an edge and a cloud agent (real processes) for the duration of the block."""
    with ExitStack() as stack:
        agents: dict[str, AgentProcess] = {}
        for tier in TIERS:
            agent = start_agent(root / tier, *args, tier=tier, name=f"{tier}-1")
            stack.callback(agent.stop)
            agents[tier] = agent
        yield agents


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05,
               message: str = "condition") -> None:
    """Poll `predicate` until it is truthy; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(interval)


def test_generated_pipeline_is_valid(tmp_path: Path) -> None:
    pipeline = load_pipeline(write_pipeline(tmp_path))
    assert [s.id for s in pipeline.chain()] == ["detector", "classifier", "heavy"]
    assert pipeline.stage("detector").next == "classifier"


def synthetic_sample(node_id: str, seq: int, ts_ms: int, *, boot_id: str = "boot-1", inferences_total: int = 0,
                     inferences: int = 0, escalated: int = 0, cpu: float = 10.0, power: float = 5.0,
                     energy: float = 0.0, p95: float = 1.0, stage_id: str = "s1") -> NodeSample:
    """A NodeSample with one stage, as the fleet would produce it (for database tests)."""
    counters = dict.fromkeys(STAGE_COUNTERS, 0) | {"requests_total": inferences_total,
                                                   "inferences_total": inferences_total, "escalated_total": escalated}
    stage = StageSample(stage_id, *counters.values(),
                        inferences, escalated, 0, 0, 0, 0, 10.0, 1.0, escalated / inferences if inferences else 0.0,
                        p95 / 2, p95, p95 * 2, 0, "none", energy, 0.0, "", ())
    return NodeSample(node_id, boot_id, seq, ts_ms, 1.0, cpu, 1000, power, "estimate", False, energy, 0.0, 0,
                      (stage,))


@contextmanager
def started_core(db_path: Path, **kwargs: object) -> Iterator[ConsoleCore]:
    """A ConsoleCore on its own I/O loop thread (as the GUI runs it) for the duration of the block."""
    core = ConsoleCore(db_path, **kwargs).start()  # type: ignore[arg-type]
    try:
        yield core
    finally:
        core.stop()


def wait_nodes(core: ConsoleCore, predicate: Callable[[list[NodeSnapshot]], bool], timeout: float = 60.0,
               message: str = "fleet condition") -> list[NodeSnapshot]:
    """Wait (on the core's loop, woken by fleet changes) until `predicate(nodes)` holds; returns the nodes."""
    assert core.fleet is not None
    if not core.submit(core.fleet.async_wait_for(predicate, timeout)).result(timeout + 5):
        raise AssertionError(f"timed out waiting for {message}: {core.nodes().result(5)}")
    return core.nodes().result(5)


def all_online(count: int) -> Callable[[list[NodeSnapshot]], bool]:
    """Predicate: `count` nodes, all online."""
    return lambda nodes: len(nodes) == count and all(n.state == NodeState.ONLINE for n in nodes)


def agent_totals(address: str) -> dict[str, ctl.StageTelemetry]:
    """The agent's own cumulative stage counters (a fresh WatchTelemetry stream of our own)."""
    async def go() -> dict[str, ctl.StageTelemetry]:
        async with NodeClient(address) as client:
            stream = client.telemetry(0.1)
            sample = await anext(stream)
            await stream.aclose()  # type: ignore[attr-defined]
        return {s.stage_id: s for s in sample.stages}
    return asyncio.run(go())
