"""Execution providers in the console: the pipeline file's `providers`, the fit check, the plan, the node's words."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_app_support import write_pipeline

from app._deployer import plan, policy_fields, requirements_for
from app._fit import Requirements, check_fit, expected_provider
from app._records import NodeInfoSummary, NodeSnapshot, NodeState, StageSnapshot
from app.pipeline_file import PipelineError, ProviderChoice, dumps_pipeline, load_pipeline, loads_pipeline
from runners._proto import tierdeck_control_pb2 as ctl

MiB = 1 << 20
CPU, CUDA, OV, TRT = ("CPUExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider",
                      "TensorrtExecutionProvider")
CPU_ONLY = NodeInfoSummary(ram_free_bytes=4096 * MiB, execution_providers=(CPU,), provider_preference=(CPU,),
                           onnxruntime_build="onnxruntime 1.24.1")
INTEL = replace(CPU_ONLY, execution_providers=(OV, CPU), provider_preference=(OV, CPU),
                onnxruntime_build="onnxruntime-openvino 1.24.1")
NVIDIA = replace(CPU_ONLY, execution_providers=(TRT, CUDA, CPU), provider_preference=(TRT, CUDA, CPU),
                 onnxruntime_build="onnxruntime-gpu 1.24.1")


def node(node_id: str, tier: str, info: NodeInfoSummary, stages: tuple[StageSnapshot, ...] = ()) -> NodeSnapshot:
    return NodeSnapshot(node_id, node_id, f"{tier}-{node_id[1:]}", tier, f"10.0.0.{len(node_id)}:50051",
                        state=NodeState.ONLINE, info=info, stages=stages)


def _with_providers(folder: Path, choices: dict[str, object]) -> Path:
    path = write_pipeline(folder)
    doc = json.loads(path.read_text())
    for stage in doc["stages"]:
        if stage["id"] in choices:
            stage["providers"] = choices[stage["id"]]
    path.write_text(json.dumps(doc))
    return path


# -- the pipeline file --------------------------------------------------------------------------------
def test_providers_key_is_validated_with_paths_and_round_trips(tmp_path: Path) -> None:
    path = _with_providers(tmp_path, {"heavy": {"require": ["cuda"], "prefer": ["TensorrtExecutionProvider"]},
                                      "classifier": {"prefer": ["openvino"]}})
    pipeline = load_pipeline(path)
    assert pipeline.stage("heavy").providers == ProviderChoice((CUDA,), (TRT,))
    assert pipeline.stage("classifier").providers == ProviderChoice((), (OV,))
    assert not pipeline.stage("detector").providers
    again = loads_pipeline(dumps_pipeline(pipeline), tmp_path)
    assert again.stage("heavy").providers == pipeline.stage("heavy").providers
    assert "providers" not in json.loads(dumps_pipeline(pipeline))["stages"][0]  # absent stays absent

    bad = _with_providers(tmp_path / "bad", {"heavy": {"require": ["gpu"], "prefer": ["cuda"], "want": []},
                                             "classifier": {"require": ["openvino"], "prefer": ["OpenVINO"]}})
    with pytest.raises(PipelineError) as err:
        load_pipeline(bad)
    problems = {(p.where, p.message.split(" (")[0]) for p in err.value.problems}
    assert ("stages[2].providers", "unknown key 'want'") in problems
    assert ("stages[2].providers.require[0]", "unknown execution provider 'gpu'") in problems
    assert ("stages[1].providers", "OpenVINOExecutionProvider is both required and preferred") in problems


def test_manifest_carries_the_choice_and_only_a_choice_changes_the_version(tmp_path: Path) -> None:
    plain = load_pipeline(write_pipeline(tmp_path / "a"))
    chosen = load_pipeline(_with_providers(tmp_path / "b", {"heavy": {"prefer": ["openvino"]}}))
    fields = policy_fields(chosen.stage("heavy"), None, "")
    assert fields["providers"] == ctl.ProviderChoice(prefer=[OV])
    assert "providers" not in policy_fields(plain.stage("heavy"), None, "")
    fleet = [node("d0", "device", CPU_ONLY), node("e0", "edge", CPU_ONLY), node("c0", "cloud", INTEL)]
    before, after = plan(plain, fleet), plan(chosen, fleet)
    version = {n.node_id: {a.stage_id: a.version for a in n.actions} for n in before.nodes}
    changed = {n.node_id: {a.stage_id: a.version for a in n.actions} for n in after.nodes}
    assert version["d0"] == changed["d0"] and version["e0"] == changed["e0"]
    assert version["c0"]["heavy"] != changed["c0"]["heavy"]


# -- fit check, hints, plan ----------------------------------------------------------------------------
def test_fit_check_refuses_a_node_without_a_required_provider_and_names_what_runs() -> None:
    req = Requirements(64 * MiB, 1 * MiB)
    intel = node("e2", "edge", INTEL)
    fits = check_fit(req.with_choice(prefer=["openvino"]), intel)
    assert fits.fits and fits.provider == OV and fits.hint == "fits on edge-2: OpenVINO"
    assert check_fit(req, intel).provider == OV  # the node's own order: its best provider first
    assert check_fit(req.with_choice(prefer=[CUDA]), intel).provider == OV  # preferring what is not there
    refused = check_fit(req.with_choice(require=["cuda"]), intel)
    assert not refused.fits and refused.provider == ""
    assert refused.reason == ("needs execution provider CUDAExecutionProvider, which edge-2 lacks: its onnxruntime "
                              "build (onnxruntime-openvino 1.24.1) offers OpenVINO, CPU")
    gpu = node("c1", "cloud", NVIDIA)
    assert check_fit(req.with_choice(require=["cuda"]), gpu).provider == CUDA  # required outranks TensorRT first
    assert check_fit(req, gpu).hint == "fits on cloud-1: TensorRT"
    # An agent from before providers were ordered: its advertised providers, best first.
    old = replace(NVIDIA, provider_preference=())
    assert expected_provider(req, old) == TRT
    assert expected_provider(req.with_choice(prefer=[OV]), CPU_ONLY) == CPU


def test_plan_lists_the_provider_per_node_and_refuses_before_upload(tmp_path: Path) -> None:
    pipeline = load_pipeline(_with_providers(tmp_path, {"heavy": {"prefer": ["openvino"]}}))
    fleet = [node("d0", "device", CPU_ONLY), node("e0", "edge", INTEL), node("c0", "cloud", INTEL),
             node("c1", "cloud", NVIDIA)]
    the_plan = plan(pipeline, fleet, requirements=requirements_for(pipeline))
    assert the_plan.ok, the_plan.problems
    runs = {(n.node_id, a.stage_id): a.provider for n in the_plan.nodes for a in n.actions}
    assert runs == {("d0", "detector"): CPU, ("e0", "classifier"): OV, ("c0", "heavy"): OV, ("c1", "heavy"): TRT}
    assert the_plan.as_json()["nodes"][0]["actions"][0]["provider"] == CPU

    required = load_pipeline(_with_providers(tmp_path / "r", {"heavy": {"require": ["CUDAExecutionProvider"]}}))
    refused = plan(required, fleet)  # no model cards read: the stage's own requirement still counts
    assert not refused.ok
    assert refused.problems == ("stage heavy does not fit on cloud-0: needs execution provider CUDAExecutionProvider, "
                                "which cloud-0 lacks: its onnxruntime build (onnxruntime-openvino 1.24.1) offers "
                                "OpenVINO, CPU",)
    only_gpu = plan(required, [n for n in fleet if n.node_id != "c0"], requirements=requirements_for(required))
    assert only_gpu.ok and {a.provider for n in only_gpu.nodes for a in n.actions if a.stage_id == "heavy"} == {CUDA}


def test_records_carry_what_the_agent_says_runs() -> None:
    info = ctl.NodeInfo(execution_providers=[OV, CPU], provider_preference=[OV, CPU],
                        onnxruntime_build="onnxruntime, onnxruntime-openvino", runtime_problems=["broken mix"])
    summary = NodeInfoSummary.from_proto(info)
    assert summary.accelerators == (OV,) and summary.runtime_problems == ("broken mix",)
    assert summary.as_json()["provider_preference"] == [OV, CPU]
    stage_info = ctl.StageInfo(manifest=ctl.StageManifest(stage_id="heavy", version="1"), runs_on=OV,
                               cpu_fallback_nodes=2, session_providers=[OV, CPU], warmup_ms=1.5)
    snap = StageSnapshot.from_proto(stage_info)
    assert snap.runs_on_text == "runs on OpenVINO (CPU fallback for 2 nodes)"
    assert snap.as_json()["session_providers"] == [OV, CPU]
    assert StageSnapshot("x", "1").runs_on_text == ""


def test_a_new_requirement_on_an_already_running_model_is_still_checked(tmp_path: Path) -> None:
    """Regression: the fit check skipped stages whose model already ran there, so a new `require` went unchecked."""
    pipeline = load_pipeline(_with_providers(tmp_path, {"heavy": {"require": ["cuda"]}}))
    running = (StageSnapshot("heavy", "old", pipeline.stage("heavy").sha256),)
    fleet = [node("d0", "device", CPU_ONLY), node("e0", "edge", CPU_ONLY), node("c0", "cloud", INTEL, running)]
    refused = plan(pipeline, fleet, requirements=requirements_for(pipeline))
    assert not refused.ok and "needs execution provider CUDAExecutionProvider, which cloud-0 lacks" in \
        refused.problems[0]
