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
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType

import uvicorn

from server.state import AppState

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.2


async def watch_engine(state: AppState) -> None:
    """Runs for the app's lifetime: notices the engine dying once it served."""
    while True:
        await asyncio.sleep(WATCH_INTERVAL_S)
        engine = state.engine
        served = state.ready or state.draining
        if engine is not None and served and not state.engine_failed and not engine.alive:
            state.engine_failed = True
            state.fail("The inference engine died")


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
        if self.state.draining or self.should_exit:
            log.warning("Second %s: stopping without waiting for in-flight requests.",
                        signal.Signals(sig).name)
            self.should_exit = self.force_exit = True
            return
        settings = self.state.settings
        log.info("%s: draining. Readiness is 503 and new audio requests are refused; the "
                 "listener closes in %g s, then in-flight requests (%d) get %g s to finish.",
                 signal.Signals(sig).name, settings.shutdown_delay_seconds,
                 self.state.admission.requests, settings.shutdown_grace_seconds)
        self.state.draining = True
        self.stop(settings.shutdown_delay_seconds)

    async def on_tick(self, counter: int) -> bool:
        if self._stop_at is not None and time.monotonic() >= self._stop_at:
            self.should_exit = True
        return await super().on_tick(counter)
