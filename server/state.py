"""What the running app knows about itself, shared by its routes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from server.asr.engine import SpeechEngine
from server.asr.transcriber import Transcriber
from server.config import Settings


@dataclass
class AppState:
    settings: Settings
    engine: SpeechEngine | None = None
    ready: bool = False
    """True once the engine answered a warm-up request."""
    startup_error: BaseException | None = None
    request_shutdown: Callable[[], None] = field(default=lambda: None)
    """Asks the HTTP server to stop; the CLI points it at uvicorn."""

    @property
    def transcriber(self) -> Transcriber | None:
        if self.engine is None:
            return None
        return Transcriber(self.engine, self.settings)
