"""`tierdeck console`: the operations console (GUI) on the console core.

    tierdeck console [--db PATH] [--fleet FILE] [--node HOST:PORT ...] [--interface IP ...]
                     [--pipeline FILE] [--wall] [--tls [--fleet-dir DIR]]

Enrolment and live policy changes reach the widgets as plain callables made by the core
(`app.core.make_enroller`, `make_policy_pusher`), so the widgets stay free of network code. Needs the
console extra (PySide6, pyqtgraph); without it the command says how to install it and exits 2.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from pathlib import Path

from app.core import ConsoleCore, bundled_models, make_enroller, make_policy_pusher
from cli._common import add_node_sources

log = logging.getLogger(f"tierdeck.{__name__}")


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of `tierdeck console`."""
    from cli._common import add_db_option

    add_db_option(parser)
    add_node_sources(parser)
    parser.add_argument("--pipeline", type=Path, metavar="FILE", help="open this pipeline file on the canvas")
    parser.add_argument("--wall", action="store_true", help="start in wall mode (full screen dashboard, large type)")
    parser.add_argument("--telemetry-interval", type=float, default=1.0, metavar="S",
                        help="telemetry interval asked of every node, seconds (0.1..10; default 1)")
    parser.add_argument("--tls", action="store_true",
                        help="dial nodes with mutual TLS using the fleet CA (see `tierdeck fleet`); default insecure")
    parser.add_argument("--fleet-dir", type=Path, default=None, metavar="DIR",
                        help="where the fleet CA lives (enrolment, --tls; default: the user data dir)")
    parser.add_argument("--models", type=Path, action="append", default=[], metavar="DIR",
                        help="also list the ONNX models of this folder in the stage palette (repeatable)")
    parser.add_argument("--exit-after", type=float, default=0.0, metavar="S", help=argparse.SUPPRESS)
    parser.add_argument("--screenshot", type=Path, default=None, metavar="PNG", help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")


def run(args: argparse.Namespace) -> int:
    """Start the core, show the main window, run until it closes; returns the exit code."""
    from cli._common import interfaces_for, missing_console_extra, revocations_for, setup_logging, tls_for

    problem = missing_console_extra("console")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    from cli._display import window_problem

    problem = window_problem("console")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    setup_logging(args.verbose)
    from PySide6.QtCore import QEvent, QTimer
    from PySide6.QtWidgets import QApplication

    from app.qt import QtConsole
    from widgets import MainWindow, apply_theme

    try:
        tls = tls_for(args)
    except ValueError as exc:
        print(f"tierdeck console: {exc}", file=sys.stderr)
        return 2
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setApplicationName("tierdeck console")
    app.setOrganizationName("tierdeck")
    apply_theme(app)
    for address in args.node:
        if ":" not in address:
            print(f"tierdeck console: --node {address}: expected HOST:PORT", file=sys.stderr)
            return 2
    core = ConsoleCore(args.db, telemetry_interval_s=args.telemetry_interval, interfaces=interfaces_for(args),
                       fleet_file=args.fleet, tls=tls, fleet_id=args.fleet_id,
                       revocations=revocations_for(args)).start()
    console = QtConsole(core)
    try:
        window = MainWindow(console, palette_models=bundled_models(args.models),
                            enroller=make_enroller(core, args.fleet_dir),
                            policy_pusher=make_policy_pusher(core))
        for address in args.node:
            console.fleet.add_address(address)
        if args.pipeline:
            window.open_pipeline(str(args.pipeline))
        window.show()
        # Everything built so far lives as long as the window: keep it out of the collector's full scans,
        # which would otherwise walk it every few seconds and stall a frame.
        gc.collect()
        gc.freeze()
        if args.wall:
            window.enter_wall()
        if args.exit_after > 0:
            def finish() -> None:
                if args.screenshot:
                    window.grab().save(str(args.screenshot))
                window.close()
                app.quit()
            QTimer.singleShot(int(args.exit_after * 1000), finish)
        code = app.exec()
        # The window goes before the models it observes (PySide deletes in no guaranteed order otherwise).
        window.deleteLater()
        QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    finally:
        console.close()
        core.stop()
    return int(code)
