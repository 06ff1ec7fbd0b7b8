"""A real second execution provider in CI: an agent from an onnxruntime-openvino venv runs the ship-finder's heavy
stage on OpenVINO, says so, answers as the CPU provider does, and a stage that requires CUDA is refused there."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from agents import AgentProcess, start_agent
from conftest import ROOT
from openvino_env import Unavailable, openvino_python
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot
from test_app_support import all_online, started_core, wait_nodes
from test_widgets_support import drag_over, leave

from app._console import ConsoleCore
from app.pipeline_file import load_pipeline
from resources import scenes
from runners._proto import tierdeck_control_pb2 as ctl
from runners.client import DeployError, NodeClient, manifest_for

pytestmark = pytest.mark.slow

OV, CPU, CUDA = "OpenVINOExecutionProvider", "CPUExecutionProvider", "CUDAExecutionProvider"
EXAMPLE = ROOT / "resources" / "pipelines" / "ship-finder.pipeline.json"


@pytest.fixture(scope="module")
def ov_python() -> Path:
    try:
        return openvino_python()
    except Unavailable as exc:
        pytest.skip(str(exc))


def _pipeline(folder: Path, heavy_providers: dict[str, list[str]]) -> Path:
    """The ship-finder pipeline with the heavy stage's `providers`, next to a copy of the bundled models."""
    if not (folder / "models").exists():
        shutil.copytree(ROOT / "resources" / "models", folder / "models",
                        ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (folder / "pipelines").mkdir(parents=True, exist_ok=True)
    doc = json.loads(EXAMPLE.read_text())
    next(s for s in doc["stages"] if s["id"] == "heavy")["providers"] = heavy_providers
    name = "-".join(k for k in heavy_providers) or "plain"
    path = folder / "pipelines" / f"ship-finder-{name}.pipeline.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


def _stages(address: str) -> dict[str, ctl.StageInfo]:
    async def go() -> dict[str, ctl.StageInfo]:
        async with NodeClient(address) as client:
            return {s.manifest.stage_id: s for s in await client.stages()}
    return asyncio.run(go())


def test_the_venv_holds_only_the_openvino_build(ov_python: Path) -> None:
    proc = subprocess.run([str(ov_python), "-m", "runners.builds", "--json"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["builds"] == {"onnxruntime-openvino": "1.24.1"} and report["problems"] == []
    assert report["providers"][:1] == [OV]


def test_ship_finder_heavy_runs_on_openvino_answers_like_cpu_and_cuda_is_refused(
        tmp_path: Path, ov_python: Path) -> None:
    pipeline = load_pipeline(_pipeline(tmp_path, {"prefer": [OV]}))
    agents: dict[str, AgentProcess] = {}
    try:
        agents["device"] = start_agent(tmp_path / "device", tier="device", name="device-1")
        agents["edge"] = start_agent(tmp_path / "edge", tier="edge", name="edge-1")
        agents["cloud"] = start_agent(tmp_path / "cloud", "--metrics-port", "0", tier="cloud", name="cloud-ov",
                                      python=str(ov_python))
        cloud = agents["cloud"]
        assert cloud.extra["providers"] == [OV, CPU] and "runtime_problems" not in cloud.extra
        with started_core(tmp_path / "console.sqlite", telemetry_interval_s=0.2) as core:
            _deploy_and_check(core, agents, pipeline, tmp_path)
        _check_answers_and_reports(cloud)
        _agent_refuses_cuda_and_reports_fallback(cloud, tmp_path)
    finally:
        for agent in agents.values():
            agent.stop()


def _deploy_and_check(core: ConsoleCore, agents: dict[str, AgentProcess], pipeline: object,
                      tmp_path: Path) -> None:
    for agent in agents.values():
        core.add_address(agent.address).result(10)
    nodes = wait_nodes(core, all_online(3), message="three nodes online")
    cloud = next(n for n in nodes if n.tier == "cloud")
    assert cloud.info is not None and cloud.info.provider_preference == (OV, CPU)
    assert cloud.info.onnxruntime_build == "onnxruntime-openvino 1.24.1" and cloud.info.runtime_problems == ()
    assert cloud.info.accelerators == (OV,)
    plan = core.plan(pipeline).result(30)
    assert plan.ok, plan.problems
    runs = {(n.tier, a.stage_id): a.provider for n in plan.nodes for a in n.actions}
    assert runs == {("device", "detector"): CPU, ("edge", "classifier"): CPU, ("cloud", "heavy"): OV}
    result = core.apply(plan).result(180)
    assert result.ok, result.reason
    # The console's fleet model learns what really runs (the node card and fleet panel read this).
    nodes = wait_nodes(core, lambda ns: any(s.runs_on == OV for n in ns for s in n.stages), message="runs_on")
    heavy = next(s for n in nodes for s in n.stages if s.stage_id == "heavy")
    assert heavy.runs_on_text == "runs on OpenVINO" and heavy.session_providers == (OV, CPU)

    # A stage that requires CUDA is refused for this node before anything is uploaded, with the reason.
    cuda = load_pipeline(_pipeline(tmp_path, {"require": [CUDA]}))
    refused = core.plan(cuda).result(30)
    assert not refused.ok
    assert refused.problems == (
        "stage heavy does not fit on cloud-ov: needs execution provider CUDAExecutionProvider, which cloud-ov lacks: "
        "its onnxruntime build (onnxruntime-openvino 1.24.1) offers OpenVINO, CPU",)
    assert _stages(agents["cloud"].address)["heavy"].manifest.version == \
        next(a.version for n in plan.nodes for a in n.actions if a.stage_id == "heavy")


def _check_answers_and_reports(cloud: AgentProcess) -> None:
    heavy = _stages(cloud.address)["heavy"]
    assert heavy.runs_on == OV and heavy.cpu_fallback_nodes == 0 and heavy.placement_source == "profile"
    assert list(heavy.session_providers) == [OV, CPU]
    assert {p.provider: p.nodes for p in heavy.placement} == {OV: 1}  # the whole graph as one OpenVINO subgraph
    assert heavy.warmup_first_ms > 0 and heavy.warmup_ms > 0
    images, _ = scenes.load_heldout()
    x = scenes.to_model_input(images)[:256]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    reference = ort.InferenceSession(str(ROOT / "resources" / "models" / "heavy.onnx"), options,
                                     providers=[CPU]).run(["probs"], {"image": x})[0]

    async def go() -> tuple[np.ndarray, ctl.StageTelemetry]:
        async with NodeClient(cloud.address) as client:
            parts = [(await client.infer("heavy", {"image": x[i:i + 64]}, outputs=["probs"])).outputs["probs"]
                     for i in range(0, len(x), 64)]
            stream = client.telemetry(0.2)
            while True:
                stage = next((s for s in (await anext(stream)).stages if s.stage_id == "heavy"), None)
                if stage is not None and stage.inferences_total >= len(x):
                    await stream.aclose()  # type: ignore[attr-defined]
                    return np.concatenate(parts), stage

    probs, telemetry = asyncio.run(go())
    difference = float(np.abs(probs - reference).max())
    assert difference <= 1e-4, f"OpenVINO answers differ from the CPU provider's by {difference}"
    assert (probs.argmax(axis=1) == reference.argmax(axis=1)).all()
    assert telemetry.runs_on == OV and telemetry.cpu_fallback_nodes == 0
    text = urllib.request.urlopen(f"http://127.0.0.1:{cloud.extra['metrics_port']}/metrics", timeout=10).read().decode()
    assert f'tierdeck_stage_provider_info{{node_id="{cloud.node_id}",provider="{OV}",stage="heavy"}} 1.0' in text


def _normalised_classifier(shapes: bool) -> bytes:
    """x → Normalizer (ai.onnx.ml: no OpenVINO kernel) → MatMul → Softmax; `shapes` declares the middle shape."""
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32)
    nodes = [helper.make_node("Normalizer", ["x"], ["n"], domain="ai.onnx.ml", norm="L2"),
             helper.make_node("MatMul", ["n", "W"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    middle = [helper.make_tensor_value_info("n", TensorProto.FLOAT, [None, 4])] if shapes else []
    graph = helper.make_graph(nodes, "normalised", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 2])],
                              [numpy_helper.from_array(weights, "W")], value_info=middle)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    return model.SerializeToString()


def _agent_refuses_cuda_and_reports_fallback(cloud: AgentProcess, tmp_path: Path) -> None:
    """The agent's own guard (a deploy that bypasses the console), an honest CPU fallback count, and a
    preferred provider that cannot compile the model left out instead of failing the deploy."""
    mixed, unshaped = _normalised_classifier(shapes=True), _normalised_classifier(shapes=False)
    x = np.random.default_rng(2).normal(size=(16, 4)).astype(np.float32)
    reference = ort.InferenceSession(mixed, providers=[CPU]).run(None, {"x": x})[0]
    prefer = ctl.ProviderChoice(prefer=[OV])

    async def go() -> tuple[ctl.StageInfo, ctl.StageInfo, np.ndarray]:
        async with NodeClient(cloud.address) as client:
            with pytest.raises(DeployError) as refused:
                await client.deploy(manifest_for("mixed", mixed, "1", providers=ctl.ProviderChoice(require=[CUDA])),
                                    mixed)
            assert refused.value.step == "load" and "requires CUDA" in refused.value.message
            split = await client.deploy(manifest_for("mixed", mixed, "1", providers=prefer), mixed)
            answer = (await client.infer("mixed", {"x": x})).outputs["probs"]
            whole_cpu = await client.deploy(manifest_for("unshaped", unshaped, "1", providers=prefer), unshaped)
            return split, whole_cpu, answer

    split, whole_cpu, answer = asyncio.run(go())
    # OpenVINO takes MatMul and Softmax as one subgraph; the ai.onnx.ml Normalizer runs on the CPU provider.
    assert split.runs_on == OV and split.cpu_fallback_nodes == 1
    assert {p.provider: p.nodes for p in split.placement} == {OV: 1, CPU: 1}
    assert float(np.abs(answer - reference).max()) <= 1e-4
    # Without the middle shape OpenVINO cannot compile its subgraph: the stage opens without it, on the CPU.
    assert whole_cpu.runs_on == CPU and list(whole_cpu.session_providers) == [CPU]
    assert len(whole_cpu.placement_notes) == 1 and whole_cpu.placement_notes[0].startswith("OpenVINO could not take")


def test_console_shows_accelerators_and_the_drag_hint_names_the_provider(
        tmp_path: Path, ov_python: Path, qapp: QApplication, qtbot: QtBot) -> None:
    """Node cards, fleet panel and the canvas' drag hints on a real OpenVINO node next to a CPU-only one."""
    import onnx
    from PySide6.QtCore import QPointF

    from app.core import NodeState, read_model_card
    from app.qt import PipelineModel, QtConsole
    from widgets import apply_theme
    from widgets._fleet_panel import FleetPanel
    from widgets._pipeline_editor import PipelineEditor

    heavy = ROOT / "resources" / "models" / "heavy.onnx"
    needs_cuda = onnx.load(str(heavy))
    needs_cuda.metadata_props.add(key="tierdeck.providers", value=CUDA)
    (tmp_path / "models").mkdir()
    onnx.save(needs_cuda, str(tmp_path / "models" / "heavy-cuda.onnx"))
    ov = start_agent(tmp_path / "ov", tier="edge", name="edge-ov", python=str(ov_python))
    cpu = start_agent(tmp_path / "cpu", tier="edge", name="edge-cpu")
    try:
        with started_core(tmp_path / "console.sqlite", telemetry_interval_s=0.2) as core:
            console = QtConsole(core)
            try:
                for agent in (ov, cpu):
                    console.fleet.add_address(agent.address)
                qtbot.waitUntil(lambda: len(console.fleet.nodes()) == 2 and all(
                    n.state == NodeState.ONLINE and n.info is not None for n in console.fleet.nodes()), timeout=60_000)
                apply_theme(qapp)
                panel = FleetPanel(console.fleet, console.telemetry)
                qtbot.addWidget(panel)
                assert "OpenVINO" in panel.row_text(ov.node_id) and "CPU only" in panel.row_text(cpu.node_id)
                editor = PipelineEditor(PipelineModel(), console.fleet, console.telemetry)
                qtbot.addWidget(editor)
                plain, cuda = read_model_card(heavy), read_model_card(tmp_path / "models" / "heavy-cuda.onnx")
                editor.stage_palette.add_card(plain)
                editor.stage_palette.add_card(cuda)
                editor.resize(1200, 720)
                editor.show()
                qtbot.waitExposed(editor)
                editor.canvas.relayout()
                canvas = editor.canvas
                ov_card = canvas.cards[ov.node_id]
                assert "accelerators: OpenVINO (onnxruntime onnxruntime-openvino 1.24.1)" in ov_card.tooltip_text()
                assert "accelerators: CPU only" in canvas.cards[cpu.node_id].tooltip_text()

                def hover(card_path: Path, target: str) -> tuple[bool, str, str]:
                    item = editor.stage_palette.item_for(str(card_path))
                    assert item is not None
                    mime = editor.stage_palette.mimeData([item])
                    card = canvas.cards[target]
                    pos = canvas.mapFromScene(card.sceneBoundingRect().center() + QPointF(0, 0))
                    drag_over(canvas.viewport(), mime, pos)
                    assert card.mark is not None
                    result = (card.mark.fits, card.mark.reason, card.mark.short)
                    leave(canvas.viewport())
                    return result

                assert hover(heavy, ov.node_id) == (True, "fits on edge-ov: OpenVINO — pin the stage to this node",
                                                    "fits: OpenVINO")
                assert hover(heavy, cpu.node_id)[1].startswith("fits on edge-cpu: CPU")
                fits, reason, short = hover(tmp_path / "models" / "heavy-cuda.onnx", ov.node_id)
                assert not fits and short == "missing provider"
                assert "needs execution provider CUDAExecutionProvider, which edge-ov lacks" in reason
                editor.close()
            finally:
                console.close()
    finally:
        ov.stop()
        cpu.stop()



def test_an_accelerator_that_does_not_start_is_not_advertised(tmp_path: Path, ov_python: Path) -> None:
    """OpenVINO asked for an NPU this box lacks: onnxruntime would drop it silently; the agent says so at start."""
    agent = start_agent(tmp_path / "npu", "--openvino-device", "NPU", name="npu-less", python=str(ov_python))
    try:
        assert agent.extra["providers"] == [CPU]
        (problem,) = agent.extra["runtime_problems"]  # type: ignore[misc]
        assert problem.startswith("OpenVINO is in the onnxruntime build but did not start with device type NPU")

        async def go() -> tuple[ctl.NodeInfo, ctl.StageInfo]:
            async with NodeClient(agent.address) as client:
                model = (ROOT / "resources" / "models" / "detector.onnx").read_bytes()
                with pytest.raises(DeployError, match="requires OpenVINO, which this node does not offer"):
                    await client.deploy(manifest_for("det", model, "1", providers=ctl.ProviderChoice(require=[OV])),
                                        model)
                deployed = await client.deploy(manifest_for("det", model, "1", providers=ctl.ProviderChoice(
                    prefer=[OV])), model)
                return await client.info(), deployed

        info, deployed = asyncio.run(go())
        assert list(info.provider_preference) == [CPU] and list(info.runtime_problems) == [problem]
        assert OV in info.execution_providers  # the build lists it; the node does not claim it
        assert deployed.runs_on == CPU
    finally:
        agent.stop()
