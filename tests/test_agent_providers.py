"""Execution providers on the agent: the order a session gets, what it really runs on, broken builds, reporting."""

from __future__ import annotations

import asyncio
import os
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from agents import running_agent
from conftest import ROOT
from models import classifier

from runners._proto import tierdeck_control_pb2 as ctl
from runners._providers import (
    CPU,
    CUDA,
    OPENVINO,
    TENSORRT,
    Placement,
    ProviderRefused,
    ProviderSettings,
    check_builds,
    check_required,
    count_nodes,
    measure_placement,
    node_order,
    plan_for,
)
from runners._stage import load_session
from runners.client import DeployError, NodeClient, manifest_for

MODELS = ROOT / "resources" / "models"
W = np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32)


# -- the order a session gets -------------------------------------------------------------------------
def test_default_order_is_the_best_the_build_offers_cpu_last() -> None:
    available = ["CPUExecutionProvider", OPENVINO, "AzureExecutionProvider", CUDA, TENSORRT]
    assert node_order(ProviderSettings(), available) == (TENSORRT, CUDA, OPENVINO, CPU)
    assert node_order(ProviderSettings(), ["AzureExecutionProvider", CPU]) == (CPU,)
    # The operator's order wins; what the build lacks is left out; CPU always closes the list.
    settings = ProviderSettings(ProviderSettings.parse_order("cpu, openvino ,cuda"))
    assert settings.order == (CPU, OPENVINO, CUDA)
    assert node_order(settings, [CPU, OPENVINO]) == (OPENVINO, CPU)


def test_stage_choice_comes_first_and_a_missing_requirement_is_refused(tmp_path: Path) -> None:
    settings = ProviderSettings(cache_dir=tmp_path / "cache", device_id=2, openvino_device="GPU", trt_fp16=True,
                                threads=1)
    available = [TENSORRT, CUDA, OPENVINO, CPU]
    plan = plan_for(settings, available, prefer=["openvino", "NoSuchExecutionProvider"])
    assert plan.providers == (OPENVINO, TENSORRT, CUDA, CPU)
    options = dict(zip(plan.providers, plan.options, strict=True))
    assert options[OPENVINO] == {"device_type": "GPU", "num_of_threads": "1",
                                 "cache_dir": str(tmp_path / "cache" / "openvino")}
    assert options[CUDA] == {"device_id": "2"}
    assert options[TENSORRT]["trt_fp16_enable"] == "True"
    assert options[TENSORRT]["trt_engine_cache_path"] == str(tmp_path / "cache" / "tensorrt")
    assert (tmp_path / "cache" / "tensorrt").is_dir()
    assert plan_for(settings, available, require=[CUDA], prefer=[OPENVINO]).providers[:2] == (CUDA, OPENVINO)
    with pytest.raises(ProviderRefused, match=r"requires CUDA, which this node does not offer "
                                              r"\(its onnxruntime runs OpenVINO, CPU\)"):
        plan_for(settings, [OPENVINO, CPU], require=["cuda"])


def test_required_provider_must_really_take_nodes() -> None:
    ran_on_cpu = Placement((OPENVINO, CPU), {CPU: 7}, "profile")
    assert ran_on_cpu.runs_on == CPU and ran_on_cpu.cpu_fallback_nodes == 0
    with pytest.raises(ProviderRefused, match="took none of the model's nodes"):
        check_required(ran_on_cpu, [OPENVINO])
    with pytest.raises(ProviderRefused, match="did not register it"):
        check_required(Placement((CPU,), {CPU: 3}, "profile"), [CUDA])
    mixed = Placement((OPENVINO, CPU), {OPENVINO: 1, CPU: 2}, "profile")
    check_required(mixed, [OPENVINO])
    assert mixed.describe() == "runs on OpenVINO (CPU fallback for 2 nodes)"
    assert Placement((OPENVINO, CPU), {OPENVINO: 1, CPU: 1}, "profile").describe() == \
        "runs on OpenVINO (CPU fallback for 1 node)"


def test_profile_counts_distinct_nodes_per_provider() -> None:
    events = [
        {"cat": "Session", "name": "model_run"},
        {"cat": "Node", "name": "OpenVINOExecutionProvider_OpenVINO-EP-subgraph_1_0_kernel_time",
         "args": {"provider": OPENVINO}},
        {"cat": "Node", "name": "OpenVINOExecutionProvider_OpenVINO-EP-subgraph_1_0_kernel_time",
         "args": {"provider": OPENVINO}},  # a second run of the same node
        {"cat": "Node", "name": "zipmap_kernel_time", "args": {"provider": CPU}},
        {"cat": "Node", "name": "zipmap_fence_before", "args": {"provider": CPU}},
    ]
    assert count_nodes(events) == {OPENVINO: 1, CPU: 1}


# -- a real session ---------------------------------------------------------------------------------
def test_real_session_reports_what_ran_and_leaves_no_profile(tmp_path: Path) -> None:
    session = load_session(MODELS / "heavy.onnx", 1, plan_for(ProviderSettings(), [CPU]), tmp_path)
    spec = session.get_inputs()[0]
    name, x = spec.name, np.zeros([d if isinstance(d, int) else 1 for d in spec.shape], dtype=np.float32)
    placement = measure_placement(session, lambda: session.run(None, {name: x}))
    assert placement.source == "profile" and placement.session_providers == (CPU,)
    assert placement.runs_on == CPU and placement.nodes[CPU] >= 5 and placement.cpu_fallback_nodes == 0
    assert placement.warmup_first_ms > 0 and placement.warmup_ms > 0
    assert list(tmp_path.iterdir()) == []  # the profile was read and deleted
    session.run(None, {name: x})  # and the session goes on without profiling


def test_failed_warm_up_leaves_no_profile(tmp_path: Path) -> None:
    session = load_session(MODELS / "heavy.onnx", 1, None, tmp_path)

    def broken() -> None:
        session.run(None, {"nope": np.zeros(1, dtype=np.float32)})

    with pytest.raises(Exception, match="nope"):
        measure_placement(session, broken)
    assert list(tmp_path.iterdir()) == []


# -- installed builds ----------------------------------------------------------------------------------
def _dist(site: Path, name: str, version: str) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_broken_mix_of_builds_is_named(tmp_path: Path) -> None:
    _dist(tmp_path / "one", "onnxruntime-openvino", "1.24.1")
    single = check_builds([str(tmp_path / "one")], imported_version="1.24.1")
    assert single.summary == "onnxruntime-openvino 1.24.1" and single.problems == ()
    assert "imported onnxruntime says 1.23.0" in check_builds([str(tmp_path / "one")], "1.23.0").problems[0]
    _dist(tmp_path / "two", "onnxruntime", "1.24.1")
    _dist(tmp_path / "two", "onnxruntime-gpu", "1.24.1")
    mix = check_builds([str(tmp_path / "two")])
    assert len(mix.problems) == 1
    assert "several onnxruntime builds are installed (onnxruntime 1.24.1, onnxruntime-gpu 1.24.1)" in mix.problems[0]
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in mix.problems[0]
    assert "no onnxruntime build" in check_builds([str(tmp_path / "empty")]).problems[0]


def test_this_environment_has_exactly_one_build() -> None:
    check = check_builds(imported_version=ort.__version__)
    assert check.problems == (), check.problems


# -- the agent reports it --------------------------------------------------------------------------------
def test_agent_reports_what_runs_in_list_stages_telemetry_and_metrics(tmp_path: Path) -> None:
    model = classifier(tmp_path / "det.onnx", W).read_bytes()
    with running_agent(tmp_path / "node", "--metrics-port", "0") as agent:
        assert agent.extra["providers"] == [CPU]

        async def go() -> tuple[ctl.NodeInfo, ctl.StageInfo, ctl.StageTelemetry, str]:
            async with NodeClient(agent.address) as client:
                info = await client.info()
                rule = ctl.EscalationRule(output="probs", labels=["water", "vessel"], confidence_below=0.5)
                deployed = await client.deploy(manifest_for("det", model, "1", rule=rule), model)
                (listed,) = await client.stages()
                assert listed.runs_on == deployed.runs_on
                policy = await client.update_policy(ctl.UpdatePolicyRequest(
                    stage_id="det", rule=ctl.EscalationRule(output="probs", labels=["water", "vessel"],
                                                            confidence_below=0.9)))
                assert policy.runs_on == CPU  # a policy change keeps what the session runs on
                stream = client.telemetry(0.2)
                await anext(stream)
                await client.infer("det", {"x": np.ones((2, 4), dtype=np.float32)})
                while True:
                    stage = next((s for s in (await anext(stream)).stages if s.stage_id == "det"), None)
                    if stage is not None and stage.energy_source:
                        break
                await stream.aclose()
                return info, listed, stage, ""

        info, listed, stage, _ = asyncio.run(go())
        text = urllib.request.urlopen(f"http://127.0.0.1:{agent.extra['metrics_port']}/metrics",
                                      timeout=10).read().decode()
    assert list(info.provider_preference) == [CPU] and info.runtime_problems == []
    assert info.onnxruntime_build.startswith("onnxruntime")
    assert list(listed.session_providers) == [CPU] and listed.runs_on == CPU and listed.cpu_fallback_nodes == 0
    assert listed.placement_source == "profile" and listed.placement[0].provider == CPU
    assert listed.placement[0].nodes >= 1 and listed.warmup_first_ms > 0 and listed.warmup_ms > 0
    assert stage.runs_on == CPU and stage.energy_source == "estimate" and not stage.energy_measured
    node = agent.node_id
    assert f'tierdeck_stage_provider_info{{node_id="{node}",provider="{CPU}",stage="det"}} 1.0' in text
    assert f'tierdeck_stage_cpu_fallback_nodes{{node_id="{node}",stage="det"}} 0.0' in text
    assert f'tierdeck_node_execution_provider{{node_id="{node}",provider="{CPU}"}} 1.0' in text
    assert f'tierdeck_node_runtime_problems{{node_id="{node}"}} 0.0' in text
    assert f'tierdeck_stage_energy_measured{{node_id="{node}",source="estimate",stage="det"}} 0.0' in text


def test_deploy_requiring_a_missing_provider_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    model = classifier(tmp_path / "det.onnx", W).read_bytes()
    with running_agent(tmp_path / "node") as agent:
        async def go() -> None:
            async with NodeClient(agent.address) as client:
                needs = ctl.ProviderChoice(require=[CUDA])
                with pytest.raises(DeployError) as refused:
                    await client.deploy(manifest_for("det", model, "1", providers=needs), model)
                assert refused.value.step == "load"
                assert "requires CUDA, which this node does not offer" in str(refused.value)
                assert await client.stages() == []
                # Preferring what is not there is fine: the session falls back to the node's order.
                prefers = ctl.ProviderChoice(prefer=[OPENVINO, CUDA])
                info = await client.deploy(manifest_for("det", model, "1", providers=prefers), model)
                assert info.runs_on == CPU and list(info.manifest.providers.prefer) == [OPENVINO, CUDA]
        asyncio.run(go())
    assert not list((tmp_path / "node").glob("tierdeck-warmup*"))


def test_agent_names_a_broken_mix_and_an_unknown_preference_at_start(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _dist(site, "onnxruntime-gpu", "1.24.1")  # a second build's metadata next to the real one
    env_path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH", "")]))
    os.environ["PYTHONPATH"], saved = env_path, os.environ.get("PYTHONPATH")
    try:
        with running_agent(tmp_path / "node", "--providers", "tensorrt,cpu") as agent:
            async def go() -> ctl.NodeInfo:
                async with NodeClient(agent.address) as client:
                    return await client.info()
            info = asyncio.run(go())
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    problems = list(info.runtime_problems)
    assert problems == agent.extra["runtime_problems"]
    assert any("several onnxruntime builds are installed" in p and "onnxruntime-gpu 1.24.1" in p for p in problems)
    assert any("--providers names TensorRT, which this onnxruntime build" in p for p in problems)
    assert any("several onnxruntime builds" in line for line in agent.log)
    assert list(info.provider_preference) == [CPU]


def test_bad_providers_argument_is_refused(tmp_path: Path) -> None:
    from runners.agent import build_parser, config_from_args

    args = build_parser().parse_args(["--data-dir", str(tmp_path), "--providers", "cuda,,cpu"])
    with pytest.raises(SystemExit, match="empty item"):
        config_from_args(args)
    ok = config_from_args(build_parser().parse_args(["--data-dir", str(tmp_path), "--providers", "OpenVINO,cpu"]))
    assert ok.providers == (OPENVINO, CPU)


def test_fallback_plan_drops_the_first_accelerator_that_is_not_required() -> None:
    plan = plan_for(ProviderSettings(), [TENSORRT, CUDA, OPENVINO, CPU], require=[CUDA], prefer=[OPENVINO])
    assert plan.providers == (CUDA, OPENVINO, TENSORRT, CPU)
    first = plan.next_fallback()
    assert first is not None and first.providers == (CUDA, TENSORRT, CPU) and first.required == (CUDA,)
    assert first.options == (plan.options[0], plan.options[2], plan.options[3])
    second = first.next_fallback()
    assert second is not None and second.providers == (CUDA, CPU)
    assert second.next_fallback() is None  # a required provider is never dropped; CPU is the floor


def test_node_requirements_swap_the_build_and_keep_the_rest() -> None:
    from runners.builds import project_requirements, requirements_for

    core = project_requirements()
    (runtime,) = [r for r in core if r.startswith("onnxruntime")]
    spec = runtime.removeprefix("onnxruntime")
    for kind, build in (("openvino", "onnxruntime-openvino"), ("gpu", "onnxruntime-gpu"), ("cpu", "onnxruntime")):
        swapped = requirements_for(kind)
        assert [r for r in swapped if r.startswith("onnxruntime")] == [build + spec]
        assert [r for r in swapped if not r.startswith("onnxruntime")] == [r for r in core if r != runtime]
    assert requirements_for("none") == [r for r in core if r != runtime]
    with pytest.raises(ValueError, match="unknown hardware kind"):
        requirements_for("tpu")


def test_session_without_profiling_reports_registered_providers_only(tmp_path: Path) -> None:
    """measure_placement on a session opened without the profiler: no per-node counts, and no crash."""
    session = ort.InferenceSession(str(MODELS / "detector.onnx"), providers=[CPU])
    spec = session.get_inputs()[0]
    x = np.zeros([d if isinstance(d, int) else 1 for d in spec.shape], dtype=np.float32)
    placement = measure_placement(session, lambda: session.run(None, {spec.name: x}))
    assert placement.source == "session" and placement.nodes == {} and placement.runs_on == CPU


def test_sessions_opened_together_keep_their_own_profiles(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def open_and_measure(name: str) -> Placement:
        session = load_session(MODELS / f"{name}.onnx", 1, None, tmp_path)
        spec = session.get_inputs()[0]
        x = np.zeros([d if isinstance(d, int) else 1 for d in spec.shape], dtype=np.float32)
        return measure_placement(session, lambda: session.run(None, {spec.name: x}))

    with ThreadPoolExecutor(4) as pool:
        placements = list(pool.map(open_and_measure, ["heavy", "detector", "heavy", "detector"]))
    assert placements[0].nodes == placements[2].nodes and placements[1].nodes == placements[3].nodes
    assert placements[0].nodes != placements[1].nodes
    assert list(tmp_path.iterdir()) == []
