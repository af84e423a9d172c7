"""CLI: ``granite-speech-server`` / ``python -m granite_speech_server``.

Exit codes: 0 after a requested shutdown (SIGTERM/SIGINT); 1 when start-up
failed or the engine died (the orchestrator should restart the process).
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable

import uvicorn
from pydantic_settings import CliApp

from granite_speech_server.app import create_app
from granite_speech_server.asr.checkpoint import ModelUnavailable, check_granite_speech
from granite_speech_server.asr.engine import SpeechEngine
from granite_speech_server.config import Settings
from granite_speech_server.lifecycle import GracefulServer
from granite_speech_server.logs import configure_logging


def main(argv: list[str] | None = None,
         make_engine: Callable[[Settings], SpeechEngine] | None = None) -> None:
    """Parse the command line and serve until told to stop. ``make_engine`` replaces vLLM
    (``loadtest.instant_server`` serves with a scripted engine)."""
    settings = CliApp.run(Settings, cli_args=sys.argv[1:] if argv is None else argv)
    configure_logging(settings.log_level, settings.log_format)
    import torch

    # Each request's CPU work (decoding, the VAD, features) runs in a thread of its own,
    # many at once: torch's intra-op threads would only spin against them and the engine.
    torch.set_num_threads(1)
    try:
        check_granite_speech(settings.model)
    except ModelUnavailable as exc:
        sys.exit(model_unavailable_line(exc))
    try:
        app = create_app(settings, make_engine(settings) if make_engine else None)
    except OSError as exc:
        sys.exit(f"granite-speech-server: can't read the API key file: {exc}")

    state = app.state.server
    server = GracefulServer(
        uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                       # Logging is configured above; the app writes its own access log.
                       log_config=None, access_log=False,
                       timeout_graceful_shutdown=settings.shutdown_grace_seconds),
        state)
    server.run()
    # The interpreter's last garbage collection scans every object left, which took
    # seconds after a start-up cut short (vLLM's and torch's objects, never frozen as a
    # ready server's are): the process exits without that scan.
    gc.freeze()
    if state.startup_error is not None:
        sys.exit(f"granite-speech-server: start-up failed: {state.startup_error}")
    sys.exit(state.exit_code)


def model_unavailable_line(exc: ModelUnavailable) -> str:
    """One line (a hub error's text may span several): what is missing, and how to name
    or mount a model, including in a container, where a read-only root, no network and
    an empty /cache are the usual reasons."""
    line = " ".join(str(exc).split())
    if exc.__cause__ is not None:  # not found, as opposed to found but not Granite speech
        line += (" In a container, mount a checkpoint read-only and name the mount point "
                 "(docker run -v /path/to/model:/models/granite:ro "
                 "-e GRANITE_SPEECH_MODEL=/models/granite), or a Hugging Face cache at "
                 "/cache/huggingface.")
    return f"granite-speech-server: {line}"


if __name__ == "__main__":
    main()
