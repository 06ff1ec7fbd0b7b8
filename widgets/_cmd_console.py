"""`tierdeck console`: the operations console (GUI) on the console core.

    tierdeck console [--db PATH] [--fleet FILE] [--node HOST:PORT ...] [--interface IP ...]
                     [--pipeline FILE] [--wall] [--tls [--fleet-dir DIR]]

Enrolment and live policy changes reach the widgets as plain callables made here from the core
(`make_enroller`, `make_policy_pusher`), so the widgets stay free of network code.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import logging
import sys
from pathlib import Path

from app._cmd_common import add_fleet_id_option
from app.core import ConsoleCore
from app.fleet_ca import Member
from app.pipeline_file import Rule

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of `tierdeck console`."""
    from app._cmd_common import add_db_option

    add_db_option(parser)
    parser.add_argument("--fleet", metavar="FILE", help="fleet file: one HOST:PORT [TIER] [NAME] per line, or JSON")
    parser.add_argument("--node", action="append", default=[], metavar="HOST:PORT",
                        help="a node by address (repeatable)")
    parser.add_argument("--interface", action="append", default=[], metavar="IP",
                        help="browse mDNS on this IPv4 interface (repeatable); without --fleet/--node/--interface "
                             "every IPv4 interface is browsed")
    add_fleet_id_option(parser)
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


def bundled_models(extra: list[Path] | None = None) -> list[Path]:
    """The demo models shipped in resources/models, plus the ONNX files of `extra` folders."""
    import resources.models

    folders = [Path(resources.models.__file__).resolve().parent, *(extra or [])]
    return sorted({p.resolve() for folder in folders for p in folder.glob("*.onnx")})


def make_enroller(core: ConsoleCore, fleet_dir: Path | None = None):  # type: ignore[no-untyped-def]
    """`(address, code) -> Future[message]` for the Enroll dialog: ConsoleCore.enroll, worded for the operator."""
    def enroll(address: str, code: str) -> concurrent.futures.Future[str]:
        message: concurrent.futures.Future[str] = concurrent.futures.Future()

        def done(future: concurrent.futures.Future[Member]) -> None:
            exc = future.exception()
            if exc is not None:
                message.set_exception(exc)
                return
            member = future.result()
            message.set_result(f"Enrolled {member.name or member.node_id} ({member.node_id[:8]}) at {address}: it now "
                               "accepts only mutual TLS with this fleet's certificates.")
        core.enroll(address, code, fleet_dir).add_done_callback(done)
        return message

    return enroll


def make_policy_pusher(core: ConsoleCore):  # type: ignore[no-untyped-def]
    """`(stage id, rule) -> Future[{node name: error or ''}]` for the what-if panel: ConsoleCore.update_policy."""
    def push(stage_id: str, rule: Rule) -> concurrent.futures.Future[dict[str, str]]:
        return core.update_policy(stage_id, rule=rule)

    return push


def run(args: argparse.Namespace) -> int:
    """Start the core, show the main window, run until it closes; returns the exit code."""
    from app._cmd_common import interfaces_for, revocations_for, setup_logging, tls_for

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
