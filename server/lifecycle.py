"""The process's life around the app: draining on SIGTERM, exiting when the engine dies.

Kubernetes-style termination. The first SIGTERM (or SIGINT) makes readiness
false and the gate refuse new audio requests with 503, for
``--shutdown-delay-seconds`` while the listener stays open, so load balancers
see the pod leave before connections start being refused. Then uvicorn closes
the listener (new connections are refused), gives in-flight requests
``--shutdown-grace-seconds`` to finish, runs the app's shutdown (the engine
stops) and the process exits 0. A second signal skips the waiting.

If the engine dies after it served, this process can't bring it back (vLLM's
engine core is a child process whose state is lost): readiness turns false, the
server stops (after the same delay, so probes see readiness fail first), and the
process exits 1, so the orchestrator restarts it.

A SIGTERM before the engine is ready stops at once: no load balancer sends traffic to a
pod that never was ready, so there is nothing to drain. vLLM builds its engine in a
thread that can't be interrupted (it spawns the engine core and waits for its
hand-shake, ~45 s on a small CPU), and the process can't exit while that thread runs:
``EngineStart.abandon`` ends the engine's processes, which ends vLLM's wait at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from granite_speech_server.asr.vllm_engine import VllmEngine
from granite_speech_server.phase import Phase

if TYPE_CHECKING:
    from granite_speech_server.state import AppState

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.2
ABANDON_POLL_S = 0.1
ABANDON_TIMEOUT_S = 15.0


class StartAbandoned(RuntimeError):
    """The server was asked to stop before the engine's start-up began."""


class EngineStart:
    """The engine's start-up, run in a worker thread, which a shutdown can cut short."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phase = "idle"  # idle -> running -> done, or idle -> abandoned
        self._done = threading.Event()
        self._children_before: set[int] = set()
        """The process's children before the start-up: not the start-up's to end."""

    def run(self, state: AppState) -> None:
        """In a worker thread: build the engine and leave it on ``state`` (where the
        app's shutdown finds it, even when the coroutine that waited was cancelled)."""
        with self._lock:
            if self._phase == "abandoned":
                raise StartAbandoned("stopped before the engine's start-up began")
            self._children_before = {child.pid for child in multiprocessing.active_children()}
            self._phase = "running"
        try:
            state.engine = VllmEngine.start(state.settings)
        finally:
            with self._lock:
                self._phase = "done"
            self._done.set()

    async def abandon(self, timeout_s: float = ABANDON_TIMEOUT_S) -> None:
        """Make a start-up still under way end now: kill the children it started (vLLM's
        engine core) and theirs (its workers) until the thread returns; vLLM then raises
        in the thread ("Engine core initialization failed"). SIGTERM wouldn't do: vLLM's
        engine core only notes it while it is being built, and goes on building."""
        with self._lock:
            if self._phase == "idle":
                self._phase = "abandoned"
            running = self._phase == "running"
        if not running:
            return
        log.info("Stopping during start-up: ending the engine's processes.")
        deadline = time.monotonic() + timeout_s
        while not self._done.is_set() and time.monotonic() < deadline:
            _kill_children(exclude=self._children_before)
            await asyncio.sleep(ABANDON_POLL_S)
        if not self._done.is_set():
            log.warning("The engine's start-up did not end within %g s.", timeout_s)


def _kill_children(exclude: set[int]) -> None:
    """SIGKILL this process's multiprocessing children not in ``exclude``, and all their
    descendants (the workers first, so none outlives its engine core): nothing in them is
    worth saving before the engine ever served."""
    import psutil  # a vLLM dependency

    for child in multiprocessing.active_children():
        if child.pid in exclude:
            continue
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(child.pid)
            for descendant in process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    descendant.kill()
            process.kill()


async def watch_engine(state: AppState) -> None:
    """Runs for the app's lifetime, or until the engine died after it served: then the
    server stops, and there is nothing left to watch."""
    while True:
        await asyncio.sleep(WATCH_INTERVAL_S)
        if stop_if_engine_died(state):
            return


def stop_if_engine_died(state: AppState) -> bool:
    """One look of the watcher: when the engine died once it served, tell the phase
    and stop the server with exit code 1. True when it did."""
    engine = state.engine
    if engine is None or engine.alive or not state.phase.engine_died():
        return False
    state.fail("The inference engine died")
    return True


class GracefulServer(uvicorn.Server):
    """uvicorn with a drain phase before its own graceful shutdown, and the process's
    exit code left to the app (uvicorn would re-raise the signal after shutting down,
    and the process would die of SIGTERM rather than exit 0)."""

    def __init__(self, config: uvicorn.Config, state: AppState) -> None:
        super().__init__(config)
        self.state = state
        self._stop_at: float | None = None
        state.request_shutdown = self.stop

    def stop(self, after_s: float = 0.0) -> None:
        stop_at = time.monotonic() + after_s
        self._stop_at = stop_at if self._stop_at is None else min(self._stop_at, stop_at)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.state.phase.current is Phase.DRAINING or self.should_exit:
            log.warning("Second %s: stopping without waiting for in-flight requests.",
                        signal.Signals(sig).name)
            self.should_exit = self.force_exit = True
            return
        settings = self.state.settings
        if not self.state.phase.drain():
            # Not serving (starting, or the engine died): no load balancer routes here,
            # and no request can finish.
            log.info("%s while not serving: stopping now.", signal.Signals(sig).name)
            self.stop()
            return
        log.info("%s: draining. Readiness is 503 and new audio requests are refused; the "
                 "listener closes in %g s, then in-flight requests (%d) get %g s to finish.",
                 signal.Signals(sig).name, settings.shutdown_delay_seconds,
                 self.state.admission.requests, settings.shutdown_grace_seconds)
        self.stop(settings.shutdown_delay_seconds)

    async def on_tick(self, counter: int) -> bool:
        now = time.monotonic()
        if self._stop_at is not None and now >= self._stop_at \
                and not self._realtime_sessions_draining(now):
            self.should_exit = True
        return await super().on_tick(counter)

    def _realtime_sessions_draining(self, now: float) -> bool:
        """uvicorn's shutdown cuts every WebSocket at once (1012): while realtime sessions
        finish their turns in the drain (then close with 1001), within the grace period,
        it waits. HTTP requests are uvicorn's to wait for, after."""
        grace = self.state.settings.shutdown_grace_seconds
        return (self.state.phase.current is Phase.DRAINING and bool(self.state.realtime_sessions)
                and now < self._stop_at + grace)
