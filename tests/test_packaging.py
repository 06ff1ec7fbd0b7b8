"""The node-only install: the wheel without extras, in a fresh virtual environment, has a working `tierdeck`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT
from test_app_support import three_agents, write_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(the built wheel, the bin folder of a fresh venv with that wheel installed without extras)."""
    root = tmp_path_factory.mktemp("node-only")
    # Built from a clean copy: setuptools reuses ./build, where files since removed from the tree would linger.
    source = root / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".ci-venv*", "build", "*.egg-info", "docs", "tests", "bench", ".*cache*", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(root / "dist"), str(source)],
                   check=True, capture_output=True, cwd=root)
    wheel = next((root / "dist").glob("tierdeck-*.whl"))
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    bin_dir = root / "venv" / "bin"
    subprocess.run([bin_dir / "python", "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True,
                   cwd=root)
    yield wheel, bin_dir


def _run(bin_dir: Path, exe: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # cwd is never the checkout: only what the wheel installed is importable.
    return subprocess.run([str(bin_dir / exe), *args], capture_output=True, text=True, cwd=cwd, timeout=180)


def test_the_wheel_needs_no_qt(node_only: tuple[Path, Path], tmp_path: Path) -> None:
    wheel, bin_dir = node_only
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(archive.read(n).decode() for n in names if n.endswith("/METADATA"))
    assert "resources/data/heldout.npz" not in names, "the 3 MB held-out set stays in the checkout"
    assert not [n for n in names if "train" in n.rsplit("/", 1)[-1] or n.startswith("tools/")], \
        "the training script stays in the checkout"
    assert "resources/models/detector.onnx" in names and "cli/_cmd_deploy.py" in names
    core = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert core and not [line for line in core if "PySide6" in line or "pyqtgraph" in line]
    probe = _run(bin_dir, "python", "-c", "import importlib.util as u; print(u.find_spec('PySide6'))", cwd=tmp_path)
    assert probe.stdout.strip() == "None", "the fresh environment really lacks the console extra"


def test_node_only_cli_works(node_only: tuple[Path, Path], tmp_path: Path) -> None:
    _, bin_dir = node_only
    help_text = _run(bin_dir, "tierdeck", "--help", cwd=tmp_path)
    assert help_text.returncode == 0, help_text.stderr
    assert "deploy" in help_text.stdout and "console" in help_text.stdout
    for exe in ("tierdeck", "tierdeck-node"):
        version = _run(bin_dir, exe, "--version", cwd=tmp_path)
        assert version.returncode == 0 and version.stdout.split()[-1][0].isdigit(), version.stdout + version.stderr
    bare = _run(bin_dir, "tierdeck", cwd=tmp_path)
    assert bare.returncode == 2 and "usage: tierdeck" in bare.stderr

    nodes = _run(bin_dir, "tierdeck", "nodes", "--interface", "127.0.0.1", "--timeout", "1", "--json", cwd=tmp_path)
    assert nodes.returncode == 0, nodes.stderr
    json.loads(nodes.stdout)

    for command in ("console", "demo"):
        refused = _run(bin_dir, "tierdeck", command, cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.count("\n") == 1 and "pip install 'tierdeck[console]'" in refused.stderr

    pipeline = write_pipeline(tmp_path / "pipeline")
    db = tmp_path / "console.sqlite"
    with three_agents(tmp_path) as agents:
        fleet = tmp_path / "fleet.txt"
        fleet.write_text("".join(f"{a.address} {tier}\n" for tier, a in agents.items()))
        deploy = _run(bin_dir, "tierdeck", "deploy", str(pipeline), "--fleet", str(fleet), "--db", str(db), "--json",
                      cwd=tmp_path)
        assert deploy.returncode == 0, deploy.stderr
        assert json.loads(deploy.stdout)["result"]["status"] == "succeeded"
        status = _run(bin_dir, "tierdeck", "status", "--fleet", str(fleet), "--db", str(db), "--json", cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        nodes = {n["name"]: n for n in json.loads(status.stdout)}
        assert set(nodes) == {"device-1", "edge-1", "cloud-1"} and {n["state"] for n in nodes.values()} == {"online"}
        assert [s["stage_id"] for s in nodes["edge-1"]["stages"]] == ["classifier"]


def test_the_node_only_agent_reports_the_package_version(node_only: tuple[Path, Path], tmp_path: Path) -> None:
    import asyncio
    import tomllib

    from runners.client import NodeClient

    _, bin_dir = node_only
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    agent = subprocess.Popen([str(bin_dir / "tierdeck-node"), "--name", "edge-box", "--listen", "127.0.0.1:0",
                              "--data-dir", str(tmp_path / "node"), "--insecure", "--no-mdns"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path)
    try:
        assert agent.stdout is not None
        listening = json.loads(agent.stdout.readline())
        assert listening["event"] == "listening"

        async def info() -> str:
            async with NodeClient(listening["address"]) as client:
                return (await client.info()).agent_version

        assert asyncio.run(info()) == declared
    finally:
        agent.terminate()
        assert agent.wait(30) == 0
