"""Headless parity: `tierdeck deploy`, `status` and `export` as processes against real agents."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT
from test_app_support import X, three_agents, write_pipeline

from runners.client import NodeClient


def tierdeck(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def test_deploy_status_export_from_the_command_line(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path / "pipeline")
    db = tmp_path / "console.sqlite"
    with three_agents(tmp_path) as agents:
        fleet = tmp_path / "fleet.txt"
        fleet.write_text("# test fleet\n" + "".join(f"{a.address} {tier}\n" for tier, a in agents.items()))

        run = tierdeck("deploy", str(pipeline), "--fleet", str(fleet), "--db", str(db), "--json")
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        assert report["result"]["status"] == "succeeded"
        assert {n["name"] for n in report["plan"]["nodes"]} == {"device-1", "edge-1", "cloud-1"}
        assert {a["provider"] for n in report["plan"]["nodes"] for a in n["actions"]} == {"CPUExecutionProvider"}
        assert {(p["node_name"], p["step"]) for p in report["progress"] if p["status"] == "done"} >= {
            ("cloud-1", "verify"), ("edge-1", "verify"), ("device-1", "verify")}

        text = tierdeck("deploy", str(pipeline), "--fleet", str(fleet), "--db", str(db))
        assert text.returncode == 0, text.stderr
        assert "unchanged" in text.stdout and "[CPU]" in text.stdout  # the provider each stage runs on

        async def traffic() -> None:
            async with NodeClient(agents["device"].address) as client:
                await client.infer("detector", {"x": X[:20]})
        asyncio.run(traffic())
        status = tierdeck("status", "--fleet", str(fleet), "--db", str(db), "--json")
        assert status.returncode == 0, status.stderr
        nodes = {n["name"]: n for n in json.loads(status.stdout)}
        assert {n["state"] for n in nodes.values()} == {"online"}
        assert [s["stage_id"] for s in nodes["edge-1"]["stages"]] == ["classifier"]
        assert nodes["edge-1"]["stages"][0]["runs_on"] == "CPUExecutionProvider"
        assert nodes["device-1"]["telemetry"]["stages"]["detector"]["inferences_total"] == 20
        table = tierdeck("status", "--fleet", str(fleet), "--db", str(db))
        assert table.returncode == 0 and "classifier@" in table.stdout and "online" in table.stdout
        assert " on CPU" in table.stdout

    exported = tierdeck("export", "--db", str(db), "--json", "--table", "telemetry", "--table", "events",
                        "--table", "deployments")
    assert exported.returncode == 0, exported.stderr
    data = json.loads(exported.stdout)
    assert data["telemetry"] and {"node_id", "boot_id", "seq", "ts_ms", "stage"} <= set(data["telemetry"][0])
    assert any("succeeded" in e["message"] for e in data["events"])
    assert [d["status"] for d in data["deployments"]] == ["succeeded", "unchanged"]
    assert data["deployments"][0]["steps"]

    events_csv = tierdeck("export", "--db", str(db), "--csv", "--table", "events", "--since", "1h")
    assert events_csv.returncode == 0, events_csv.stderr
    rows = list(csv.DictReader(io.StringIO(events_csv.stdout)))
    assert rows and {"ts_ms", "kind", "severity", "message"} <= set(rows[0])

    misuse = tierdeck("export", "--db", str(db), "--csv", "--table", "events", "--table", "telemetry")
    assert misuse.returncode == 2 and "one --table" in misuse.stderr
    assert tierdeck("export", "--db", str(tmp_path / "nope.sqlite")).returncode == 2


def test_deploy_that_does_not_fit_exits_non_zero_with_the_reason(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path / "pipeline")
    with three_agents(tmp_path, "--memory-cap-mb", "0.0001") as agents:
        nodes = [arg for a in agents.values() for arg in ("--node", a.address)]
        run = tierdeck("deploy", str(pipeline), *nodes, "--db", str(tmp_path / "db.sqlite"))
    assert run.returncode == 1
    assert "refused" in run.stderr and "does not fit" in run.stderr and "memory cap" in run.stderr


def test_deploy_of_an_invalid_pipeline_file_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pipeline.json"
    bad.write_text(json.dumps({"format": "tierdeck.pipeline", "version": 1, "name": "x", "stages": []}))
    run = tierdeck("deploy", str(bad), "--node", "127.0.0.1:9", "--db", str(tmp_path / "db.sqlite"))
    assert run.returncode == 2 and "stages" in run.stderr


def test_undeploy_removes_stages_no_longer_wanted_and_guards_a_next_hop(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path / "pipeline")
    db = tmp_path / "console.sqlite"
    with three_agents(tmp_path) as agents:
        fleet = tmp_path / "fleet.txt"
        fleet.write_text("".join(f"{a.address} {tier}\n" for tier, a in agents.items()))
        assert tierdeck("deploy", str(pipeline), "--fleet", str(fleet), "--db", str(db)).returncode == 0

        # The edge still escalates to heavy: refused, in words, nothing removed.
        guarded = tierdeck("undeploy", "heavy", "--fleet", str(fleet), "--db", str(db))
        assert guarded.returncode == 1
        assert "heavy: not removed: still a next hop: classifier on edge-1 escalates to it" in guarded.stdout
        dry = tierdeck("undeploy", "detector", "--fleet", str(fleet), "--db", str(db), "--dry-run")
        assert dry.returncode == 0 and "detector: would be removed from device-1" in dry.stdout
        missing = tierdeck("undeploy", "nope", "--fleet", str(fleet), "--db", str(db))
        assert missing.returncode == 1 and "nope: not removed: no node runs it" in missing.stdout

        # From the top of the chain down nothing is left pointing at a removed stage.
        done = tierdeck("undeploy", "detector", "classifier", "--fleet", str(fleet), "--db", str(db), "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert [(s["stage"], s["removed"]) for s in report["stages"]] == [
            ("detector", ["device-1"]), ("classifier", ["edge-1"])]
        forced = tierdeck("undeploy", "heavy", "--on", "cloud-1", "--fleet", str(fleet), "--db", str(db))
        assert forced.returncode == 0 and "heavy: removed from cloud-1" in forced.stdout

        status = tierdeck("status", "--fleet", str(fleet), "--db", str(db), "--json")
        assert all(n["stages"] == [] for n in json.loads(status.stdout)), status.stdout
    events = json.loads(tierdeck("export", "--db", str(db), "--json", "--table", "events").stdout)["events"]
    assert {e["message"] for e in events} >= {"detector undeployed from device-1", "classifier undeployed from edge-1",
                                              "heavy undeployed from cloud-1"}
