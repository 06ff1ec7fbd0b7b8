"""UI frames: the full console main window, offscreen, with many live nodes; frame times and CPU.

    python bench/ui_frames.py [--nodes 50] [--hz 10] [--duration 40] [--idle 15] [--json OUT]

The nodes are the telemetry simulator of bench/console_scale.py (one process, one grpc.aio server
per virtual node, real NodeControl protocol), started as a child process. This process is the
console: the real ConsoleCore and QtConsole, and the whole MainWindow (fleet panel, pipeline
canvas with the ship-finder pipeline, what-if, dashboard, event log) at 1366×768 on the offscreen
platform with the console's theme.

* Live: for `--duration` seconds (half on the pipeline tab, half on the dashboard), every frame of
  the frame clock is timed — the slots that turn ring buffers into curves and cards, plus the scene
  updates and repaints they cause (`FrameClock.measure`). Frame time p50/p95/max and the console
  process's CPU % (100 % = one core) over the window.
* Idle: the simulator is paused (SIGSTOP) for `--idle` seconds — a quiet fleet: every node still
  online (the console's telemetry watchdog is set beyond the window), no samples arriving — and the
  console's CPU % is measured on the dashboard, the heaviest view.

Targets: frame p95 < 30 ms, idle CPU < 3 %. Prints a table, writes JSON with --json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from bench._common import print_table, write_json  # noqa: E402
from bench.console_scale import percentile  # noqa: E402

SIMULATOR = ROOT / "bench" / "console_scale.py"
TARGET_P95_MS = 30.0
TARGET_IDLE_CPU = 3.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the simulator and the console window, measure, return the results."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import psutil
    from PySide6.QtCore import QEventLoop, QSettings, QTimer
    from PySide6.QtWidgets import QApplication

    from app.core import ConsoleCore, NodeState, bundled_models
    from app.qt import QtConsole
    from widgets import MainWindow, apply_theme

    app = QApplication.instance() or QApplication([])
    apply_theme(app)
    workdir = Path(tempfile.mkdtemp(prefix="tierdeck-ui-frames-"))
    sim = subprocess.Popen([sys.executable, str(SIMULATOR), "--simulate", "--nodes", str(args.nodes)], cwd=ROOT,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert sim.stdout is not None and sim.stdin is not None
    addresses = json.loads(sim.stdout.readline())["addresses"]
    print(f"simulator: {len(addresses)} nodes listening", flush=True)
    interval = 1.0 / args.hz
    # The watchdog would degrade nodes that stop streaming; the idle phase pauses the whole fleet on purpose.
    overdue_factor = max(3.0, (args.idle + 30) / interval)
    core = ConsoleCore(workdir / "console.sqlite", telemetry_interval_s=interval,
                       fleet_options={"overdue_factor": overdue_factor}).start()
    console = QtConsole(core, flush_hz=args.flush_hz)
    window = MainWindow(console, settings=QSettings(str(workdir / "settings.ini"), QSettings.Format.IniFormat),
                        palette_models=bundled_models(), frame_hz=args.frame_hz)
    window.resize(1366, 768)
    window.show()
    clock = window.clock
    clock.measure = True
    process = psutil.Process()
    stopped = False

    def pump(seconds: float, until: Any = None) -> bool:
        """Run the Qt event loop for `seconds` (or until `until()`), sleeping between events like app.exec()."""
        loop = QEventLoop()
        QTimer.singleShot(int(seconds * 1000), loop.quit)
        poll = QTimer()
        if until is not None:
            poll.setInterval(50)
            poll.timeout.connect(lambda: loop.quit() if until() else None)
            poll.start()
        loop.exec()
        poll.stop()
        return until is None or bool(until())

    try:
        pipeline = ROOT / "resources" / "pipelines" / "ship-finder.pipeline.json"
        if pipeline.exists():
            window.open_pipeline(str(pipeline))
        for address in addresses:
            console.fleet.add_address(address)
        started = time.monotonic()
        online = pump(args.connect_timeout, lambda: console.fleet.rowCount() == args.nodes and all(
            n.state == NodeState.ONLINE for n in console.fleet.nodes()))
        connect_s = time.monotonic() - started
        print(f"console: {sum(n.state == NodeState.ONLINE for n in console.fleet.nodes())}/{args.nodes} online "
              f"after {connect_s:.1f} s{'' if online else ' (measuring anyway)'}", flush=True)
        window.show_pipeline()
        gc.collect()
        gc.freeze()   # as `tierdeck console` does once its window is up
        pump(args.warmup)

        # ----- live: half on the pipeline tab, half on the dashboard -------------------------------------
        phases: dict[str, list[float]] = {}
        samples0 = console.telemetry.samples
        cpu0, t0 = process.cpu_times(), time.monotonic()
        for name, show in (("pipeline", window.show_pipeline), ("dashboard", window.show_dashboard)):
            show()
            pump(0.5)
            first = len(clock.frame_times_ms)
            pump(args.duration / 2)
            phases[name] = list(clock.frame_times_ms)[first:]
            window.grab().save(str(workdir / f"{name}-live.png"))
        cpu1, t1 = process.cpu_times(), time.monotonic()
        live_cpu = 100.0 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / (t1 - t0)
        samples_per_s = (console.telemetry.samples - samples0) / (t1 - t0)

        # ----- idle: the fleet falls quiet (simulator paused), the console keeps its window open ---------
        sim.send_signal(signal.SIGSTOP)
        stopped = True
        pump(2.0)   # let the last queued samples land
        idle_samples0 = console.telemetry.samples
        frames0 = clock.frames
        cpu0, t0 = process.cpu_times(), time.monotonic()
        pump(args.idle)
        cpu1, t1 = process.cpu_times(), time.monotonic()
        idle_cpu = 100.0 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / (t1 - t0)
        idle_frames = clock.frames - frames0
        idle_samples = console.telemetry.samples - idle_samples0
        still_online = sum(n.state == NodeState.ONLINE for n in console.fleet.nodes())
    finally:
        if stopped:
            sim.send_signal(signal.SIGCONT)
        try:
            sim.stdin.write("stop\nexit\n")
            sim.stdin.flush()
        except OSError:
            pass
        window.close()
        window.deleteLater()
        from PySide6.QtCore import QEvent

        QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        console.close()
        core.stop()
        try:
            sim.wait(30)
        except subprocess.TimeoutExpired:
            sim.kill()

    frames = phases["pipeline"] + phases["dashboard"]

    def stats(values: list[float]) -> dict[str, float]:
        return {"p50": percentile(values, 50), "p95": percentile(values, 95), "max": max(values, default=float("nan")),
                "mean": statistics.fmean(values) if values else float("nan"), "frames": len(values)}

    results: dict[str, Any] = {
        "nodes": args.nodes, "hz": args.hz, "frame_hz": args.frame_hz, "flush_hz": args.flush_hz,
        "window": "1366x768 offscreen", "connect_s": round(connect_s, 2),
        "nodes_online": still_online, "samples_per_s": samples_per_s,
        "frame_ms": stats(frames), "frame_ms_pipeline": stats(phases["pipeline"]),
        "frame_ms_dashboard": stats(phases["dashboard"]),
        "live_cpu_percent": live_cpu, "idle_cpu_percent": idle_cpu, "idle_seconds": args.idle,
        "idle_frames": idle_frames, "idle_samples": idle_samples,
        "targets": {"frame_p95_ms": TARGET_P95_MS, "idle_cpu_percent": TARGET_IDLE_CPU},
        "screenshots": [str(workdir / "pipeline-live.png"), str(workdir / "dashboard-live.png")],
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    results["ok"] = results["frame_ms"]["p95"] < TARGET_P95_MS and idle_cpu < TARGET_IDLE_CPU
    return results


def main() -> int:
    """Run the benchmark, print the table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--hz", type=float, default=10.0, help="telemetry samples per second per node (0.1..10)")
    parser.add_argument("--duration", type=float, default=40.0, help="live measurement, seconds (half per tab)")
    parser.add_argument("--idle", type=float, default=15.0, help="quiet-fleet measurement, seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after every node is online")
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    parser.add_argument("--frame-hz", type=float, default=15.0, help="the console's frame clock")
    parser.add_argument("--flush-hz", type=float, default=20.0, help="telemetry batches to the GUI per second")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON")
    args = parser.parse_args()
    r = run(args)
    f, fp, fd = r["frame_ms"], r["frame_ms_pipeline"], r["frame_ms_dashboard"]
    rows = [
        ("nodes online / simulated", f"{r['nodes_online']} / {r['nodes']} (after {r['connect_s']} s)"),
        ("telemetry", f"{r['hz']:g} Hz per node → {r['samples_per_s']:,.0f} samples/s into the window"),
        ("frame clock", f"{r['frame_hz']:g} Hz, frames only when samples arrived"),
        ("frame time p50 / p95 / max", f"{f['p50']:.1f} / {f['p95']:.1f} / {f['max']:.1f} ms ({f['frames']} frames)"),
        ("  pipeline tab p50 / p95", f"{fp['p50']:.1f} / {fp['p95']:.1f} ms ({fp['frames']} frames)"),
        ("  dashboard tab p50 / p95", f"{fd['p50']:.1f} / {fd['p95']:.1f} ms ({fd['frames']} frames)"),
        ("console CPU, live", f"{r['live_cpu_percent']:.0f} % of one core"),
        ("console CPU, fleet quiet", f"{r['idle_cpu_percent']:.1f} % of one core ({r['idle_frames']} frames, "
                                     f"{r['idle_samples']} samples in {r['idle_seconds']:g} s)"),
        ("targets (p95 < 30 ms, idle < 3 %)", "met" if r["ok"] else "NOT met"),
    ]
    print_table(["ui_frames", "result"], rows)
    write_json(args.json, r)
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
