"""A fleet is a scope the advertisements carry (TXT `fleet`): two fleets on one segment stay apart."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agents import start_agent
from conftest import ROOT

from app._demo import Demo, DemoConfig
from app._records import NodeState
from discovery import build_txt, check_fleet_id, encode_txt, parse_txt

LO = "127.0.0.1"


def test_the_fleet_key_is_short_optional_validated_and_survives_the_wire() -> None:
    txt = build_txt("4d6f5a1e-0000-4000-8000-000000000001", "edge", "0.1.0", extra={"fleet": "demo-1a2b3c4d",
                                                                                     "zz-future": "1"})
    assert all(len(key) <= 9 for key in txt)
    wire = encode_txt(txt.items())
    assert len(wire) <= 400
    advert = parse_txt(wire)
    assert advert.fleet == "demo-1a2b3c4d" and advert.as_json()["fleet"] == "demo-1a2b3c4d"
    assert parse_txt({k: v for k, v in txt.items() if k != "fleet"}).fleet == ""  # older nodes: no scope
    for bad in ("", "-x", "a b", "x" * 33, "../x"):
        with pytest.raises(ValueError):
            check_fleet_id(bad)
    with pytest.raises(ValueError, match="fleet"):
        parse_txt({**txt, "fleet": "bad id"})


def _nodes(*args: str) -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-m", "cli", "nodes", "--interface", LO, "--timeout", "4", "--json",
                           *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {n["name"]: n["fleet"] for n in json.loads(proc.stdout)}


def test_two_fleets_advertising_on_loopback_are_listed_apart(tmp_path: Path) -> None:
    run = secrets.token_hex(3)
    alpha, beta = f"alpha-{run}", f"beta-{run}"
    plan = [("a1", alpha), ("a2", alpha), ("b1", beta), ("stray", "")]
    agents = []
    try:
        for name, fleet in plan:
            args = ["--mdns-interface", LO, *(["--fleet-id", fleet] if fleet else [])]
            agents.append(start_agent(tmp_path / name, *args, name=f"{name}-{run}"))
        mine = {f"{name}-{run}" for name, _ in plan}
        everything = _nodes()
        assert mine <= set(everything)  # unscoped: every node on the segment
        assert _nodes("--fleet-id", alpha) == {f"a1-{run}": alpha, f"a2-{run}": alpha}
        assert _nodes("--fleet-id", beta) == {f"b1-{run}": beta}
        bad = subprocess.run([sys.executable, "-m", "cli", "nodes", "--fleet-id", "no spaces"],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert bad.returncode == 2 and "bad fleet id" in bad.stderr
    finally:
        for agent in agents:
            agent.stop()


def test_the_demo_shows_and_deploys_only_to_its_own_nodes(tmp_path: Path) -> None:
    # A stray node from "another run" on the same host, plus one from another demo-like fleet.
    stray = start_agent(tmp_path / "stray", "--mdns-interface", LO, name="device-1", tier="device")
    other = start_agent(tmp_path / "other", "--mdns-interface", LO, "--fleet-id", "demo-other", name="edge-1")
    demo = Demo(DemoConfig(device=1, edge=1, cloud=1, base_dir=tmp_path / "fleet"))
    try:
        demo.start()
        mine = {c.node_id for c in demo.fleet.agents()}
        nodes = demo.wait_online()
        assert sum(1 for n in nodes if n.state == NodeState.ONLINE) == 3
        time.sleep(3.0)  # long enough for the strays' adverts to have been seen (and left out)
        nodes = demo.core.nodes().result(10)
        assert {n.node_id for n in nodes} == mine
        plan = demo.core.plan(demo.pipeline).result(60)
        assert plan.ok, plan.problems
        assert {p.node_id for p in plan.nodes} <= mine and not plan.warnings
        assert demo.summary()["fleet_id"] == demo.fleet_id
    finally:
        demo.stop()
        stray.stop()
        other.stop()
