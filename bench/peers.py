"""tierdeck's agent beside the serving engines a cloud tier may use instead: the same ONNX model, the same client.

One run, alternating targets: a tierdeck agent (`--stage`, 1 onnxruntime thread), Seldon MLServer 1.7.1 and the
KServe 0.21 Python model server (each in its own virtual environment, with the small onnxruntime runtimes of
tests/engines, 1 onnxruntime thread). The client is tritonclient's gRPC client (in a subprocess: it cannot share a
process with another generated `inference` module), batch 1 and 32, 1 and 4 concurrent clients. Prints inputs/s per
target and the ratio tierdeck / engine; writes JSON.
Usage: python bench/peers.py [--model M.onnx] [--seconds S] [--repeats N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bench._common import ROOT, Agent, print_table, write_json


def client_load(address: str, model: str, input_name: str, shape: list[int], batch: int, clients: int,
                seconds: float) -> float:
    """Inputs/s of `clients` tritonclient threads sending batches back to back (runs in its own process)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import tritonclient.grpc as tc

    x = np.random.default_rng(1).random(size=[batch, *shape], dtype=np.float32)

    def worker() -> int:
        client = tc.InferenceServerClient(address)
        request = tc.InferInput(input_name, list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            client.infer(model, [request])
            done += batch
        client.close()
        return done

    worker_warm = tc.InferenceServerClient(address)
    warm = tc.InferInput(input_name, list(x.shape), "FP32")
    warm.set_data_from_numpy(x)
    worker_warm.infer(model, [warm])
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(lambda _: worker(), range(clients)))
    return total / (time.perf_counter() - start)


def _load(address: str, model: str, input_name: str, shape: list[int], batch: int, clients: int,
          seconds: float) -> float:
    out = subprocess.run([sys.executable, __file__, "--client", json.dumps(
        [address, model, input_name, shape, batch, clients, seconds])], capture_output=True, text=True, cwd=ROOT,
        timeout=seconds * 4 + 60)
    if out.returncode != 0:
        raise RuntimeError(f"client against {address}/{model} failed: {out.stderr[-800:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "resources" / "models" / "heavy.onnx")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repetitions (median taken)")
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(client_load(*json.loads(args.client)))
        return 0
    import onnxruntime as ort
    from engine_fixtures import Engine

    session = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in spec.shape][1:]
    tmp = Path(tempfile.mkdtemp(prefix="tierdeck-peers-"))
    agent = Agent(tmp / "agent", "--stage", f"stage={args.model}", "--ort-threads", "1")
    engines = [Engine(kind, f"stage-{kind}", args.model, tmp / kind).start() for kind in ("mlserver", "kserve")]
    targets = [("tierdeck", agent.address, "stage")] + [(e.kind, e.address, e.model) for e in engines]
    rates: dict[tuple[str, int, int], list[float]] = {}
    try:
        for batch in (1, 32):
            for clients in (1, 4):
                for _ in range(args.repeats):
                    for name, address, model in targets:  # alternate: the shared box's noise hits all alike
                        rate = _load(address, model, spec.name, shape, batch, clients, args.seconds)
                        rates.setdefault((name, batch, clients), []).append(rate)
    finally:
        agent.stop()
        for engine in engines:
            engine.stop()
    rows, results = [], []
    for batch in (1, 32):
        for clients in (1, 4):
            med = {name: statistics.median(rates[(name, batch, clients)]) for name, _, _ in targets}
            row = {"batch": batch, "clients": clients, **{f"{k}_inputs_per_s": v for k, v in med.items()},
                   "ratio_vs_mlserver": med["tierdeck"] / med["mlserver"],
                   "ratio_vs_kserve": med["tierdeck"] / med["kserve"]}
            results.append(row)
            rows.append([batch, clients, med["tierdeck"], med["mlserver"], med["kserve"], row["ratio_vs_mlserver"],
                         row["ratio_vs_kserve"]])
    print(f"\npeers — {args.model.name}, tritonclient gRPC, 1 onnxruntime thread each, loopback, "
          f"median of {args.repeats} x {args.seconds:g} s, targets alternating\n")
    table = print_table(["batch", "clients", "tierdeck inputs/s", "MLServer inputs/s", "KServe inputs/s",
                         "tierdeck / MLServer", "tierdeck / KServe"], rows)
    ahead = all(r["ratio_vs_mlserver"] >= 1.0 and r["ratio_vs_kserve"] >= 1.0 for r in results)
    print(f"\ntierdeck level with or ahead of both everywhere: {'yes' if ahead else 'no'}")
    write_json(args.json, {"model": str(args.model), "results": results, "table": table, "ahead": ahead,
                           "raw": {f"{k[0]}/b{k[1]}/c{k[2]}": v for k, v in rates.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
