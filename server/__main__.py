"""CLI: ``granite-speech-server`` / ``python -m server``."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic_settings import CliApp

from server.app import create_app
from server.asr.engine import ModelUnavailable, check_granite_speech
from server.config import Settings


def main(argv: list[str] | None = None) -> None:
    settings = CliApp.run(Settings, cli_args=sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_granite_speech(settings.model)
    except ModelUnavailable as exc:
        sys.exit(f"granite-speech-server: {exc}")

    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port,
                                           log_level=settings.log_level))
    state = app.state.server
    state.request_shutdown = lambda: setattr(server, "should_exit", True)
    server.run()
    if state.startup_error is not None:
        sys.exit(f"granite-speech-server: start-up failed: {state.startup_error}")


if __name__ == "__main__":
    main()
