"""A virtualenv with onnxruntime-openvino instead of onnxruntime, built the way the README tells a node to.

The wheel and the venv are cached outside the repository (`$TIERDECK_CI_CACHE`, default
`~/.cache/tierdeck-ci`), so only the first run downloads (~85 MB) and installs; later runs reuse the
venv while the project's dependency list and the wheel are unchanged (both are in the venv's name).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

OPENVINO_BUILD = "onnxruntime-openvino==1.24.1"


class Unavailable(Exception):
    """The wheel cannot be had here (no index, no network): the test skips with this reason."""


def cache_dir() -> Path:
    """Where wheels and venvs live between runs."""
    return Path(os.environ.get("TIERDECK_CI_CACHE") or Path.home() / ".cache" / "tierdeck-ci")


def _run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def openvino_wheel() -> Path:
    """The onnxruntime-openvino wheel for this Python, downloaded once into the cache."""
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    found = sorted(wheels.glob(f"onnxruntime_openvino-1.24.1-{tag}-*.whl"))
    if found:
        return found[0]
    proc = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", OPENVINO_BUILD,
                 "-d", str(wheels)])
    found = sorted(wheels.glob(f"onnxruntime_openvino-1.24.1-{tag}-*.whl"))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise Unavailable(f"{OPENVINO_BUILD} wheel for {tag} cannot be had: {tail[0]}")
    return found[0]


def openvino_python() -> Path:
    """The python of a venv holding the project (no plain onnxruntime) and onnxruntime-openvino."""
    wheel = openvino_wheel()
    from runners.builds import requirements_for

    requirements = requirements_for("openvino")
    key = hashlib.sha256(json.dumps([wheel.name, requirements, str(ROOT)]).encode()).hexdigest()[:12]
    venv = cache_dir() / f"venv-openvino-{key}"
    python = venv / "bin" / "python"
    if (venv / "ready").exists() and python.exists():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        # The build first, from the cached file; then the project's own list with the build swapped
        # (README, "Installs"); then the project itself without dependencies, so nothing pulls onnxruntime.
        [str(python), "-m", "pip", "install", "-q", str(wheel)],
        [str(python), "-m", "pip", "install", "-q", "--find-links", str(wheel.parent), *requirements],
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)],
    ]
    for step in steps:
        proc = _run(step)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(step[:5])} failed:\n{proc.stderr[-2000:]}")
    (venv / "ready").write_text(wheel.name + "\n")
    return python
