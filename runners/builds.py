"""Which onnxruntime build a node needs, and the node's dependencies with that build: `python -m runners.builds`.

onnxruntime ships as separate, mutually exclusive distributions (`onnxruntime` for the CPU,
`onnxruntime-openvino` for Intel CPUs/GPUs/NPUs, `onnxruntime-gpu` for NVIDIA CUDA and TensorRT); all
of them install the same `onnxruntime` package, so a second one overwrites the first. tierdeck's core
dependencies name the CPU build; for another box install the project without dependencies and then
the list this command prints, which is the project's own list with the build swapped:

    pip install --no-deps .
    python -m runners.builds requirements openvino > node-requirements.txt
    pip install -r node-requirements.txt

`requirements none` leaves the build out (Jetson: NVIDIA publishes onnxruntime-gpu wheels for each
JetPack outside PyPI; install that wheel yourself). Without arguments it prints the installed builds,
the providers they offer and any broken mix (exit status 1 then).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from importlib import metadata
from pathlib import Path

from runners._providers import HARDWARE_BUILDS, check_builds

ROOT = Path(__file__).resolve().parent.parent
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def project_requirements() -> list[str]:
    """tierdeck's core requirements: from the installed metadata, else from the checkout's pyproject.toml."""
    try:
        requires = metadata.requires("tierdeck") or []
    except metadata.PackageNotFoundError:
        import tomllib

        with (ROOT / "pyproject.toml").open("rb") as handle:
            requires = list(tomllib.load(handle)["project"]["dependencies"])
    return [r for r in requires if "extra ==" not in r and "extra==" not in r]


def requirements_for(kind: str) -> list[str]:
    """The core requirements, `onnxruntime` swapped for the build of `kind` (cpu, openvino, gpu; none: left out)."""
    build = HARDWARE_BUILDS.get(kind)
    if build is None and kind != "none":
        raise ValueError(f"unknown hardware kind {kind!r} (known: {', '.join(sorted(HARDWARE_BUILDS))}, none)")
    out = []
    for requirement in project_requirements():
        match = _NAME.match(requirement)
        if match and match.group(1).lower() == "onnxruntime":
            if build is None:
                continue
            requirement = build + requirement[match.end():]
        out.append(requirement)
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the installed builds (or, with `requirements KIND`, the node's requirement lines)."""
    parser = argparse.ArgumentParser(prog="python -m runners.builds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    req = sub.add_parser("requirements", help="the node's requirement lines for one kind of hardware")
    req.add_argument("kind", choices=[*sorted(HARDWARE_BUILDS), "none"])
    parser.add_argument("--json", action="store_true", help="print the installed builds as JSON")
    args = parser.parse_args(argv)
    if args.command == "requirements":
        print("\n".join(requirements_for(args.kind)))
        return 0
    try:
        import onnxruntime as ort

        providers, version = list(ort.get_available_providers()), ort.__version__
    except Exception as exc:  # a broken mix can fail to import at all
        providers, version = [], f"import failed: {exc}"
    check = check_builds(imported_version=version if providers else None)
    if args.json:
        print(json.dumps({"builds": dict(check.builds), "onnxruntime": version, "providers": providers,
                          "problems": list(check.problems)}))
    else:
        print(f"installed: {check.summary}\nonnxruntime: {version}\nproviders: {', '.join(providers) or 'none'}")
        for problem in check.problems:
            print(f"problem: {problem}")
    return 1 if check.problems else 0


if __name__ == "__main__":
    sys.exit(main())
