"""create_app(settings, engine=None): the FastAPI application and its lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.api import audio, health, models
from server.asr.engine import SpeechEngine
from server.config import Settings
from server.errors import ServerError
from server.state import AppState

log = logging.getLogger(__name__)


def create_app(settings: Settings, engine: SpeechEngine | None = None) -> FastAPI:
    """Build the app. Without an engine, the app starts (and owns) one in the background,
    answering /health meanwhile and /ready only after a warm-up request succeeded."""
    state = AppState(settings=settings, engine=engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(_bring_up(state, own_engine=engine is None))
        try:
            yield
        finally:
            task.cancel()
            if engine is None and state.engine is not None:
                state.engine.shutdown()

    app = FastAPI(
        title="granite-speech-server",
        summary="OpenAI-compatible speech-to-text for IBM Granite speech models on vLLM.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.server = state
    for router in (audio.router, models.router, health.router):
        app.include_router(router)
    _install_error_handlers(app)
    app.openapi = functools.partial(_openapi_without_422, app)
    return app


def _openapi_without_422(app: FastAPI) -> dict:
    """FastAPI documents a 422 on every route; this server answers validation
    errors with OpenAI's 400 instead, so the 422s would be false documentation."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                             routes=app.routes)
        for path in schema["paths"].values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


async def _bring_up(state: AppState, *, own_engine: bool) -> None:
    try:
        if own_engine:
            state.engine = await asyncio.to_thread(SpeechEngine.start, state.settings)
        # Readiness means the engine really answered, and the first client
        # doesn't pay for the first request.
        await state.transcriber.warm_up()
        state.ready = True
        log.info("Ready: serving %s", ", ".join(state.settings.model_names))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - any start-up failure stops the server
        log.exception("Start-up failed: %s", exc)
        state.startup_error = exc
        state.request_shutdown()


def error_body(status: int, message: str, error_type: str, param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServerError)
    async def server_error(request: Request, exc: ServerError) -> JSONResponse:
        body = error_body(exc.status_code, exc.message, exc.error_type, exc.param, exc.code)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # OpenAI answers malformed requests with 400, never 422.
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg", exc))
        return JSONResponse(error_body(400, message, "invalid_request_error", param,
                                       "invalid_value"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(exc.status_code, str(exc.detail), error_type),
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("Unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, "Internal server error.", "server_error"),
                            status_code=500)
