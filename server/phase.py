"""The server's phase: the one answer to "may this request be served, and if not, why?"

The admission gate, ``/ready``, the transcriber dependency and the engine watcher all
read it, so they can't disagree. Transitions are methods, called by whoever witnesses
them: the start-up (``started_serving``), the SIGTERM handler (``drain``) and the engine
watcher (``engine_died``); see ``granite_speech_server.lifecycle`` for the process around it.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from granite_speech_server.admission import RETRY_AFTER_S
from granite_speech_server.errors import EngineError, NotReady, ServerError, ShuttingDown


class Phase(Enum):
    """Each value is what ``/ready`` answers in that phase."""

    STARTING = "starting"
    """The engine is being built and warmed up. A start-up that fails stays here while
    the server stops: it never served."""
    READY = "ready"
    DRAINING = "draining"
    """Shutting down: new audio requests are refused, admitted ones finish."""
    ENGINE_DEAD = "engine_dead"
    """The engine died after it served; the server stops (exit code 1)."""


class ServerPhase:
    """The phase, and the engine's liveness it depends on."""

    def __init__(self, engine_alive: Callable[[], bool]) -> None:
        self._phase = Phase.STARTING
        self._engine_alive = engine_alive

    @property
    def current(self) -> Phase:
        """The phase, with an engine that died while ready seen at once: the watcher
        acts on it only at its next look."""
        if self._phase is Phase.READY and not self._engine_alive():
            return Phase.ENGINE_DEAD
        return self._phase

    def refusal(self, *, admitted: bool = False) -> ServerError | None:
        """Why an audio request is refused now (the error to raise), or None to serve it.
        ``admitted``: the gate let it in already; a drain that began since lets it
        finish, only a dead engine stops it."""
        phase = self.current
        if phase is Phase.DRAINING and not admitted:
            return ShuttingDown("The server is shutting down; retry on another replica.",
                                headers={"Retry-After": RETRY_AFTER_S})
        if phase is Phase.STARTING:
            return NotReady("The model is not ready to serve requests yet; retry shortly.",
                            headers={"Retry-After": "5"})
        if phase is Phase.ENGINE_DEAD or not self._engine_alive():
            return EngineError("The inference engine is down; the server is restarting.")
        return None

    def started_serving(self) -> None:
        """The engine answered its warm-up. A drain that began meanwhile stays a drain."""
        if self._phase is Phase.STARTING:
            self._phase = Phase.READY

    def drain(self) -> bool:
        """Stop taking new audio requests. True when the server was serving, so load
        balancers need the shutdown delay to see it leave; otherwise it can stop at once."""
        was_serving = self._phase is Phase.READY
        self._phase = Phase.DRAINING
        return was_serving

    def engine_died(self) -> bool:
        """The engine was found dead. True when that ends the server: it had served.
        Before (a start-up's warm-up fails on its own) or once already dead, False.
        A drain stays a drain: it refuses new work already, and the server is on its
        way out either way (the exit code tells the engine died)."""
        if self._phase is Phase.READY:
            self._phase = Phase.ENGINE_DEAD
            return True
        return self._phase is Phase.DRAINING
