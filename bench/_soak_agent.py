"""`tierdeck-node` with a row trace, for bench/soak.py: which escalated row ids each process sent and ran.

The soak kills agents with SIGKILL, so its accounting cannot rest on counters a process keeps in memory.
This wrapper starts the real agent (runners.agent.main) after wrapping three methods, and appends one
line per event to `TIERDECK_SOAK_TRACE` (one write(2) per call on an O_APPEND descriptor: once write
returns, the line is in the kernel and survives a kill -9 of this process):

    <pid> E <row id>   a forwarder took this escalated row (Forwarder.new_row_ids, before the call)
    <pid> A <row id>   ... and the next hop answered it (live)
    <pid> P <row id>   ... or it was queued on disk / refused (answered provisional)
    <pid> C <row id>   ... or the request that escalated it was cancelled meanwhile (its caller gave up; the
                       forwarder still sends or queues the row)
    <pid> F <row id>   this process is about to run a received escalated row (SeenRows.fresh said: new)
    <pid> D <row id>   ... or answered it from memory (a re-sent row it had already run)
    <pid> R <row id>   ... and finished running it (SeenRows.remember: its answer is about to be sent)

Nothing else changes: the agent's code paths, timings and data dir are the real ones.
"""

from __future__ import annotations

import asyncio
import os
import sys
from contextvars import ContextVar
from typing import Any


def install(path: str) -> None:
    """Wrap the methods (raises AttributeError if the agent's internals no longer have them)."""
    from runners._forward import Forwarder
    from runners._seen import SeenRows

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    pid = os.getpid()

    def emit(kind: str, ids: list[str]) -> None:
        if ids:
            os.write(fd, "".join(f"{pid} {kind} {rid}\n" for rid in ids).encode())

    fresh, remember = SeenRows.fresh, SeenRows.remember
    new_row_ids, escalate = Forwarder.new_row_ids, Forwarder.async_escalate
    taken: ContextVar[list[str] | None] = ContextVar("soak_taken", default=None)

    def traced_fresh(self: SeenRows, row_ids: list[str], digests: list[bytes]) -> list[int]:
        out = fresh(self, row_ids, digests)
        run = set(out)
        emit("F", [rid for i, rid in enumerate(row_ids) if i in run])
        emit("D", [rid for i, rid in enumerate(row_ids) if i not in run])
        return out

    def traced_remember(self: SeenRows, row_ids: list[str], digests: list[bytes], fresh_rows: list[int],
                        *args: Any, **kwargs: Any) -> None:
        emit("R", [row_ids[i] for i in fresh_rows])
        remember(self, row_ids, digests, fresh_rows, *args, **kwargs)

    def traced_new_row_ids(self: Forwarder, *args: Any, **kwargs: Any) -> list[str]:
        ids = new_row_ids(self, *args, **kwargs)
        emit("E", ids)
        holder = taken.get()
        if holder is not None:
            holder.extend(ids)
        return ids

    async def traced_escalate(self: Forwarder, *args: Any, **kwargs: Any) -> Any:
        holder: list[str] = []
        token = taken.set(holder)  # async_escalate takes its ids synchronously, in this task's context
        try:
            answer = await escalate(self, *args, **kwargs)
        except asyncio.CancelledError:
            emit("C", holder)
            raise
        finally:
            taken.reset(token)
        emit("A" if answer is not None else "P", holder)
        return answer

    SeenRows.fresh = traced_fresh  # type: ignore[method-assign]
    SeenRows.remember = traced_remember  # type: ignore[method-assign,assignment]
    Forwarder.new_row_ids = traced_new_row_ids  # type: ignore[method-assign]
    Forwarder.async_escalate = traced_escalate  # type: ignore[method-assign]


def main() -> int:
    """Install the trace (when TIERDECK_SOAK_TRACE is set) and run the agent with this command line."""
    path = os.environ.get("TIERDECK_SOAK_TRACE", "")
    if path:
        install(path)
    from runners.agent import main as agent_main

    return agent_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
