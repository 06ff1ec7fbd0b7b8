"""Does the cascade pay? Monolithic (heavy model on one node) vs cascade (device → edge → cloud), side by side.

One run, one held-out stream (resources.scenes test split: 10,000 patches, --quick 2,000, 90 % water),
two systems driven over gRPC on loopback by the same client with the same batch size and concurrency (each
client worker sends its requests as messages of one StreamInfer stream, or with --transport unary as one
ModelInfer call each):

- monolithic: the heavy stage on one `tierdeck-node` (its rule only names its labels: every row settles there);
- cascade: resources/pipelines/ship-finder.pipeline.json deployed through the control plane on three
  `tierdeck-node` processes (device → edge → cloud); inputs go to the device node, which answers with the
  final decision of whichever stage settled each row.
Both answer with the agents' decision tensors (decision_label, decision_stage, decision_final), so the client
code is the same for both.

Reported per system: throughput and the ratio, CPU-seconds per 1,000 inputs (agents and client), top-1
accuracy of the final decision (water included), vessel recall, escalation rate per link, fraction of
inputs that reached the heavy model, peak RSS per agent and the memory each stage adds to its agent (RSS
under load minus that agent's RSS before the stage was deployed), energy per input from the agents' own
power figures (labelled with their source). Each agent's "before deploy" RSS is taken after a trivial
stage was deployed, run once and undeployed there: onnxruntime's once-per-process start-up belongs to the
agent, not to the first stage it serves. The cascade's answers are checked row by row against an
in-process computation of the same rules. A what-if sweep of the stage 1 and stage 2 thresholds on the
same stream (accuracy vs fraction escalated) is written as a PNG. Thresholds are NOT tuned here: they
come from the pipeline file (chosen on the validation split by tools/train_models.py).

Below the CPU figure, each system's CPU per input is split into the models' own CPU in the agents (the
compute threads' time inside onnxruntime, compute_cpu_seconds_total), what the same gRPC messages cost through
a server that runs nothing (bench/_echo.py: the transport floor of Python gRPC), and the rest (tierdeck's own
code, thread hand-offs); with the ratio the cascade would reach if the rest were free, and the models' cost
run alone one at a time (how much the load itself slows them).

Usage: python bench/cascade.py [--json OUT] [--quick] [--n N] [--batch B] [--concurrency C] [--repeats R]
                               [--transport stream|unary] [--plot PNG]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app._deployer import rule_proto
from app.pipeline_file import Pipeline, Rule, Stage, load_pipeline
from bench._common import ROOT, Agent, print_table, write_json
from resources import scenes
from runners._proto import tierdeck_control_pb2 as ctl
from runners._stream import StreamLink
from runners.client import NodeClient, manifest_for

PIPELINE = ROOT / "resources" / "pipelines" / "ship-finder.pipeline.json"
TARGETS = {"throughput_ratio": 5.0, "accuracy_loss_pt": 0.5, "reached_heavy": 0.08, "device_memory_saving": 0.73}


# -- in-process reference ----------------------------------------------------------------------------------
def run_model(path: Path, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Probabilities from onnxruntime in this process (1 thread, like the agents)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"image": x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def model_cpu_per_row(path: Path, x: np.ndarray, rows: int, seconds: float = 0.3) -> float:
    """CPU seconds per row of one model in this process (1 thread, the agents' session options) at `rows` rows a
    run: what the model itself costs, without the contention of a loaded box."""
    from runners._stage import load_session

    sess = load_session(path, 1)
    rows = max(1, min(rows, len(x)))
    feed = {sess.get_inputs()[0].name: x[:rows]}
    for _ in range(3):
        sess.run(None, feed)
    runs, start = 0, time.thread_time()
    while time.thread_time() - start < seconds or runs < 3:
        sess.run(None, feed)
        runs += 1
    return (time.thread_time() - start) / (runs * rows)


def with_thresholds(rule: Rule, confidence_below: float | None) -> Rule:
    """The same rule with another confidence_below (for the what-if sweep)."""
    return Rule(rule.output, rule.labels, confidence_below, rule.class_in, rule.score_above, rule.drop_class)


def cascade_in_process(chain: list[Stage], probs: list[np.ndarray],
                       rules: list[Rule] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Final class index per row and index of the stage that decided, under the chain's rules."""
    rules = rules or [s.rule for s in chain]
    n = len(probs[0])
    decision = np.zeros(n, dtype=np.int64)
    decided_by = np.full(n, -1, dtype=np.int64)
    alive = np.ones(n, dtype=bool)
    for i, (rule, p) in enumerate(zip(rules, probs, strict=True)):
        outcome = rule.evaluate(p)
        last = i == len(rules) - 1
        settle = alive & (~outcome.escalate | last)
        decision[settle] = outcome.top_class[settle]
        decided_by[settle] = i
        alive &= ~settle
    return decision, decided_by


def label_index(labels: list[str], final_classes: list[str]) -> dict[str, int]:
    """Map every stage's label to the final class index (the detector's 'water' is water)."""
    return {name: final_classes.index(name) for name in labels if name in final_classes}


# -- the systems -------------------------------------------------------------------------------------------
@dataclass
class Node:
    """One agent of a system and what we measured about it."""

    role: str
    agent: Agent
    stage: str
    proc: psutil.Process = field(init=False)
    rss_before_deploy: int = 0
    rss_after_deploy: int = 0
    rss_peak: int = 0
    cpu_start: float = 0.0
    cpu_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.proc = psutil.Process(self.agent.pid)

    def cpu(self) -> float:
        """User + system CPU seconds of the agent process so far."""
        t = self.proc.cpu_times()
        return t.user + t.system


async def deploy_stage(stage: Stage, node: Node, next_stage: Stage | None = None,
                       next_node: Node | None = None) -> None:
    """Deploy one stage with its rule (a last stage's rule only names its labels) and its next hop."""
    assert stage.model_path is not None
    model = stage.model_path.read_bytes()
    fields: dict[str, Any] = {"input_names": [t.name for t in stage.inputs],
                              "output_names": [t.name for t in stage.outputs],
                              "rule": rule_proto(stage.rule),
                              "budget": ctl.Budget(max_escalations_per_s=stage.budget.max_escalations_per_s,
                                                   priority=stage.budget.priority)}
    if next_stage is not None and next_node is not None:
        fields["next_hop"] = ctl.NextHop(address=next_node.agent.address, model=next_stage.id,
                                         labels=list(next_stage.rule.labels))
    if stage.max_batch:
        fields["max_batch"] = stage.max_batch
    async with NodeClient(node.agent.address) as client:
        await client.deploy(manifest_for(stage.id, model, "1", **fields), model)


def _identity_model() -> bytes:
    """A one-node ONNX model (Identity on float [N, 1]): deploying it starts onnxruntime in an agent."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "ort-start",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


async def start_onnxruntime(node: Node) -> None:
    """Deploy, run once and undeploy a trivial stage, so that onnxruntime's once-per-process start-up (its
    environment, allocators, kernel registry) is paid before the "before deploy" RSS is taken and is not
    charged to the first real stage."""
    model = _identity_model()
    async with NodeClient(node.agent.address) as client:
        await client.deploy(manifest_for("ort-start", model, "1"), model)
        await client.infer("ort-start", {"x": np.zeros((1, 1), np.float32)})
        await client.undeploy("ort-start")


async def deploy_cascade(chain: list[Stage], nodes: list[Node]) -> None:
    """Deploy the chain top tier first, each stage pointing at the next node (the order a console uses)."""
    for i in reversed(range(len(chain))):
        last = i + 1 == len(chain)
        await deploy_stage(chain[i], nodes[i], None if last else chain[i + 1], None if last else nodes[i + 1])


async def telemetry_snapshot(address: str) -> ctl.TelemetrySample:
    """One telemetry sample with counters as of now (the second sample of a 0.1 s stream)."""
    async with NodeClient(address) as client:
        stream = client.telemetry(0.1)
        await anext(stream)
        sample = await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]
    return sample


class RssSampler:
    """Samples every node's RSS every 20 ms in a thread and keeps the peak; `cpu_s` is the thread's own CPU
    (measurement, not client work: it is taken out of the client's figure, and it samples 3 agents for the
    cascade but 1 for the monolithic system)."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.thread_time()
        try:
            self._sample()
        finally:
            self.cpu_s = time.thread_time() - start

    def _sample(self) -> None:
        while not self._stop.is_set():
            for node in self.nodes:
                try:
                    node.rss_peak = max(node.rss_peak, node.proc.memory_info().rss)
                except psutil.Error:
                    pass
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def drive(address: str, model: str, x: np.ndarray, batch: int, concurrency: int,
                outputs: list[str], transport: str = "stream") -> list[dict[str, np.ndarray]]:
    """Send x in batches with `concurrency` requests in flight (each worker on its own StreamInfer stream, or
    one ModelInfer call per request); results in batch order."""
    starts = list(range(0, len(x), batch))
    results: list[dict[str, np.ndarray]] = [{} for _ in starts]
    cursor = iter(range(len(starts)))

    async with NodeClient(address) as client:
        async def worker() -> None:
            link = client.stream_link() if transport == "stream" else None
            try:
                for k in cursor:
                    s = starts[k]
                    reply = await client.infer(model, {"image": x[s:s + batch]}, outputs=outputs, timeout=120,
                                               link=link)
                    results[k] = reply.outputs
            finally:
                if link is not None:
                    await link.close()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


@dataclass
class Pass:
    """One measured pass of one system over the stream."""

    wall_s: float
    agent_cpu_s: float
    client_cpu_s: float
    decisions: np.ndarray
    deciders: list[str]
    finals: np.ndarray
    deltas: list[dict[str, float]] = field(default_factory=list)
    power: list[tuple[str, bool]] = field(default_factory=list)


async def measured_pass(system: str, nodes: list[Node], x: np.ndarray, batch: int, concurrency: int,
                        final_classes: list[str], transport: str = "stream") -> Pass:
    """Drive one system over the stream, measuring wall time and CPU of its agents and of this client."""
    entry = nodes[0]
    outputs = ["decision_label", "decision_stage", "decision_final"]
    before = [await telemetry_snapshot(node.agent.address) for node in nodes]
    window_start = time.perf_counter()
    for node in nodes:
        node.cpu_start = node.cpu()
    client_start = time.process_time()
    t0 = time.perf_counter()
    with RssSampler(nodes) as sampler:
        results = await drive(entry.agent.address, entry.stage, x, batch, concurrency, outputs, transport)
    wall = time.perf_counter() - t0
    client_cpu = time.process_time() - client_start - sampler.cpu_s
    agent_cpu = 0.0
    for node in nodes:
        used = node.cpu() - node.cpu_start
        node.cpu_seconds += used
        agent_cpu += used
    await asyncio.sleep(0.6)  # the agents integrate power every 0.5 s: let them account for the whole pass
    after = [await telemetry_snapshot(node.agent.address) for node in nodes]
    window = time.perf_counter() - window_start
    deltas = []
    for node, b, a in zip(nodes, before, after, strict=True):
        sa = next(st for st in a.stages if st.stage_id == node.stage)
        sb = next((st for st in b.stages if st.stage_id == node.stage), ctl.StageTelemetry())
        deltas.append({key: float(getattr(sa, key) - getattr(sb, key))
                       for key in ("inferences_total", "escalated_total", "shed_total", "queued_total",
                                   "errors_total", "energy_joules_total", "forwarded_total", "hop_calls_total",
                                   "compute_seconds_total", "compute_cpu_seconds_total")}
                      | {"node_energy_joules": a.energy_joules_total - b.energy_joules_total, "window_s": window})
    power = [(a.power_source, a.power_measured) for a in after]
    labels = [v.decode() for r in results for v in r["decision_label"]]
    stages = [v.decode() for r in results for v in r["decision_stage"]]
    finals = np.concatenate([r["decision_final"] for r in results]).astype(bool)
    decisions = np.array([final_classes.index(v) for v in labels])
    return Pass(wall, agent_cpu, client_cpu, decisions, stages, finals, deltas, power)


# -- the gRPC transport floor ------------------------------------------------------------------------------
class EchoServer:
    """bench/_echo.py in its own process: StreamInfer answered at once, nothing run."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "bench._echo"], cwd=ROOT, stdout=subprocess.PIPE,
                                        text=True)
        assert self.process.stdout is not None
        self.address = json.loads(self.process.stdout.readline())["address"]
        self.proc = psutil.Process(self.process.pid)

    def cpu(self) -> float:
        """User + system CPU seconds of the server so far."""
        t = self.proc.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


async def echo_cpu_per_message(echo: EchoServer, x: np.ndarray, rows: int, concurrency: int,
                               messages: int = 400, repeats: int = 3) -> float:
    """CPU seconds per message (the echo server's and this client's) for messages of `rows` input rows sent the
    way the bench's client and the agents' forwarders send them (StreamInfer, `concurrency` streams), median of
    `repeats`."""
    rows = max(1, min(rows, len(x)))
    outputs = ["decision_label", "decision_stage", "decision_final"]
    samples = []
    async with NodeClient(echo.address) as client:
        links = [StreamLink(client.inference, client.channel, streaming=True) for _ in range(concurrency)]

        async def worker(link: StreamLink, count: int) -> None:
            for _ in range(count):
                await client.infer("echo", {"image": x[:rows]}, outputs=outputs, link=link)

        try:
            await asyncio.gather(*(worker(link, 20) for link in links))  # streams open, buffers warm
            for _ in range(repeats):
                server_start, client_start = echo.cpu(), time.process_time()
                await asyncio.gather(*(worker(link, messages // concurrency) for link in links))
                used = echo.cpu() - server_start + time.process_time() - client_start
                samples.append(used / (messages // concurrency * concurrency))
        finally:
            for link in links:
                await link.close()
    return statistics.median(samples)


async def transport_floor(x: np.ndarray, batch: int, concurrency: int,
                          hops: list[tuple[float, float]]) -> dict[str, Any]:
    """CPU seconds per input that Python gRPC itself costs a system: the client's messages of `batch` rows, plus
    for each hop (messages per input, rows per message) the forwarder's messages, all through the echo server."""
    echo = EchoServer()
    try:
        client_link = await echo_cpu_per_message(echo, x, batch, concurrency)
        per_hop = [await echo_cpu_per_message(echo, x, round(rows), 1) if per_input else 0.0
                   for per_input, rows in hops]
    finally:
        echo.stop()
    return {"client_message_cpu_s": client_link, "hop_message_cpu_s": per_hop,
            "per_input_s": client_link / batch + sum(k * c for (k, _), c in zip(hops, per_hop, strict=True))}


# -- the what-if plot --------------------------------------------------------------------------------------
def write_sweep_png(path: Path, sweeps: dict[str, list[dict[str, float]]], chosen: dict[str, dict[str, float]],
                    heavy_accuracy: float) -> str:
    """Accuracy vs fraction escalated, one panel per link, drawn with QtGui offscreen; returns a note."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        from PySide6.QtCore import QPointF, QRectF, Qt
        from PySide6.QtGui import QColor, QFont, QGuiApplication, QImage, QPainter, QPen
    except ImportError:
        return "PNG not written: PySide6 (the console extra) is not installed; the sweep is in the JSON"
    app = QGuiApplication.instance() or QGuiApplication([])
    width, height = 1200, 520
    image = QImage(width, height, QImage.Format.Format_RGB32)
    image.fill(QColor("#15191e"))
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    fg, grid, accent, ref = QColor("#e6e6e6"), QColor("#3a414a"), QColor("#4fc3f7"), QColor("#ffb74d")
    painter.setFont(QFont("DejaVu Sans", 10))
    titles = {"stage1": "stage 1 (device → edge): vary confidence_below, stage 2 fixed",
              "stage2": "stage 2 (edge → cloud): vary confidence_below, stage 1 fixed"}
    xlabels = {"stage1": "fraction of inputs escalated to the edge",
               "stage2": "fraction of inputs reaching the heavy model"}
    all_acc = [r["accuracy"] for rows in sweeps.values() for r in rows] + [heavy_accuracy]
    y_step = _nice_step(max(all_acc) - min(all_acc))
    y_lo = math.floor(min(all_acc) / y_step) * y_step
    y_hi = math.ceil(max(all_acc) / y_step) * y_step + y_step
    for panel, key in enumerate(("stage1", "stage2")):
        rows = sweeps[key]
        left, top, w, h = 90 + panel * 590, 50, 470, 380
        x_step = _nice_step(max(r["escalated"] for r in rows))
        x_hi = math.ceil(max(r["escalated"] for r in rows) / x_step) * x_step or 1.0
        sx = lambda v, left=left, x_hi=x_hi, w=w: left + w * v / x_hi  # noqa: E731
        sy = lambda v, top=top, h=h: top + h * (1 - (v - y_lo) / (y_hi - y_lo))  # noqa: E731
        for gy in np.arange(y_lo, y_hi + y_step / 2, y_step):
            painter.setPen(QPen(grid, 1))
            painter.drawLine(QPointF(left, sy(gy)), QPointF(left + w, sy(gy)))
            painter.setPen(fg)
            painter.drawText(QRectF(left - 85, sy(gy) - 8, 80, 16), Qt.AlignmentFlag.AlignRight, f"{gy * 100:.2f} %")
        for gx in np.arange(0.0, x_hi + x_step / 2, x_step):
            painter.setPen(QPen(grid, 1))
            painter.drawLine(QPointF(sx(gx), top), QPointF(sx(gx), top + h))
            painter.setPen(fg)
            painter.drawText(QRectF(sx(gx) - 35, top + h + 4, 70, 16), Qt.AlignmentFlag.AlignCenter,
                             f"{gx * 100:.0f} %")
        painter.setPen(fg)
        painter.drawText(QRectF(left, 12, w, 20), Qt.AlignmentFlag.AlignCenter, titles[key])
        painter.drawText(QRectF(left, top + h + 24, w, 20), Qt.AlignmentFlag.AlignCenter, xlabels[key])
        painter.setPen(QPen(ref, 1.5, Qt.PenStyle.DashLine))
        painter.drawLine(QPointF(left, sy(heavy_accuracy)), QPointF(left + w, sy(heavy_accuracy)))
        painter.drawText(QRectF(left + 5, sy(heavy_accuracy) - 18, w - 10, 16), Qt.AlignmentFlag.AlignLeft,
                         "heavy model alone (monolithic)")
        ordered = sorted(rows, key=lambda r: r["escalated"])
        painter.setPen(QPen(accent, 2))
        for a, b in itertools.pairwise(ordered):
            painter.drawLine(QPointF(sx(a["escalated"]), sy(a["accuracy"])),
                             QPointF(sx(b["escalated"]), sy(b["accuracy"])))
        painter.setBrush(accent)
        for r in ordered:
            painter.drawEllipse(QPointF(sx(r["escalated"]), sy(r["accuracy"])), 3, 3)
        c = chosen[key]
        painter.setPen(QPen(ref, 2))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawEllipse(QPointF(sx(c["escalated"]), sy(c["accuracy"])), 8, 8)
        painter.drawText(QRectF(sx(c["escalated"]) + 6, sy(c["accuracy"]) + 10, 260, 16), Qt.AlignmentFlag.AlignLeft,
                         f"pipeline: confidence_below {c['threshold']:g}")
    painter.end()
    if path.suffix.lower() != ".png":
        path = path.with_name(path.name + ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = image.save(str(path))
    del app
    return f"wrote {path}" if ok else f"PNG not written: QImage.save({path}) failed"


def _nice_step(span: float) -> float:
    """A 1-2-5 grid step giving about five intervals over `span`."""
    raw = max(span, 1e-6) / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def sweep(chain: list[Stage], probs: list[np.ndarray], labels: np.ndarray,
          final_index: list[dict[str, int]]) -> tuple[dict[str, list[dict[str, float]]], dict[str, dict[str, float]]]:
    """What-if curves on the benchmark stream (reporting only: the pipeline's thresholds are not changed)."""
    grid = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999]
    out: dict[str, list[dict[str, float]]] = {"stage1": [], "stage2": []}
    chosen: dict[str, dict[str, float]] = {}
    base = [s.rule for s in chain]
    for key, which in (("stage1", 0), ("stage2", 1)):
        current = base[which].confidence_below
        for t in sorted({*grid, *([current] if current is not None else [])}):
            rules = list(base)
            rules[which] = with_thresholds(base[which], t)
            dec, by = cascade_in_process(chain, probs, rules)
            acc = float((_to_final(dec, by, chain, final_index) == labels).mean())
            escalated = float((by > which).mean())
            row = {"threshold": t, "accuracy": acc, "escalated": escalated}
            out[key].append(row)
            if t == current:
                chosen[key] = row
    return out, chosen


def _to_final(dec: np.ndarray, by: np.ndarray, chain: list[Stage], final_index: list[dict[str, int]]) -> np.ndarray:
    out = np.zeros(len(dec), dtype=np.int64)
    for i, stage in enumerate(chain):
        rows = by == i
        lookup = np.array([final_index[i].get(label, -1) for label in stage.rule.labels])
        out[rows] = lookup[dec[rows]]
    return out


# -- main --------------------------------------------------------------------------------------------------
def summarise(decisions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy (water included) and vessel recall (a vessel called any vessel type)."""
    vessels = labels > 0
    return {"accuracy": float((decisions == labels).mean()), "vessel_recall": float((decisions[vessels] > 0).mean())}


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Start the agents, deploy both systems, drive them alternately, collect everything."""
    pipeline: Pipeline = load_pipeline(PIPELINE)
    chain = pipeline.chain()
    final_classes = list(chain[-1].rule.labels)
    final_index = [label_index(list(s.rule.labels), final_classes) for s in chain]
    n = args.n or (2000 if args.quick else 10_000)
    images, labels = scenes.split("test", n)
    x = scenes.to_model_input(images)
    warm_images, _ = scenes.split("val", 256)
    warm = scenes.to_model_input(warm_images)
    print(f"stream: test split seed {scenes.SPLITS['test']}, {n} patches, {(labels == 0).mean() * 100:.1f} % water; "
          f"batch {args.batch}, concurrency {args.concurrency}, client transport {args.transport}, "
          f"{args.repeats} pass(es) per system", flush=True)

    t0 = time.perf_counter()
    probs = [run_model(s.model_path, x) for s in chain if s.model_path is not None]
    dec, by = cascade_in_process(chain, probs)
    expected = _to_final(dec, by, chain, final_index)
    expected_stage = [chain[i].id for i in by]
    heavy_alone = probs[-1].argmax(axis=1)
    print(f"in-process reference computed in {time.perf_counter() - t0:.1f} s", flush=True)

    tiers = ["device", "edge", "cloud"]
    mono = [Node("cloud", Agent(tmp / "mono", "--ort-threads", "1", name="mono-cloud", tier="cloud"), chain[-1].id)]
    cascade = [Node(tiers[i], Agent(tmp / f"cascade-{tiers[i]}", "--ort-threads", "1", name=f"cascade-{tiers[i]}",
                                    tier=tiers[i]), s.id) for i, s in enumerate(chain)]
    systems = {"monolithic": mono, "cascade": cascade}
    try:
        for node in mono + cascade:
            await start_onnxruntime(node)
        await asyncio.sleep(1.0)  # let imports and onnxruntime's start-up settle before the "before" RSS
        for node in mono + cascade:
            node.rss_before_deploy = node.proc.memory_info().rss
        await deploy_stage(chain[-1], mono[0])
        await deploy_cascade(chain, cascade)
        await asyncio.sleep(0.5)
        for node in mono + cascade:
            node.rss_after_deploy = node.proc.memory_info().rss
        for nodes in systems.values():  # warm-up on validation patches, not measured
            await drive(nodes[0].agent.address, nodes[0].stage, warm, args.batch, args.concurrency,
                        ["decision_label"], args.transport)
        passes: dict[str, list[Pass]] = {"monolithic": [], "cascade": []}
        for r in range(args.repeats):
            for name in ("monolithic", "cascade") if r % 2 == 0 else ("cascade", "monolithic"):
                p = await measured_pass(name, systems[name], x, args.batch, args.concurrency, final_classes,
                                        args.transport)
                passes[name].append(p)
                print(f"  pass {r + 1} {name}: {n / p.wall_s:,.0f} inputs/s", flush=True)
    finally:
        for node in mono + cascade:
            node.agent.stop()

    report: dict[str, Any] = {"stream": {"split": "test", "seed": scenes.SPLITS["test"], "n": n,
                                         "water_fraction": float((labels == 0).mean())},
                              "client": {"batch": args.batch, "concurrency": args.concurrency, "repeats": args.repeats,
                                         "transport": "gRPC (OIP v2) on loopback, insecure, " + (
                                             "StreamInfer" if args.transport == "stream" else "ModelInfer"),
                                         "ort_threads_per_session": 1,
                                         "malloc": "the agents' glibc thresholds (runners.agent)"},
                              "machine": {"cpu_cores": psutil.cpu_count(), "logical": True},
                              "pipeline": str(PIPELINE.relative_to(ROOT)),
                              "thresholds": {s.id: s.rule.confidence_below for s in chain[:-1]}}
    heavy_ref = summarise(heavy_alone, labels)
    for name, nodes in systems.items():
        runs = passes[name]
        wall = statistics.median(p.wall_s for p in runs)
        last = runs[-1]
        total = n * len(runs)
        agent_cpu = sum(p.agent_cpu_s for p in runs)
        client_cpu = sum(p.client_cpu_s for p in runs)
        dynamic = node_energy = window = 0.0
        sources = []
        node_rows = []
        stage_rows = []
        model_s = 0.0  # the models' CPU per input in the agents, under the load (their compute threads' CPU)
        alone_s = 0.0  # the same models run alone in this process at the batch sizes they ran
        hops: list[tuple[float, float]] = []  # (messages per input, rows per message) of each hop
        stages = [chain[-1]] if name == "monolithic" else chain
        for k, node in enumerate(nodes):
            d = {key: sum(p.deltas[k][key] for p in runs) for key in runs[0].deltas[k]}
            run_rows = args.batch if k == 0 else hops[k - 1][1]
            path = stages[k].model_path
            assert path is not None
            model_s += d["compute_cpu_seconds_total"] / total
            alone_s += d["inferences_total"] / total * model_cpu_per_row(path, x, round(run_rows))
            if k + 1 < len(nodes):
                hops.append((d["hop_calls_total"] / total,
                             d["forwarded_total"] / d["hop_calls_total"] if d["hop_calls_total"] else 0.0))
            source, measured = runs[-1].power[k]
            dynamic += d["energy_joules_total"]
            node_energy += d["node_energy_joules"]
            window = d["window_s"]
            sources.append(f"{node.role}: {source} ({'measured' if measured else 'not measured'})")
            node_rows.append({"role": node.role, "pid": node.agent.pid,
                              "rss_before_deploy_mb": node.rss_before_deploy / 2**20,
                              "rss_after_deploy_mb": node.rss_after_deploy / 2**20,
                              "rss_peak_mb": node.rss_peak / 2**20,
                              "stage_added_mb": (node.rss_peak - node.rss_before_deploy) / 2**20,
                              "cpu_s": node.cpu_seconds, "power_source": source, "power_measured": measured})
            inferred = int(d["inferences_total"])
            escalated = int(d["escalated_total"])
            stage_rows.append({"stage": node.stage, "tier": node.role, "inferences": inferred,
                               "escalated": escalated, "escalation_rate": escalated / inferred if inferred else 0.0,
                               "shed": int(d["shed_total"]), "queued": int(d["queued_total"]),
                               "errors": int(d["errors_total"]), "reached_fraction": inferred / total,
                               "rows_per_forwarded_call": d["forwarded_total"] / d["hop_calls_total"]
                               if d["hop_calls_total"] else 0.0})
        quality = summarise(last.decisions, labels)
        floor = await transport_floor(x, args.batch, args.concurrency, hops)
        all_s = (agent_cpu + client_cpu) / total
        entry: dict[str, Any] = {
            "throughput_inputs_per_s": n / wall,
            "throughput_per_pass": [n / p.wall_s for p in runs],
            "wall_s_median": wall,
            "cpu_s_per_1000": {"agents": 1000 * agent_cpu / total, "client": 1000 * client_cpu / total,
                               "all": 1000 * (agent_cpu + client_cpu) / total},
            "cpu_s_per_1000_breakdown": {
                "models": 1000 * model_s, "models_alone": 1000 * alone_s, "grpc_floor": 1000 * floor["per_input_s"],
                "rest": 1000 * (all_s - model_s - floor["per_input_s"]),
                "note": "models: the CPU time of the agents' threads inside onnxruntime's calls under the load "
                        "(compute_cpu_seconds_total); models_alone: each stage's model run in this process (1 "
                        "thread, the agents' session options, no other load) at the rows per run it saw, times the "
                        "inputs that reached it; grpc_floor: the "
                        "same messages (the client's, and each hop's at its measured rows per call and calls per "
                        "input) through "
                        "a StreamInfer server that runs nothing (bench/_echo.py), its CPU and the client's; rest: "
                        "what is left — tierdeck's own code, thread hand-offs, scheduling"},
            "grpc_floor": floor,
            **quality,
            "nodes": node_rows,
            "stages": stage_rows,
            "energy_j_per_input": dynamic / total,
            "energy_note": "agents' power figures: dynamic energy (power above idle) attributed to the stage by "
                           "its compute time, summed over the system's agents",
            "node_energy_j_per_input_incl_idle": node_energy / total,
            "node_energy_note": f"whole-node energy of every agent including idle power, over each pass plus "
                                f"~0.6-1 s of sampler lag (window {window:.1f} s per pass)",
            "energy_sources": sources,
            "provisional_rows": int((~last.finals).sum()),
        }
        if name == "cascade":
            entry["decisions_match_in_process"] = int((last.decisions == expected).sum())
            entry["deciders_match_in_process"] = int(sum(a == b for a, b in zip(last.deciders, expected_stage,
                                                                                  strict=True)))
            entry["reached_heavy"] = stage_rows[-1]["reached_fraction"]
            entry["decided_by"] = {s.id: int(sum(d == s.id for d in last.deciders)) for s in chain}
        else:
            entry["decisions_match_in_process"] = int((last.decisions == heavy_alone).sum())
            entry["reached_heavy"] = 1.0
        report[name] = entry
    report["heavy_in_process"] = heavy_ref
    mono_r, casc_r = report["monolithic"], report["cascade"]
    ratio = casc_r["throughput_inputs_per_s"] / mono_r["throughput_inputs_per_s"]
    loss_pt = (mono_r["accuracy"] - casc_r["accuracy"]) * 100
    device_added = casc_r["nodes"][0]["stage_added_mb"]
    heavy_added = mono_r["nodes"][0]["stage_added_mb"]
    saving = 1 - device_added / heavy_added if heavy_added > 0 else float("nan")
    mono_b, casc_b = mono_r["cpu_s_per_1000_breakdown"], casc_r["cpu_s_per_1000_breakdown"]
    report["comparison"] = {
        "throughput_ratio": ratio,
        "cpu_ratio": mono_r["cpu_s_per_1000"]["all"] / casc_r["cpu_s_per_1000"]["all"],
        # What the ratio could be: with tierdeck's own code free (models + Python gRPC left), and with only the
        # models' compute left (no transport at all).
        "cpu_ratio_if_rest_were_free": mono_r["cpu_s_per_1000"]["all"] / (casc_b["models"] + casc_b["grpc_floor"]),
        "cpu_ratio_models_only": mono_b["models"] / casc_b["models"] if casc_b["models"] > 0 else float("nan"),
        "cpu_ratio_models_alone": mono_b["models_alone"] / casc_b["models_alone"]
        if casc_b["models_alone"] > 0 else float("nan"),
        "accuracy_loss_pt": loss_pt,
        "reached_heavy": casc_r["reached_heavy"],
        "device_stage_added_mb": device_added,
        "heavy_stage_added_mb_monolithic": heavy_added,
        "device_memory_saving": saving,
        "energy_ratio": mono_r["energy_j_per_input"] / casc_r["energy_j_per_input"]
        if casc_r["energy_j_per_input"] > 0 else float("nan"),
    }
    report["targets"] = {
        "throughput_ratio >= 5 at <= 0.5 pt loss": {"value": ratio, "loss_pt": loss_pt,
                                                   "met": ratio >= TARGETS["throughput_ratio"]
                                                   and loss_pt <= TARGETS["accuracy_loss_pt"]},
        "reached_heavy <= 8 %": {"value": casc_r["reached_heavy"],
                                 "met": casc_r["reached_heavy"] <= TARGETS["reached_heavy"]},
        "device stage memory >= 73 % below heavy's": {"value": saving,
                                                      "met": saving >= TARGETS["device_memory_saving"]},
    }
    sweeps, chosen = sweep(chain, probs, labels, final_index)
    report["sweep"] = sweeps
    plot = Path(args.plot) if args.plot else (Path(args.json).with_suffix(".png") if args.json else tmp / "sweep.png")
    report["sweep_plot"] = write_sweep_png(plot, sweeps, chosen, heavy_ref["accuracy"])
    return report


def print_report(report: dict[str, Any]) -> None:
    """The side-by-side table, the per-node table and the targets."""
    m, c, cmp = report["monolithic"], report["cascade"], report["comparison"]
    n = report["stream"]["n"]
    print(f"\ncascade vs monolithic — {n} held-out patches, batch {report['client']['batch']}, "
          f"concurrency {report['client']['concurrency']}, {report['machine']['cpu_cores']} CPU cores shared by "
          "all processes\n")
    esc = [s["escalation_rate"] for s in c["stages"]]
    per_pass = lambda r: " / ".join(f"{v:,.0f}" for v in r["throughput_per_pass"])  # noqa: E731
    rows = [
        ["throughput (inputs/s, median of passes)", m["throughput_inputs_per_s"], c["throughput_inputs_per_s"],
         f"{cmp['throughput_ratio']:.2f}×"],
        ["throughput of each pass", per_pass(m), per_pass(c), ""],
        ["CPU-s per 1,000 inputs (agents)", m["cpu_s_per_1000"]["agents"], c["cpu_s_per_1000"]["agents"], ""],
        ["CPU-s per 1,000 inputs (agents + client)", m["cpu_s_per_1000"]["all"], c["cpu_s_per_1000"]["all"],
         f"{cmp['cpu_ratio']:.2f}× less"],
        ["  of which the models (onnxruntime's CPU in the agents)", m["cpu_s_per_1000_breakdown"]["models"],
         c["cpu_s_per_1000_breakdown"]["models"], f"{cmp['cpu_ratio_models_only']:.2f}× less (the models)"],
        ["  of which gRPC itself (same messages, echo server)", m["cpu_s_per_1000_breakdown"]["grpc_floor"],
         c["cpu_s_per_1000_breakdown"]["grpc_floor"],
         f"{cmp['cpu_ratio_if_rest_were_free']:.2f}× less (if the rest were free)"],
        ["  the rest (tierdeck's code, thread hand-offs)", m["cpu_s_per_1000_breakdown"]["rest"],
         c["cpu_s_per_1000_breakdown"]["rest"], ""],
        ["the same models run alone, one at a time", m["cpu_s_per_1000_breakdown"]["models_alone"],
         c["cpu_s_per_1000_breakdown"]["models_alone"], f"{cmp['cpu_ratio_models_alone']:.2f}× less"],
        ["top-1 accuracy (water included)", f"{m['accuracy'] * 100:.2f} %", f"{c['accuracy'] * 100:.2f} %",
         f"{-cmp['accuracy_loss_pt']:+.2f} pt"],
        ["vessel recall", f"{m['vessel_recall'] * 100:.2f} %", f"{c['vessel_recall'] * 100:.2f} %", ""],
        ["escalation rate device → edge", "—", f"{esc[0] * 100:.2f} %", ""],
        ["escalation rate edge → cloud", "—", f"{esc[1] * 100:.2f} %", ""],
        ["inputs that reached the heavy model", "100 %", f"{c['reached_heavy'] * 100:.2f} %", ""],
        ["rows per forwarded call, device → edge / edge → cloud", "—",
         " / ".join(f"{s['rows_per_forwarded_call']:.1f}" for s in c["stages"][:-1]), ""],
        ["energy per input, compute (mJ)", m["energy_j_per_input"] * 1000, c["energy_j_per_input"] * 1000,
         f"{cmp['energy_ratio']:.2f}× less"],
        ["energy per input, nodes incl. idle (mJ)", m["node_energy_j_per_input_incl_idle"] * 1000,
         c["node_energy_j_per_input_incl_idle"] * 1000, ""],
        ["provisional answers", m["provisional_rows"], c["provisional_rows"], ""],
        ["decisions equal to in-process rules", f"{m['decisions_match_in_process']}/{n}",
         f"{c['decisions_match_in_process']}/{n}", ""],
    ]
    report["table"] = print_table(["", "monolithic", "cascade", "cascade vs mono"], rows)
    print()
    node_rows = [[sys_name, nd["role"], st["stage"], nd["rss_before_deploy_mb"], nd["rss_after_deploy_mb"],
                  nd["rss_peak_mb"],
                  nd["stage_added_mb"], nd["cpu_s"],
                  f"{nd['power_source']} ({'measured' if nd['power_measured'] else 'not measured'})"]
                 for sys_name in ("monolithic", "cascade")
                 for nd, st in zip(report[sys_name]["nodes"], report[sys_name]["stages"], strict=True)]
    report["node_table"] = print_table(["system", "agent", "stage", "RSS before deploy (MB)",
                                        "RSS after deploy, idle (MB)", "peak RSS under load (MB)",
                                        "stage adds (MB)", "CPU-s", "power source"], node_rows)
    print()
    for name, t in report["targets"].items():
        print(f"target {name}: {'met' if t['met'] else 'MISSED'} ({_target_text(name, t)})")
    print(report["sweep_plot"])


def _target_text(name: str, t: dict[str, Any]) -> str:
    if "throughput" in name:
        return f"{t['value']:.2f}× at {t['loss_pt']:.2f} pt accuracy loss (negative: a gain)"
    if "reached" in name:
        return f"{t['value'] * 100:.2f} %"
    return f"{t['value'] * 100:.1f} % below"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="OUT", help="write the results here (and the sweep PNG next to it)")
    parser.add_argument("--quick", action="store_true", help="2,000 patches instead of 10,000")
    parser.add_argument("--n", type=int, help="stream length (overrides --quick)")
    parser.add_argument("--batch", type=int, default=32, help="inputs per request (default 32)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--transport", choices=("stream", "unary"), default="stream",
                        help="how the client sends, the same for both systems: each of the --concurrency workers on "
                             "its own StreamInfer stream (default), or one ModelInfer call per request")
    parser.add_argument("--repeats", type=int, default=1, help="measured passes per system, alternating (median)")
    parser.add_argument("--plot", metavar="PNG", help="where the threshold sweep goes (default: next to --json)")
    args = parser.parse_args()
    if args.n is not None and args.n < 1:
        parser.error("--n must be positive")
    from runners.agent import _limit_malloc_arenas

    _limit_malloc_arenas()  # this client sends 512 KiB messages too: the same glibc thresholds as the agents
    with tempfile.TemporaryDirectory(prefix="tierdeck-cascade-") as tmp:
        report = asyncio.run(run(args, Path(tmp)))
        print_report(report)
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
