"""Links between tiers flap under load (real interfaces in network namespaces): nothing is lost or doubled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from netns import netns_permitted

PIPELINE = ROOT / "resources" / "pipelines" / "ship-finder.pipeline.json"


def run_soak(tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """bench/soak.py with these options in network namespaces (skips where they cannot be made); its JSON."""
    reason = netns_permitted()
    if reason:
        pytest.skip(reason)
    if not PIPELINE.exists():
        pytest.skip("the bundled ship-finder pipeline is not there")
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), *options, "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.exists(), proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


@pytest.mark.netns
@pytest.mark.slow
def test_link_flaps_under_load_lose_nothing(tmp_path: Path) -> None:
    # Two flaps (cloud link, then edge link) in a short run; the scenario is bench/soak.py's.
    proc, result = run_soak(tmp_path, "--seconds", "36", "--flap-every", "12", "--flap-down", "4", "--rate", "120")
    assert [f["tier"] for f in result["flaps"]] == ["cloud", "edge"]
    client = result["client"]
    assert client["sent"] == client["answered"] and client["errors"] == 0
    assert client["provisional"] > 0, "the flaps should have made some answers provisional"
    for link in result["links"]:
        assert link["lost"] == 0, link
        assert link["still_queued"] == 0, link
        assert link["once_each"], link
        assert link["escalated"] > 0
    assert sum(link["delivered_later"] for link in result["links"]) > 0, "store-and-forward was not exercised"
    assert result["lost_total"] == 0 and proc.returncode == 0, proc.stdout


@pytest.mark.netns
@pytest.mark.slow
def test_an_agent_killed_mid_stream_loses_nothing_and_runs_nothing_twice(tmp_path: Path) -> None:
    # One kill -9 of the edge node (it receives from the device and sends to the cloud) mid-stream; it is
    # started again with the same data dir and port. The accounting is bench/soak.py's, by row id.
    proc, result = run_soak(tmp_path, "--seconds", "30", "--flap-every", "0", "--kill-agents", "--kill-every-s", "10",
                            "--kill-tiers", "edge", "--rate", "40", "--drain-s", "120")
    assert [(k["tier"], k["returncode"]) for k in result["kills"]] == [("edge", -9)]
    edge = [e for e in result["exits"] if e["tier"] == "edge"]
    assert [(e["by"], e["exit"]) for e in edge] == [("soak kill -9", "SIGKILL (-9)"), ("soak stop", "exit 0")]
    assert result["abnormal_exits"] == 0, result["exits"]
    client = result["client"]
    assert client["sent"] == client["answered"] and client["never_answered"] == 0 and client["refused"] == 0
    for link in result["links"]:
        assert link["escalated"] > 0, link
        assert link["lost"] == 0 and link["still_queued"] == 0 and link["dead_letters"] == 0, link
        assert link["completed_twice"] == 0 and link["orphans_from_unkilled_sender"] == 0, link
        assert link["once_each"], link
    assert result["lost_total"] == 0 and proc.returncode == 0, proc.stdout
