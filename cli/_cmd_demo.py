"""`tierdeck demo`: a local fleet on loopback, sensor replays, and the console with ship-finder on the canvas.

    tierdeck demo [--deploy | --empty] [--device 4 --edge 2 --cloud 1] [--rate 20]
                  [--headless --duration S --screenshot PNG [--json OUT]]

Interactive: the window opens with the example pipeline on the canvas; deploy it with Deploy → Deploy
(Ctrl+D) or drag stages yourself; the sensor replays start once a deployment succeeds (`--deploy`
deploys at start). Headless: offscreen, deploys, runs for the duration after the sensors start, saves a
screenshot of the main window, prints a JSON summary, and exits 0 only if the whole fleet was found, the
deploy succeeded, inputs reached every tier and no child died unexpectedly (`unexpected_exits`).
Whichever way the console ends — window closed, Ctrl+C, a crash or SIGKILL — the agents and sensors go
with it (app/_demo_fleet.py). The demo is a fleet of its own: its agents advertise a fleet id made for
this run and the console shows and deploys to only those (another run's nodes on the host are left out).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from app._demo import PIPELINE, Demo, DemoConfig

log = logging.getLogger(f"tierdeck.{__name__}")


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of `tierdeck demo`."""
    parser.add_argument("--device", type=int, default=4, metavar="N", help="device-tier nodes (default 4)")
    parser.add_argument("--edge", type=int, default=2, metavar="N", help="edge-tier nodes (default 2)")
    parser.add_argument("--cloud", type=int, default=1, metavar="N", help="cloud-tier nodes (default 1)")
    parser.add_argument("--rate", type=float, default=20.0, metavar="N",
                        help="patches per second replayed into each device node (default 20)")
    parser.add_argument("--burst-every", type=float, default=30.0, metavar="S",
                        help="seconds between bursts of vessel traffic (default 30)")
    parser.add_argument("--pipeline", type=Path, default=PIPELINE, metavar="FILE",
                        help="the pipeline put on the canvas (default: ship-finder)")
    parser.add_argument("--empty", action="store_true",
                        help="start with an empty canvas (build the cascade yourself from the palette)")
    parser.add_argument("--no-mdns", action="store_true",
                        help="add the demo's own nodes by address instead of finding them by mDNS (other fleets "
                             "advertising on this machine stay out of the console)")
    parser.add_argument("--probe", type=Path, default=None, metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--deploy", action="store_true", help="deploy the pipeline as soon as the fleet is online")
    parser.add_argument("--headless", action="store_true",
                        help="no window: offscreen, deploy, run --duration seconds, write --screenshot and --json")
    parser.add_argument("--duration", type=float, default=20.0, metavar="S",
                        help="with --headless: seconds to run after the sensors start (default 20)")
    parser.add_argument("--screenshot", type=Path, metavar="PNG",
                        help="save a screenshot of the main window (the dashboard) at the end")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the summary here")
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="where the nodes keep their data and logs (default: a new temp dir)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")


def write_probe(path: Path, window: object, demo: Demo, console: object) -> None:
    """The window's probe (widgets/_probe.py) plus the deployment and per-tier traffic, written atomically."""
    from widgets._probe import probe

    data = probe(window)  # type: ignore[arg-type]
    result = demo.deploy_result
    data["deploy"] = None if result is None else {"ok": result.ok, "status": result.status, "reason": result.reason,
                                                  "id": result.deployment_id}
    data["sensors"] = demo.sensors_started
    tiers: dict[str, dict[str, float]] = {}
    names = {n.node_id: (n.name, n.tier) for n in console.fleet.nodes()}  # type: ignore[attr-defined]
    for node_id, sample in list(demo.latest.items()):
        _name, tier = names.get(node_id, ("", ""))
        row = tiers.setdefault(tier, {"inferences_per_s": 0.0, "escalated_per_s": 0.0, "inferences_total": 0.0})
        for st in sample.stages:
            row["inferences_per_s"] += st.inferences_per_s
            row["escalated_per_s"] += st.escalated_per_s
            row["inferences_total"] += st.inferences_total
    data["tiers"] = tiers
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    """Start everything, run the window (or the headless script), stop everything; returns the exit code."""
    from cli._common import missing_console_extra

    problem = missing_console_extra("demo")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    from cli._display import window_problem

    problem = None if args.headless else window_problem("demo")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.headless:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from PySide6.QtCore import QEvent, QTimer
    from PySide6.QtWidgets import QApplication

    from app.core import bundled_models, make_enroller, make_policy_pusher
    from app.qt import QtConsole
    from widgets import MainWindow, apply_theme

    demo = Demo(DemoConfig(device=args.device, edge=args.edge, cloud=args.cloud, rate=args.rate,
                           burst_every=args.burst_every, pipeline=args.pipeline, base_dir=args.data_dir,
                           mdns=not args.no_mdns))
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setApplicationName("tierdeck demo")
    app.setOrganizationName("tierdeck")
    apply_theme(app)
    print(f"tierdeck demo: starting {demo.expected_nodes} nodes (data and logs in {demo.fleet.base_dir})",
          file=sys.stderr, flush=True)
    demo.start()  # main thread: the children die with this thread
    console = QtConsole(demo.core)
    window = MainWindow(console, palette_models=bundled_models(), enroller=make_enroller(demo.core),
                        policy_pusher=make_policy_pusher(demo.core))
    if not args.empty:
        window.open_pipeline(str(args.pipeline))
    window.show()
    window.resize(1366, 768)
    state = {"deploying": False, "exit": 0, "sensors_at": 0.0, "started": time.monotonic()}

    def deployed(result: object) -> None:
        demo.deploy_result = result  # type: ignore[assignment]
        state["deploying"] = False
        plan = console.deployments.last_plan
        if getattr(result, "ok", False) and plan is not None:
            demo.pipeline = plan.pipeline   # the sensors feed what was deployed (maybe built on the canvas)
        if getattr(result, "ok", False) and not demo.sensors_started:
            demo.start_sensors()  # GUI thread is the main thread: the sensors die with it too
            state["sensors_at"] = time.monotonic()
        elif not getattr(result, "ok", False):
            print(f"tierdeck demo: deploy failed: {getattr(result, 'reason', result)}", file=sys.stderr, flush=True)

    console.deployments.deployment_finished.connect(deployed)
    console.deployments.plan_ready.connect(
        lambda plan: console.deployments.apply(plan) if state["deploying"] else None)

    def finish(code: int) -> None:
        timer.stop()
        if args.screenshot:
            window.show_dashboard()  # the live plots; give the frame timer a few frames to draw them
            def shoot() -> None:
                window.grab().save(str(args.screenshot))
                end(code)
            QTimer.singleShot(700, shoot)
        else:
            end(code)

    def end(code: int) -> None:
        summary = demo.summary()
        text = json.dumps(summary, indent=2)
        print(text, flush=True)
        if args.json:
            args.json.write_text(text)
        state["exit"] = code if code else (0 if summary["ok"] else 1)
        window.close()
        app.quit()

    def tick() -> None:
        """Twice a second: deploy once the fleet is online (--deploy/--headless), end a headless run."""
        nodes = console.fleet.nodes()
        online = sum(1 for n in nodes if str(n.state) == "online")
        waited = time.monotonic() - float(state["started"])
        wants_deploy = args.deploy or args.headless
        if wants_deploy and demo.deploy_result is None and not state["deploying"] and online >= demo.expected_nodes:
            state["deploying"] = True
            console.deployments.plan(demo.pipeline)
        if args.headless:
            if state["sensors_at"] and time.monotonic() - float(state["sensors_at"]) >= args.duration:
                finish(0)
            elif demo.deploy_result is not None and not getattr(demo.deploy_result, "ok", False):
                finish(1)
            elif waited > 180 + args.duration:
                print("tierdeck demo: the fleet did not come up in time", file=sys.stderr)
                finish(1)

    timer = QTimer(window)
    timer.timeout.connect(tick)
    timer.start(500)
    if args.probe:
        probe_timer = QTimer(window)
        probe_timer.timeout.connect(lambda: write_probe(args.probe, window, demo, console))
        probe_timer.start(250)
    # Ctrl+C in the terminal closes the window (Python only sees signals while it runs: the timer lets it).
    signal.signal(signal.SIGINT, lambda *_: window.close())
    signal.signal(signal.SIGTERM, lambda *_: window.close())
    try:
        code = app.exec()
        window.deleteLater()
        QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    finally:
        console.close()
        demo.stop()
    return int(state["exit"] or code)

