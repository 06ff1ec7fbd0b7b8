"""No stale answer after a redeploy: every answer checked against an onnxruntime reference, before and after
each kind of change that touches a stage's next hop (labels, rule, next-hop node, model version, restart).

Operator-style models (scikit-learn digits classifiers exported with skl2onnx) on real agents, deployed by the
console core's deployer as `tierdeck deploy` does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agents import AgentProcess, start_agent
from byo_models import DIGITS, big_classifier, digits, probabilities, small_classifier, stage_entry, write_pipeline
from test_app_support import started_core, wait_nodes

from app._console import ConsoleCore
from app.pipeline_file import load_pipeline
from runners.client import NodeClient

pytestmark = pytest.mark.slow


def _cascade(device_model: Path, cloud_model: Path, threshold: float, cloud_labels: list[str],
             x: np.ndarray) -> tuple[list[str], list[str]]:
    """What the two-stage cascade must answer, row by row, computed with onnxruntime alone."""
    p_dev = probabilities(device_model, x)
    p_cloud = probabilities(cloud_model, x)
    escalate = p_dev.max(axis=1) < threshold
    labels = [cloud_labels[c] if e else DIGITS[d]
              for e, d, c in zip(escalate, p_dev.argmax(axis=1), p_cloud.argmax(axis=1), strict=True)]
    stages = ["digits_big" if e else "digits_small" for e in escalate]
    return labels, stages


def _ask(address: str, x: np.ndarray, batch: int = 40) -> tuple[list[str], list[str]]:
    async def go() -> tuple[list[str], list[str]]:
        async with NodeClient(address) as client:
            labels: list[str] = []
            stages: list[str] = []
            for start in range(0, len(x), batch):
                result = await client.infer("digits_small", {"X": x[start:start + batch]}, timeout=30.0)
                labels += [v.decode() for v in result.outputs["decision_label"]]
                stages += [v.decode() for v in result.outputs["decision_stage"]]
            return labels, stages
    return asyncio.run(go())


class Scenario:
    """The two-tier digits cascade on real agents; `deploy()` writes the pipeline and applies it."""

    def __init__(self, root: Path, core: ConsoleCore, agents: dict[str, AgentProcess]) -> None:
        self.root, self.core, self.agents = root, core, agents
        self.device_model = small_classifier(root / "small.onnx")
        self.cloud_model = big_classifier(root / "big-v1.onnx")
        self.threshold = 0.9
        self.labels = list(DIGITS)
        self.cloud_placement: dict[str, Any] = {"tier": "cloud"}
        _, _, self.x, _ = digits()

    def deploy(self) -> None:
        stages = [
            stage_entry("digits_small", self.device_model,
                        {"output": "probabilities", "labels": DIGITS, "confidence_below": self.threshold},
                        {"tier": "device"}),
            stage_entry("digits_big", self.cloud_model, {"output": "probabilities", "labels": self.labels},
                        self.cloud_placement),
        ]
        pipeline = load_pipeline(write_pipeline(self.root, stages))
        the_plan = self.core.plan(pipeline).result(30)
        assert the_plan.ok, the_plan.problems
        result = self.core.apply(the_plan).result(120)
        assert result.ok, result

    def check(self, what: str) -> int:
        """Send every test row through the device; each answer must equal the reference. Returns escalations."""
        want_labels, want_stages = _cascade(self.device_model, self.cloud_model, self.threshold, self.labels, self.x)
        got_labels, got_stages = _ask(self.agents["device"].address, self.x)
        wrong = [(i, got_labels[i], want_labels[i], got_stages[i]) for i in range(len(self.x))
                 if (got_labels[i], got_stages[i]) != (want_labels[i], want_stages[i])]
        assert not wrong, f"{what}: {len(wrong)} of {len(self.x)} answers wrong, first (row, got, due, stage): " \
                          f"{wrong[:5]}"
        return want_stages.count("digits_big")


def test_no_redeploy_returns_an_answer_of_another_version_or_input(tmp_path: Path) -> None:
    agents = {
        "device": start_agent(tmp_path / "device", tier="device", name="device-1"),
        "cloud": start_agent(tmp_path / "cloud", tier="cloud", name="cloud-1"),
        "cloud2": start_agent(tmp_path / "cloud2", tier="cloud", name="cloud-2"),
    }
    try:
        with started_core(tmp_path / "console.sqlite", telemetry_interval_s=0.5) as core:
            for agent in agents.values():
                core.add_address(agent.address).result(10)
            wait_nodes(core, lambda nodes: len(nodes) == 3 and all(n.state.value == "online" for n in nodes),
                       message="three nodes online")
            s = Scenario(tmp_path, core, agents)
            s.cloud_placement = {"nodes": [agents["cloud"].node_id]}
            s.deploy()
            escalated = s.check("first deploy")
            assert 20 < escalated < len(s.x) // 2  # a cascade that really escalates

            # 1. Only the cloud stage's labels change: the device's next hop changes with them.
            s.labels = [f"d{d}" for d in DIGITS]
            s.deploy()
            s.check("cloud labels renamed")

            # 2. The device's rule changes (more rows escalate; rows seen before are sent again).
            s.threshold = 0.97
            s.deploy()
            s.check("device threshold raised")

            # 3. The next hop moves to another node, then back to the first (which still caches its old rows).
            s.cloud_placement = {"nodes": [agents["cloud2"].node_id]}
            s.deploy()
            s.check("next hop moved to cloud-2")
            s.cloud_placement = {"nodes": [agents["cloud"].node_id]}
            s.labels = list(DIGITS)
            s.deploy()
            s.check("next hop moved back to cloud-1, labels back")

            # 4. A new model version on the cloud (same labels, same rule).
            s.cloud_model = big_classifier(tmp_path / "big-v2.onnx", seed=5, hidden=24)
            s.deploy()
            s.check("cloud model retrained")

            # 5. The device agent restarts (a new boot, the same data dir) and the cloud keeps its caches.
            agents["device"].stop()
            agents["device"] = start_agent(tmp_path / "device", tier="device", name="device-1")
            s.agents = agents
            s.check("device agent restarted")
            # And the same rows once more: answered right, never from an unrelated cache entry.
            s.check("same rows again")
    finally:
        for agent in agents.values():
            agent.stop()
