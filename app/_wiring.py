"""Console wiring that is not view code: the callables the widgets are handed, and the palette's model files.

The widgets stay free of network and file code: enrolment and live policy changes reach them as plain
callables made here from the core.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from app._console import ConsoleCore
from app.pipeline_file import Rule

if TYPE_CHECKING:
    from app.fleet_ca import Member  # cryptography: only when enrolling

Enroller = Callable[[str, str], "concurrent.futures.Future[str]"]
PolicyPusher = Callable[[str, Rule], "concurrent.futures.Future[dict[str, str]]"]


def bundled_models(extra: list[Path] | None = None) -> list[Path]:
    """The demo models shipped in resources/models, plus the ONNX files of `extra` folders."""
    import resources.models

    folders = [Path(resources.models.__file__).resolve().parent, *(extra or [])]
    return sorted({p.resolve() for folder in folders for p in folder.glob("*.onnx")})


def make_enroller(core: ConsoleCore, fleet_dir: Path | None = None) -> Enroller:
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


def make_policy_pusher(core: ConsoleCore) -> PolicyPusher:
    """`(stage id, rule) -> Future[{node name: error or ''}]` for the what-if panel: ConsoleCore.update_policy."""
    def push(stage_id: str, rule: Rule) -> concurrent.futures.Future[dict[str, str]]:
        return core.update_policy(stage_id, rule=rule)

    return push
