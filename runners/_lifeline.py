"""A supervised child's lifeline to its parent: it arms its own parent-death signal when it starts.

Why not `preexec_fn`: a parent that holds busy gRPC channels and forks through `preexec_fn` can crash the
child between fork and exec (grpc/grpc#43055: gRPC's fork handler restarts its poller in the child,
SIGABRT/SIGSEGV). Without `preexec_fn` CPython spawns with vfork/posix_spawn and no fork handler runs,
so the parent only puts its pid in the child's environment (`child_env`) and the child, first thing in
its entry point, calls `arm_from_env()`: PR_SET_PDEATHSIG=SIGTERM, then checks that its parent is still
the one that started it — if the parent died before the signal was armed, the child exits at once.
Linux only; elsewhere arming is a no-op and the supervisor's process group is the only net.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping

PARENT_ENV = "TIERDECK_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def child_env(base: Mapping[str, str] | None = None, parent_pid: int | None = None) -> dict[str, str]:
    """An environment for a child that must die with this process (or with `parent_pid`)."""
    env = dict(os.environ if base is None else base)
    env[PARENT_ENV] = str(os.getpid() if parent_pid is None else parent_pid)
    return env


def _set_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def arm_from_env(sig: int = signal.SIGTERM) -> bool:
    """If started by a supervisor (TIERDECK_PARENT_PID set): die with it; SystemExit if it is already gone.

    Returns True when the signal was armed. The variable is removed so this process's own children do not
    inherit an expectation about a parent that is not theirs.
    """
    expected = os.environ.pop(PARENT_ENV, "")
    if not expected:
        return False
    armed = _set_pdeathsig(sig)
    try:
        parent = int(expected)
    except ValueError:
        return armed
    # Checked after arming: a parent that died before prctl() would otherwise never signal us.
    if os.getppid() != parent:
        raise SystemExit(f"{os.path.basename(sys.argv[0]) or 'tierdeck'}: the process that started this one "
                         f"(pid {parent}) is gone; exiting")
    return armed
