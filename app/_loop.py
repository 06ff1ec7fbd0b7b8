"""The console's one background asyncio loop: every gRPC channel, discovery browser and deploy runs on it.

Event-loop story of the console (decided once, used everywhere):

* ONE asyncio loop runs in a dedicated daemon thread (`IoLoop`). It owns all network I/O: the
  `NodeClient` channels of the fleet, the discovery `Browser`, deployments. grpc.aio objects are
  bound to the loop that created them (grpc#32480), so they are only ever created inside it.
* SQLite has ONE writer thread (`app._db.Database`), fed through a queue; the loop never waits on it.
* The GUI thread never waits on the network or the disk: it hands work to the loop with
  `IoLoop.submit`/`call_soon` and gets results back through queued Qt signals delivered to bound
  `@Slot` methods of a receiver QObject (`app.qt`), never to lambdas (PySide6 >= 6.8 segfaulted on
  receiver-less cross-thread signals, PYSIDE-3124).
* Headless commands (`tierdeck deploy/status/export`) use the same core without Qt: they run
  the same coroutines on the same kind of loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(f"tierdeck.{__name__}")
T = TypeVar("T")


class IoLoop:
    """An asyncio event loop running forever in its own daemon thread."""

    def __init__(self, name: str = "tierdeck-io") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (RuntimeError before `start`)."""
        if self._loop is None:
            raise RuntimeError("IoLoop is not started")
        return self._loop

    @property
    def running(self) -> bool:
        """True between `start` and `stop`."""
        return self._loop is not None and self._loop.is_running()

    def in_loop_thread(self) -> bool:
        """True when called from the loop's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def start(self) -> IoLoop:
        """Start the thread and wait until its loop runs; returns self."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        self._ready.wait()
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(_log_exception)
        self._loop = loop
        loop.call_soon(self._ready.set)
        try:
            loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run a coroutine on the loop from any thread; returns a concurrent Future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_soon(self, fn: Callable[..., object], *args: object) -> None:
        """Call `fn(*args)` on the loop thread as soon as possible (thread-safe, never blocks)."""
        self.loop.call_soon_threadsafe(fn, *args)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop and wait for its result (never call this from the GUI thread)."""
        if self.in_loop_thread():
            raise RuntimeError("IoLoop.run called from the loop thread: would deadlock")
        return self.submit(coro).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop (pending tasks are cancelled) and join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._loop = None
        self._thread = None
        self._ready.clear()


def _log_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Log unhandled task errors instead of printing them to stderr."""
    exc = context.get("exception")
    log.error("io loop: %s", context.get("message", "unhandled error"), exc_info=exc)
