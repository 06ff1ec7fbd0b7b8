"""Real serving engines for the tests: Seldon MLServer and the KServe Python model server, each in its own
virtual environment (their pinned dependencies clash with ours), serving one ONNX file on 127.0.0.1.

The environments live under $TIERDECK_ENGINE_CACHE (default ~/.cache/tierdeck-engines) and are made once;
pip's own cache keeps the wheels, so a rerun costs seconds. The runtimes are in tests/engines/.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runners._proto import grpc_predict_v2_pb2 as pb
from runners.client import NodeClient

ENGINES = {
    "mlserver": ["mlserver==1.7.1", "onnxruntime", "numpy"],
    "kserve": ["kserve==0.21.0", "onnxruntime", "numpy"],
}
RUNTIMES = Path(__file__).resolve().parent / "engines"


def engine_python(kind: str) -> Path:
    """The Python of the engine's own virtual environment, made (once) if missing; skips when it cannot be."""
    root = Path(os.environ.get("TIERDECK_ENGINE_CACHE", Path.home() / ".cache" / "tierdeck-engines"))
    venv = root / kind
    python = venv / "bin" / "python"
    stamp = venv / ".tierdeck-installed"
    wanted = json.dumps(ENGINES[kind])
    if stamp.exists() and stamp.read_text() == wanted and python.exists():
        return python
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", *ENGINES[kind]], capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        pytest.skip(f"{kind} could not be installed in its own virtual environment: {done.stderr[-500:]}")
    stamp.write_text(wanted)
    return python


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Engine:
    """A running engine process serving `model` on 127.0.0.1:`grpc_port`."""

    kind: str
    model: str
    onnx: Path
    workdir: Path
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    declared: dict[str, list[dict[str, object]]] = field(default_factory=dict)  # MLServer: inputs/outputs
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """HOST:PORT of its gRPC (OIP) endpoint."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def row_log(self) -> Path:
        """One line per inference call: how many rows it ran (across restarts)."""
        return self.workdir / "rows.log"

    def rows_run(self) -> int:
        """Rows the engine really ran, over every process that served."""
        return sum(int(line) for line in self.row_log.read_text().split()) if self.row_log.exists() else 0

    def start(self, timeout: float = 120.0) -> Engine:
        """Start the engine and wait until it answers ModelReady."""
        python = engine_python(self.kind)
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, ENGINE_ROW_LOG=str(self.row_log), PYTHONPATH=str(RUNTIMES))
        log = (self.workdir / "engine.log").open("ab")
        if self.kind == "mlserver":
            models = self.workdir / "models"
            (models / self.model).mkdir(parents=True, exist_ok=True)
            # Default model settings, as an operator would write them: no tensors unless `declared`.
            (models / self.model / "model-settings.json").write_text(json.dumps({
                "name": self.model, "implementation": "mlserver_onnx.OnnxModel",
                "parameters": {"uri": str(self.onnx)}, **self.declared}))
            (models / "settings.json").write_text(json.dumps({
                "host": "127.0.0.1", "grpc_port": self.grpc_port, "http_port": self.http_port,
                "metrics_port": self.metrics_port, "parallel_workers": 0}))
            cmd = [str(python.parent / "mlserver"), "start", str(models)]
            cwd = models
        else:
            cmd = [str(python), str(RUNTIMES / "kserve_onnx.py"), "--name", self.model, "--model", str(self.onnx),
                   "--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port)]
            cwd = self.workdir
        self.process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: {(self.workdir / 'engine.log').read_text()[-2000:]}")
            if asyncio.run(self._ready()):
                return self
            time.sleep(0.3)
        raise RuntimeError(f"{self.kind} not ready in {timeout} s: {(self.workdir / 'engine.log').read_text()[-2000:]}")

    async def _ready(self) -> bool:
        try:
            async with NodeClient(self.address, external=True) as client:
                reply = await client.inference.ModelReady(pb.ModelReadyRequest(name=self.model), timeout=1.0)
                return bool(reply.ready)
        except Exception:  # not listening yet
            return False

    def kill(self) -> None:
        """kill -9 the engine (its whole process group: MLServer and KServe run workers)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
