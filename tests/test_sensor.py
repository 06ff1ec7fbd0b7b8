"""`tierdeck sensor` replays any .npz whose rows fit the stage's input, and says why when they do not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from agents import running_agent
from byo_models import digits, small_classifier
from conftest import ROOT


def _sensor(target: str, model: str, data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cli", "sensor", "--target", target, "--model", model, "--data", str(data),
           "--rate", "400", "--batch", "8", "--duration", "1.5", "--burst-every", "0", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_replays_flat_and_image_shaped_rows_of_an_operator_model_and_refuses_what_cannot_fit(tmp_path: Path) -> None:
    model = small_classifier(tmp_path / "digits.onnx")
    _, _, x, y = digits()
    np.savez(tmp_path / "flat.npz", X=x, labels=y)                     # [N, 64] FP32: as the model takes it
    np.savez(tmp_path / "grid.npz", pixels=x.reshape(-1, 8, 8))        # [N, 8, 8]: reshaped, said so
    np.savez(tmp_path / "wide.npz", X=np.zeros((20, 10), np.float32))  # [N, 10]: cannot fit
    np.savez(tmp_path / "ints.npz", X=np.zeros((20, 64), np.int64))    # INT64 → FP32: cast
    with running_agent(tmp_path / "node", "--stage", f"digits={model}") as agent:
        flat = _sensor(agent.address, "digits", tmp_path / "flat.npz")
        grid = _sensor(agent.address, "digits", tmp_path / "grid.npz", "--array", "pixels")
        wide = _sensor(agent.address, "digits", tmp_path / "wide.npz")
        ints = _sensor(agent.address, "digits", tmp_path / "ints.npz")
        unknown = _sensor(agent.address, "nope", tmp_path / "flat.npz")
        missing = _sensor(agent.address, "digits", tmp_path / "flat.npz", "--array", "Y")

    for done in (flat, grid, ints):
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["answered"] == summary["sent"] > 0 and summary["errors"] == 0, summary
    assert "rows [8, 8] → [64]" in grid.stderr
    assert "int64 → FP32" in ints.stderr
    assert wide.returncode == 2 and "rows of shape [10] do not fit the stage's input FP32 [-1, 64]" in wide.stderr
    assert unknown.returncode == 2 and "NOT_FOUND" in unknown.stderr and "nope" in unknown.stderr
    assert "waiting for stage nope" in unknown.stderr  # a stage not deployed yet is waited for, once said
    assert missing.returncode == 2 and "no array 'Y'" in missing.stderr and "X, labels" in missing.stderr


def test_the_first_refusal_is_printed_with_the_nodes_reason(tmp_path: Path) -> None:
    """Rows that fit the declared shape but break the model at run time: the node's reason reaches the operator."""
    from onnx import TensorProto, helper

    # MatMul with a [1, 2] weight: the declared input [-1, -1] lets rows of 8 through, onnxruntime refuses them.
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "strict",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "F"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [1, 2], [1.0, 2.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "strict.onnx"
    path.write_bytes(model.SerializeToString())
    np.savez(tmp_path / "rows.npz", x=np.ones((16, 8), np.float32))
    with running_agent(tmp_path / "node", "--stage", f"strict={path}") as agent:
        done = _sensor(agent.address, "strict", tmp_path / "rows.npz")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 1 and summary["answered"] == 0 and summary["errors"] == summary["sent"] > 0
    assert "the node refused a request:" in done.stderr and "strict" in done.stderr
    assert done.stderr.count("the node refused a request") == 1
    assert summary["first_error"].startswith(("INVALID_ARGUMENT", "INTERNAL"))
