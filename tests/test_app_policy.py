"""Live policy changes and enrolment through the console core, against real agents."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from agents import running_agent
from test_app_support import all_online, started_core, three_agents, wait_nodes, wait_until, write_pipeline

from app.core import ConsoleEvent
from app.fleet_ca import FleetCA
from app.pipeline_file import load_pipeline
from runners.client import NodeClient


def test_update_policy_reaches_every_node_of_the_stage_live(tmp_path: Path) -> None:
    pipeline = load_pipeline(write_pipeline(tmp_path / "pipe"))
    events: list[ConsoleEvent] = []
    with three_agents(tmp_path / "agents") as agents, \
            started_core(tmp_path / "console.sqlite", telemetry_interval_s=0.2) as core:
        core.subscribe_events(events.append)
        for agent in agents.values():
            core.add_address(agent.address).result(10)
        wait_nodes(core, all_online(3), message="three nodes online")
        _, result = core.submit(core.async_deploy(pipeline)).result(120)
        assert result.ok, result.reason
        before = {s.stage_id: s.version for n in core.nodes().result(5) for s in n.stages}
        rule = dataclasses.replace(pipeline.stage("classifier").rule, confidence_below=0.9)
        assert core.update_policy("classifier", rule=rule).result(30) == {"edge-1": ""}

        async def threshold() -> float:
            async with NodeClient(agents["edge"].address) as client:
                (stage,) = await client.stages()
                return stage.manifest.rule.confidence_below
        assert abs(asyncio.run(threshold()) - 0.9) < 1e-9
        after = {s.stage_id: s.version for n in core.nodes().result(5) for s in n.stages}
        assert after == before, "a policy change is not a redeploy"
        wait_until(lambda: any(e.kind == "policy_updated" for e in events), message="an audit event")
        try:
            core.update_policy("no-such-stage", rule=rule).result(30)
            raise AssertionError("expected a LookupError")
        except LookupError as exc:
            assert "no node runs stage" in str(exc)


def test_enrol_from_the_console_then_connect_with_mutual_tls(tmp_path: Path) -> None:
    fleet = FleetCA.init(tmp_path / "fleet")
    with running_agent(tmp_path / "node", secure=True, name="gate") as agent, \
            started_core(tmp_path / "console.sqlite", telemetry_interval_s=0.2, tls=fleet.console_tls()) as core:
        code = str(agent.extra["pairing_code"])
        events: list[ConsoleEvent] = []
        core.subscribe_events(events.append)
        try:
            core.enroll(agent.address, "WRNG-WRNG-WRNG-WRNG", tmp_path / "fleet").result(30)
            raise AssertionError("a wrong code must not enrol")
        except Exception as exc:
            assert "pairing code" in str(exc)
        assert core.enroll(agent.address, code, tmp_path / "fleet").result(30).node_id == agent.node_id
        nodes = wait_nodes(core, all_online(1), message="the enrolled node online over mutual TLS")
        assert nodes[0].node_id == agent.node_id and nodes[0].info is not None
        assert nodes[0].info.enrolled and not nodes[0].info.insecure
        assert any(e.kind == "node_enrolled" for e in events)
