"""A standard OIP client (tritonclient[grpc]) talks to a tierdeck node.

tritonclient's generated `inference` module clashes with ours in one process ("duplicate symbol
'inference.ServerLiveRequest'"), so the client runs in a subprocess that never imports runners.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from agents import running_agent
from models import classifier

CLIENT = r"""
import json, sys
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as tc

address, model_path = sys.argv[1], sys.argv[2]
client = tc.InferenceServerClient(address)
out = {"live": client.is_server_live(), "ready": client.is_server_ready(),
       "model_ready": client.is_model_ready("clf"), "ghost_ready": client.is_model_ready("ghost")}
meta = client.get_model_metadata("clf", as_json=True)
out["meta"] = meta
x = np.random.default_rng(5).normal(size=(16, 4)).astype(np.float32)
inp = tc.InferInput("x", list(x.shape), "FP32")
inp.set_data_from_numpy(x)
result = client.infer("clf", [inp], outputs=[tc.InferRequestedOutput("probs")])
got = result.as_numpy("probs")
expected = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
out["max_abs_diff"] = float(np.abs(got - expected).max())
out["shape"] = list(got.shape)
print(json.dumps(out))
"""


def test_tritonclient_checks_live_ready_metadata_and_infers(tmp_path: Path) -> None:
    # Only look for it: importing it here would clash with our own `inference` module.
    if importlib.util.find_spec("tritonclient") is None:
        pytest.skip("tritonclient[grpc] is in the dev extra")
    model = classifier(tmp_path / "clf.onnx", np.random.default_rng(4).normal(size=(4, 3)).astype(np.float32))
    with running_agent(tmp_path / "node", "--stage", f"clf={model}") as agent:
        proc = subprocess.run([sys.executable, "-c", CLIENT, agent.address, str(model)],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["live"] and out["ready"] and out["model_ready"] and not out["ghost_ready"]
    assert out["meta"]["platform"] == "onnx_onnxv1"
    assert out["meta"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert out["shape"] == [16, 3]
    assert out["max_abs_diff"] < 1e-6
