"""What the running app knows about itself, shared by its routes and middlewares."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from granite_speech_server.admission import Admission
from granite_speech_server.asr.ctc import CtcHead
from granite_speech_server.asr.engine import SpeechEngine
from granite_speech_server.asr.language_id import LanguageIdentifier
from granite_speech_server.asr.transcriber import Transcriber
from granite_speech_server.audio.segment import SpeechPlanner
from granite_speech_server.audio.silero import SileroNetwork
from granite_speech_server.config import Settings
from granite_speech_server.lifecycle import EngineStart
from granite_speech_server.metrics import Metrics
from granite_speech_server.phase import ServerPhase
from granite_speech_server.preprocess.pool import PreprocessPool

log = logging.getLogger(__name__)


@dataclass
class AppState:
    settings: Settings
    engine: SpeechEngine | None = None
    ctc: CtcHead | None = None
    """The encoder's CTC head beside vLLM, for word timestamps (--word-timestamps)."""
    vad: SileroNetwork | None = None
    """The speech detector's network, loaded at start-up."""
    preprocess: PreprocessPool | None = None
    """The processes that decode and plan uploads, started at start-up (None: threads)."""
    language_id: LanguageIdentifier | None = None
    """Tells a transcript's language (``languages`` in responses), loaded at start-up."""
    startup_error: BaseException | None = None
    exit_code: int = 0
    """What the process exits with once the HTTP server stopped."""
    request_shutdown: Callable[..., None] = field(default=lambda after_s=0.0: None)
    """Asks the HTTP server to stop, optionally ``after_s`` seconds from now (the
    listener stays open meanwhile); the CLI points it at uvicorn."""
    realtime_sessions: set[Any] = field(default_factory=set)
    """The realtime sessions open now (``granite_speech_server.realtime.live``)."""
    engine_start: EngineStart = field(default_factory=EngineStart)
    """The start-up of an engine the app owns (``granite_speech_server.lifecycle``)."""
    phase: ServerPhase = field(init=False)
    """Starting, ready, draining or engine dead: whether requests are served, and why not."""
    admission: Admission = field(init=False)
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        self.phase = ServerPhase(engine_alive=self._engine_alive)
        self.admission = Admission(self.settings.max_concurrent_requests,
                                   self.settings.max_inflight_audio_seconds)
        self.metrics = Metrics(engine_load=self._engine_load,
                               inflight_requests=lambda: self.admission.requests,
                               inflight_audio_seconds=lambda: self.admission.audio_seconds,
                               realtime_sessions=lambda: len(self.realtime_sessions))

    @property
    def transcriber(self) -> Transcriber | None:
        if self.engine is None or self.vad is None:
            return None
        return Transcriber(self.engine, self.settings, SpeechPlanner(self.vad), ctc=self.ctc,
                           language_id=self.language_id)

    def fail(self, reason: str, exit_code: int = 1) -> None:
        """Stop the server with ``exit_code``, after the shutdown delay (readiness,
        which the phase already makes 503, fails first)."""
        log.error("%s; shutting down (exit code %d) so the process is restarted.",
                  reason, exit_code)
        self.exit_code = exit_code
        self.request_shutdown(self.settings.shutdown_delay_seconds)

    def _engine_alive(self) -> bool:
        return self.engine is not None and self.engine.alive

    def _engine_load(self) -> tuple[int, int] | None:
        engine = self.engine
        return engine.load() if engine is not None and engine.alive else None
