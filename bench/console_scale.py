"""Console scale: many nodes streaming telemetry into the real console core and its Qt models.

    python bench/console_scale.py [--nodes 200] [--hz 10] [--duration 60] [--json OUT]

A simulator process serves the real control-plane protocol (tierdeck.v1.NodeControl GetNodeInfo,
ListStages, WatchTelemetry, plus grpc.health.v1) for `--nodes` virtual nodes, one grpc.aio server
per node on 127.0.0.1:0, all in one process and one event loop. Each virtual node has one stage;
its samples carry cumulative counters, per-interval figures and a 20-bin score histogram, numbered
per boot (seq) like the agent's.

This process is the console: the real ConsoleCore (I/O loop thread, fleet, SQLite writer) plus the
Qt adapters (QtConsole with its fleet, telemetry and event models) under a QCoreApplication
(offscreen; the models are QtCore only). A 10 ms PreciseTimer on the GUI thread measures event-loop
lag (how late each tick fires). After `--warmup` seconds with every node online, the measurement
window of `--duration` seconds starts; then the simulator ends its streams and reports how many
samples it sent per node, the console drains, and:

* ingest rate — samples accepted by the console per second (and rows committed to SQLite per second);
* samples lost — sent by the simulator minus stored in the database (must be 0), and minus received
  by the Qt telemetry model;
* GUI event-loop lag p50/p95/p99 (target p99 < 50 ms);
* CPU % of the console process (100 % = one core), over the window;
* database growth per hour, from SQLite's page count over the window.

Targets: 0 lost, p99 lag < 50 ms. Prints a table, writes JSON with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from bench._common import print_table, write_json  # noqa: E402

TARGET_P99_LAG_MS = 50.0


# ----- the simulator (a child process) -----------------------------------------------------------------

def simulate(nodes: int, seed: int) -> None:
    """Serve `nodes` virtual nodes until 'stop' on stdin; then print the samples sent per node and exit."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from runners._proto import tierdeck_control_pb2 as ctl
    from runners._proto import tierdeck_control_pb2_grpc as ctl_grpc

    stop = asyncio.Event()
    sent: dict[str, int] = {}

    class Node(ctl_grpc.NodeControlServicer):
        def __init__(self, index: int) -> None:
            self.index = index
            self.node_id = str(uuid.UUID(int=(seed << 64) + index))
            self.boot_id = uuid.uuid4().hex
            self.tier = ("device", "edge", "cloud")[0 if index % 10 < 7 else 1 if index % 10 < 9 else 2]
            self.seq = 0
            self.inferences = 0
            self.escalated = 0
            self.energy = 0.0
            sent[self.node_id] = 0

        async def GetNodeInfo(self, request: Any, context: Any) -> Any:
            return ctl.NodeInfo(node_id=self.node_id, name=f"sim-{self.index:03d}", tier=self.tier,
                                agent_version="sim", cpu_cores=4, ram_total_bytes=8 << 30, ram_free_bytes=6 << 30,
                                execution_providers=["CPUExecutionProvider"], power_source="estimate",
                                boot_id=self.boot_id, started_unix_ms=int(time.time() * 1000), insecure=True)

        async def ListStages(self, request: Any, context: Any) -> Any:
            manifest = ctl.StageManifest(stage_id="detector", version="sim-1", sha256="0" * 64, size_bytes=1000)
            return ctl.ListStagesResponse(stages=[ctl.StageInfo(manifest=manifest, state="ready", model_bytes=1000)])

        async def WatchTelemetry(self, request: Any, context: Any) -> Any:
            interval = request.interval_s or 1.0
            next_at = time.monotonic()
            while not stop.is_set():
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                        break
                    except TimeoutError:
                        pass
                self.seq += 1
                rate = 40 + (self.index % 7) * 10
                escalated = rate // 5
                self.inferences += rate
                self.escalated += escalated
                self.energy += 0.5
                sample = ctl.TelemetrySample(
                    node_id=self.node_id, boot_id=self.boot_id, seq=self.seq, timestamp_ms=int(time.time() * 1000),
                    interval_s=interval, cpu_percent=12.5 + self.index % 5, rss_bytes=50 << 20,
                    power_watts=6.0 + self.index % 3, power_source="estimate", energy_joules_total=self.energy)
                stage = sample.stages.add(
                    stage_id="detector", requests_total=self.seq, inferences_total=self.inferences,
                    escalated_total=self.escalated, forwarded_total=self.escalated, dropped_total=self.inferences // 2,
                    compute_seconds_total=self.seq * 0.01, inferences_per_s=rate / interval,
                    escalated_per_s=escalated / interval, escalation_rate=escalated / rate, latency_p50_ms=1.2,
                    latency_p95_ms=2.5, latency_p99_ms=4.0, link_state="up", energy_joules_total=self.energy,
                    energy_per_inference_j=0.01, score_kind="confidence")
                stage.score_histogram.extend([rate // 20] * 20)
                sent[self.node_id] += 1
                yield sample

    async def main() -> None:
        servers = []
        addresses = []
        for i in range(nodes):
            server = grpc.aio.server()
            node = Node(i)
            ctl_grpc.add_NodeControlServicer_to_server(node, server)
            checker = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(checker, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            await checker.set("", health_pb2.HealthCheckResponse.SERVING)
            await checker.set("stage/detector", health_pb2.HealthCheckResponse.SERVING)
            servers.append(server)
            addresses.append(f"127.0.0.1:{port}")
        print(json.dumps({"event": "listening", "addresses": addresses}), flush=True)
        loop = asyncio.get_running_loop()
        line = await loop.run_in_executor(None, sys.stdin.readline)
        assert line.strip() == "stop", line
        stop.set()
        await asyncio.sleep(0.5)  # let every stream finish its last message
        print(json.dumps({"event": "sent", "sent": sent}), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)  # "exit" (or EOF)
        await asyncio.gather(*(s.stop(0.5) for s in servers))

    asyncio.run(main())


# ----- the console (this process) --------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def run_console(args: argparse.Namespace) -> dict[str, Any]:
    """Start the simulator and the console, measure, and return the results."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import psutil
    from PySide6.QtCore import QCoreApplication, QElapsedTimer, QObject, Qt, QTimer, Slot

    from app._console import ConsoleCore
    from app._records import NodeState
    from app.qt import QtConsole

    app = QCoreApplication.instance() or QCoreApplication([])
    workdir = Path(tempfile.mkdtemp(prefix="tierdeck-console-scale-"))
    db_path = workdir / "console.sqlite"
    sim = subprocess.Popen([sys.executable, __file__, "--simulate", "--nodes", str(args.nodes)], cwd=ROOT,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert sim.stdout is not None and sim.stdin is not None
    started = time.monotonic()
    addresses = json.loads(sim.stdout.readline())["addresses"]
    print(f"simulator: {len(addresses)} nodes listening after {time.monotonic() - started:.1f} s", flush=True)

    core = ConsoleCore(db_path, telemetry_interval_s=1.0 / args.hz).start()
    console = QtConsole(core, flush_hz=args.flush_hz)
    process = psutil.Process()

    class LagProbe(QObject):
        """Measures how late a 10 ms precise timer fires on the GUI thread."""

        def __init__(self) -> None:
            super().__init__()
            self.timer = QTimer(self)
            self.timer.setTimerType(Qt.TimerType.PreciseTimer)
            self.timer.setInterval(10)
            self.timer.timeout.connect(self.tick)
            self.clock = QElapsedTimer()
            self.last = 0
            self.recording = False
            self.lags: list[float] = []

        def start(self) -> None:
            self.clock.start()
            self.last = self.clock.nsecsElapsed()
            self.timer.start()

        @Slot()
        def tick(self) -> None:
            now = self.clock.nsecsElapsed()
            if self.recording:
                self.lags.append(max(0.0, (now - self.last) / 1e6 - 10.0))
            self.last = now

    probe = LagProbe()
    probe.start()

    def pump(seconds: float, until: Any = None) -> bool:
        """Run the Qt event loop for up to `seconds` (or until `until()` is true)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            app.processEvents()
            if until is not None and until():
                return True
            time.sleep(0.002)
        return until is None

    for address in addresses:
        console.fleet.add_address(address)
    connect_started = time.monotonic()
    online = pump(args.connect_timeout, lambda: console.fleet.rowCount() == args.nodes and all(
        n.state == NodeState.ONLINE for n in console.fleet.nodes()))
    connect_s = time.monotonic() - connect_started
    if not online:
        print("console: not every node came online; measuring anyway", flush=True)
    print(f"console: {sum(n.state == NodeState.ONLINE for n in console.fleet.nodes())}/{args.nodes} nodes online "
          f"after {connect_s:.1f} s", flush=True)
    pump(args.warmup)

    def db_bytes() -> int:
        return int(core.db.read(lambda d: d.execute("PRAGMA page_count").fetchone()[0]
                                * d.execute("PRAGMA page_size").fetchone()[0]).result(30))

    assert core.fleet is not None
    accepted0 = core.fleet.samples_accepted
    stats0 = core.db.stats()
    gui0, batches0 = console.telemetry.samples, console.telemetry.batches
    bytes0 = db_bytes()
    cpu0 = process.cpu_times()
    t0 = time.monotonic()
    probe.recording = True
    pump(args.duration)
    probe.recording = False
    elapsed = time.monotonic() - t0
    cpu1 = process.cpu_times()
    accepted1 = core.fleet.samples_accepted
    core.db.flush().result(60)
    stats1 = core.db.stats()
    bytes1 = db_bytes()
    gui1, batches1 = console.telemetry.samples, console.telemetry.batches
    states = [str(n.state) for n in console.fleet.nodes()]

    # Stop the streams, get what was sent, drain the console, count what was stored.
    sim.stdin.write("stop\n")
    sim.stdin.flush()
    sent = {}
    while True:
        line = sim.stdout.readline()
        if not line:
            break
        message = json.loads(line)
        if message.get("event") == "sent":
            sent = message["sent"]
            break
    total_sent = sum(sent.values())
    pump(30, lambda: core.fleet is not None and core.fleet.samples_accepted >= total_sent)
    pump(1.0 / args.flush_hz * 3 + 0.2)
    core.db.flush().result(60)
    stored = core.db.read(lambda d: d.execute("SELECT count(*) FROM telemetry WHERE stage = ''").fetchone()[0]
                          ).result(60)
    duplicates = core.db.read(lambda d: d.execute(
        "SELECT count(*) FROM (SELECT 1 FROM telemetry WHERE stage = '' GROUP BY node, boot, seq HAVING count(*) > 1)"
    ).fetchone()[0]).result(60)
    gui_received = console.telemetry.samples
    sim.stdin.write("exit\n")
    sim.stdin.flush()
    console.close()
    core.stop()
    sim.wait(30)

    lags = probe.lags
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    results: dict[str, Any] = {
        "nodes": args.nodes, "hz": args.hz, "duration_s": round(elapsed, 1), "flush_hz": args.flush_hz,
        "nodes_online": states.count("online"), "connect_s": round(connect_s, 2),
        "ingest_samples_per_s": (accepted1 - accepted0) / elapsed,
        "expected_samples_per_s": args.nodes * args.hz,
        "db_rows_per_s": (stats1["rows_committed"] - stats0["rows_committed"]) / elapsed,
        "db_commits_per_s": (stats1["commits"] - stats0["commits"]) / elapsed,
        "gui_samples_per_s": (gui1 - gui0) / elapsed,
        "gui_batches_per_s": (batches1 - batches0) / elapsed,
        "samples_sent": total_sent, "samples_stored": stored, "samples_lost": total_sent - stored,
        "samples_lost_gui": total_sent - gui_received, "duplicates_stored": duplicates,
        "db_dropped_rows": stats1["dropped_rows"], "db_errors": stats1["errors"],
        "gui_lag_ms": {"p50": percentile(lags, 50), "p95": percentile(lags, 95), "p99": percentile(lags, 99),
                       "max": max(lags) if lags else float("nan"), "ticks": len(lags)},
        "cpu_percent": 100.0 * cpu_s / elapsed,
        "db_growth_mb_per_hour": (bytes1 - bytes0) / elapsed * 3600 / 1e6,
        "db_path": str(db_path),
        "target_p99_lag_ms": TARGET_P99_LAG_MS,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    results["ok"] = results["samples_lost"] == 0 and results["gui_lag_ms"]["p99"] < TARGET_P99_LAG_MS
    if not args.keep_db:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        workdir.rmdir()
    return results


def main() -> int:
    """Run the benchmark (or, with --simulate, the simulator)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--hz", type=float, default=10.0, help="telemetry samples per second per node (0.1..10)")
    parser.add_argument("--duration", type=float, default=60.0, help="measurement window, seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after all nodes are online")
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    parser.add_argument("--flush-hz", type=float, default=20.0, help="telemetry batches to the GUI per second")
    parser.add_argument("--keep-db", action="store_true", help="keep the console database")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON")
    parser.add_argument("--simulate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.simulate:
        simulate(args.nodes, args.seed)
        return 0
    r = run_console(args)
    lag = r["gui_lag_ms"]
    rows = [
        ("nodes online / simulated", f"{r['nodes_online']} / {r['nodes']}"),
        ("telemetry rate asked", f"{r['hz']:g} Hz per node = {r['expected_samples_per_s']:,.0f} samples/s"),
        ("ingest rate (accepted)", f"{r['ingest_samples_per_s']:,.1f} samples/s"),
        ("SQLite rows committed", f"{r['db_rows_per_s']:,.0f} rows/s in {r['db_commits_per_s']:.1f} commits/s"),
        ("GUI telemetry batches", f"{r['gui_batches_per_s']:.1f} /s carrying {r['gui_samples_per_s']:,.0f} samples/s"),
        ("samples sent / stored", f"{r['samples_sent']:,} / {r['samples_stored']:,}"),
        ("samples lost (DB, GUI)", f"{r['samples_lost']}, {r['samples_lost_gui']}"),
        ("duplicates stored", r["duplicates_stored"]),
        ("GUI event-loop lag p50/p95/p99", f"{lag['p50']:.2f} / {lag['p95']:.2f} / {lag['p99']:.2f} ms "
                                           f"(max {lag['max']:.1f}, {lag['ticks']} ticks)"),
        ("console CPU", f"{r['cpu_percent']:.0f} % of one core"),
        ("DB growth", f"{r['db_growth_mb_per_hour']:,.0f} MB/hour"),
        ("window", f"{r['duration_s']} s after {r['connect_s']} s to connect"),
        ("targets (0 lost, p99 < 50 ms)", "met" if r["ok"] else "NOT met"),
    ]
    print_table(["console_scale", "result"], rows)
    write_json(args.json, r)
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
