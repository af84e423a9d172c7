"""What the running app knows about itself, shared by its routes and middlewares."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from granite_speech_server.admission import Admission
from granite_speech_server.asr.ctc import CtcHead
from granite_speech_server.asr.engine import SpeechEngine
from granite_speech_server.asr.transcriber import Transcriber
from granite_speech_server.audio.segment import SpeechPlanner
from granite_speech_server.audio.silero import SileroNetwork
from granite_speech_server.config import Settings
from granite_speech_server.lifecycle import EngineStart
from granite_speech_server.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class AppState:
    settings: Settings
    engine: SpeechEngine | None = None
    ctc: CtcHead | None = None
    """The encoder's CTC head beside vLLM, for word timestamps (--word-timestamps)."""
    vad: SileroNetwork | None = None
    """The speech detector's network, loaded at start-up."""
    ready: bool = False
    """True once the engine answered a warm-up request; false again once it died."""
    draining: bool = False
    """Shutting down: readiness is false and new audio requests are refused."""
    engine_failed: bool = False
    """The engine died; the process is on its way out (see ``granite_speech_server.lifecycle``)."""
    startup_error: BaseException | None = None
    exit_code: int = 0
    """What the process exits with once the HTTP server stopped."""
    request_shutdown: Callable[..., None] = field(default=lambda after_s=0.0: None)
    """Asks the HTTP server to stop, optionally ``after_s`` seconds from now (the
    listener stays open meanwhile); the CLI points it at uvicorn."""
    engine_start: EngineStart = field(default_factory=EngineStart)
    """The start-up of an engine the app owns (``granite_speech_server.lifecycle``)."""
    admission: Admission = field(init=False)
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        self.admission = Admission(self.settings.max_concurrent_requests,
                                   self.settings.max_inflight_audio_seconds)
        self.metrics = Metrics(engine_load=self._engine_load,
                               inflight_requests=lambda: self.admission.requests,
                               inflight_audio_seconds=lambda: self.admission.audio_seconds)

    @property
    def engine_alive(self) -> bool:
        return self.engine is not None and self.engine.alive

    @property
    def engine_dead(self) -> bool:
        """The engine died after serving: the watcher (``granite_speech_server.lifecycle``) has acted
        on it, or it is dead and the watcher hasn't looked yet."""
        return self.engine_failed or (self.ready and not self.engine_alive)

    @property
    def accepting(self) -> bool:
        """Ready for new requests: warmed up, engine alive, not draining."""
        return self.ready and not self.draining and self.engine_alive

    @property
    def transcriber(self) -> Transcriber | None:
        if self.engine is None or self.vad is None:
            return None
        return Transcriber(self.engine, self.settings, SpeechPlanner(self.vad), ctc=self.ctc)

    def fail(self, reason: str, exit_code: int = 1) -> None:
        """Not ready any more, and never again: stop the server with ``exit_code``,
        after the shutdown delay (readiness answers 503 meanwhile)."""
        log.error("%s; shutting down (exit code %d) so the process is restarted.",
                  reason, exit_code)
        self.ready = False
        self.exit_code = exit_code
        self.request_shutdown(self.settings.shutdown_delay_seconds)

    def _engine_load(self) -> tuple[int, int] | None:
        engine = self.engine
        return engine.load() if engine is not None and engine.alive else None
