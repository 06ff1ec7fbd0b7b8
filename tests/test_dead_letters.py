"""Dead letters: escalations a next hop refuses as invalid are kept aside with their reason, listed per link,
and can be retried once the hop is fixed, or discarded; the node's counters agree at every step."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from agents import running_agent
from conftest import ROOT
from models import classifier
from test_app_support import W_EDGE, X, agent_totals

from runners._proto import tierdeck_control_pb2 as ctl
from runners.client import NodeClient, manifest_for


def _stage(address: str, stage_id: str) -> ctl.StageTelemetry:
    return agent_totals(address)[stage_id]


def _wait(predicate, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_refused_escalations_are_kept_listed_retried_and_discarded(tmp_path: Path) -> None:
    good = classifier(tmp_path / "top.onnx", W_EDGE).read_bytes()
    wrong = classifier(tmp_path / "wrong.onnx", W_EDGE[:3]).read_bytes()  # takes 3 features, not 4
    edge_model = classifier(tmp_path / "edge.onnx", np.zeros((4, 2), np.float32)).read_bytes()
    with running_agent(tmp_path / "cloud", tier="cloud") as cloud, running_agent(tmp_path / "edge") as edge:
        async def setup() -> None:
            async with NodeClient(cloud.address) as c:
                await c.deploy(manifest_for("top", wrong, "1"), wrong)
            async with NodeClient(edge.address) as c:
                rule = ctl.EscalationRule(output="probs", labels=["a", "b"], confidence_below=0.9)
                hop = ctl.NextHop(address=cloud.address, model="top", labels=["x", "y", "z"])
                await c.deploy(manifest_for("edge", edge_model, "1", rule=rule, next_hop=hop), edge_model)
                for start in (0, 5):  # every row escalates (p = 0.5 < 0.9); the hop refuses them
                    out = (await c.infer("edge", {"x": X[start:start + 5]})).outputs
                    assert not out["decision_final"].any()
        asyncio.run(setup())
        _wait(lambda: _stage(edge.address, "edge").dead_letters == 10, "10 dead letters")
        totals = _stage(edge.address, "edge")
        assert totals.dead_letter_total == 10 and totals.queue_depth == 0 and totals.delivered_total == 0

        def tierdeck(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "cli", "dead-letters", *args, "--node", edge.address,
                                   "--node", cloud.address, "--db", str(tmp_path / "c.sqlite")],
                                  capture_output=True, text=True, cwd=ROOT, timeout=120)

        listed = tierdeck("--json")
        assert listed.returncode == 0, listed.stderr
        nodes = {n["node"]: n for n in json.loads(listed.stdout)["nodes"]}
        letters = nodes["node"]["letters"]
        assert nodes["node"]["total"] == 10 and len(letters) == 10
        assert all("INVALID_ARGUMENT" in d["error"] and d["stage"] == "edge" and d["age_s"] >= 0 for d in letters)
        assert "10 dead letter(s)" in tierdeck().stdout
        assert tierdeck("--retry").returncode == 2  # acting needs the stage named

        # Discard two of them, then fix the hop and retry the rest: delivered once each, counts agree.
        discarded = tierdeck("edge", "--discard", "--seq", str(letters[0]["seq"]), "--seq", str(letters[1]["seq"]))
        assert discarded.returncode == 0 and "2 discarded" in discarded.stdout, discarded.stdout

        async def fix() -> None:
            async with NodeClient(cloud.address) as c:
                await c.deploy(manifest_for("top", good, "2"), good)
        asyncio.run(fix())
        retried = tierdeck("edge", "--retry")
        assert retried.returncode == 0 and "8 retried" in retried.stdout, retried.stdout
        _wait(lambda: _stage(edge.address, "edge").delivered_total == 8, "8 delivered")
        totals = _stage(edge.address, "edge")
        assert totals.dead_letters == 0 and totals.queue_depth == 0 and totals.dead_letter_total == 10
        assert _stage(cloud.address, "top").inferences_total == 8
        assert "no dead letters" in tierdeck().stdout
