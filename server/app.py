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
from starlette.routing import Match
from starlette.types import Scope

from granite_speech_server import lifecycle, memory
from granite_speech_server.api import audio, health, models, realtime
from granite_speech_server.api.auth import OPEN_PATHS, ApiKeys, AuthMiddleware
from granite_speech_server.api.context import RequestContextMiddleware
from granite_speech_server.api.envelope import error_response
from granite_speech_server.api.gate import GateMiddleware
from granite_speech_server.api.upload_limit import UploadLimitMiddleware
from granite_speech_server.asr.ctc import CtcHead
from granite_speech_server.asr.engine import SpeechEngine
from granite_speech_server.asr.language_id import LanguageIdentifier
from granite_speech_server.asr.vllm_engine import engine_on_cpu
from granite_speech_server.audio.silero import SileroNetwork
from granite_speech_server.config import Settings
from granite_speech_server.errors import HttpError, InvalidRequest, ServerError
from granite_speech_server.preprocess.pool import AUTO_WORKERS_MAX, PreprocessPool, usable_cores
from granite_speech_server.state import AppState

log = logging.getLogger(__name__)


def create_app(settings: Settings, engine: SpeechEngine | None = None) -> FastAPI:
    """Build the app. Without an engine, the app starts (and owns) one in the background,
    answering /health meanwhile and /ready only after a warm-up request succeeded.
    Reads the API key file, if any (OSError when it can't)."""
    state = AppState(settings=settings, engine=engine)
    keys = ApiKeys(settings.load_api_keys())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("API keys: %s", f"{len(keys)} configured" if keys.enabled else
                 "none (no authentication)")
        tasks = [asyncio.create_task(_bring_up(state, own_engine=engine is None)),
                 asyncio.create_task(lifecycle.watch_engine(state)),
                 asyncio.create_task(memory.trim_heap_periodically(memory.libc_malloc_trim()))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            if engine is None:
                await state.engine_start.abandon()
            if engine is None and state.engine is not None:
                state.engine.shutdown()
            if state.preprocess is not None:
                await asyncio.to_thread(state.preprocess.close)

    app = FastAPI(
        title="granite-speech-server",
        summary="OpenAI-compatible speech-to-text for IBM Granite speech models on vLLM.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.server = state
    for router in (audio.router, realtime.router, models.router, health.router):
        app.include_router(router)
    # Outermost last: context (id, deadline, access log, metrics) sees every answer,
    # including the refusals of auth (401), the gate (503/429) and the upload limit (413).
    app.add_middleware(UploadLimitMiddleware, max_upload_mb=settings.max_upload_mb)
    app.add_middleware(GateMiddleware, state=state)
    app.add_middleware(AuthMiddleware, keys=keys,
                       open_paths=frozenset() if settings.auth_all_endpoints else OPEN_PATHS)
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics,
                       endpoint_of=functools.partial(_route_path, app),
                       timeout_seconds=settings.request_timeout_seconds)
    _install_error_handlers(app)
    app.openapi = functools.partial(_openapi_without_422, app)
    return app


def _route_path(app: FastAPI, scope: Scope) -> str:
    """The path template of the route a request is for: a bounded metrics label."""
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return getattr(route, "path", "other")
    return "other"


def _openapi_without_422(app: FastAPI) -> dict:
    """FastAPI documents a 422 on every route; this server answers validation
    errors with OpenAI's 400 instead, so the 422s would be false documentation.
    The middlewares' answers are documented here, where the routes can't see them."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                             routes=app.routes)
        error = {"content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
        for route, path in schema["paths"].items():
            for operation in path.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                if route not in OPEN_PATHS:
                    responses.setdefault("401", {
                        **error, "description": "Missing or wrong API key (when keys are set)"})
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


async def _bring_up(state: AppState, *, own_engine: bool) -> None:
    try:
        if own_engine:
            await asyncio.to_thread(state.engine_start.run, state)
        workers = state.settings.preprocess_workers
        workers = min(usable_cores(), AUTO_WORKERS_MAX) if workers is None else workers
        if workers:
            state.preprocess = await asyncio.to_thread(
                PreprocessPool, workers, pin=not (own_engine and engine_on_cpu()),
                log_level=state.settings.log_level, log_format=state.settings.log_format)
            log.info("Preprocessing in %d processes", workers)
        state.vad = await asyncio.to_thread(SileroNetwork)
        state.language_id = await asyncio.to_thread(LanguageIdentifier.loaded)
        if state.settings.word_timestamps and state.ctc is None:
            state.ctc = await asyncio.to_thread(CtcHead.load, state.settings.model,
                                                getattr(state.engine, "dtype", None))
        # Readiness means the engine really answered, and the first client
        # doesn't pay for the first request.
        await state.transcriber.warm_up()
        memory.freeze_startup_heap()
        state.phase.started_serving()
        log.info("Ready: serving %s", ", ".join(state.settings.model_names))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - any start-up failure stops the server
        log.exception("Start-up failed: %s", exc)
        state.startup_error = exc
        state.exit_code = 1
        state.request_shutdown()


def _install_error_handlers(app: FastAPI) -> None:
    """Every error the framework or the app raises leaves in OpenAI's envelope
    (``granite_speech_server.errors.error_body``)."""

    @app.exception_handler(ServerError)
    async def server_error(request: Request, exc: ServerError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # OpenAI answers malformed requests with 400, never 422.
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg", exc))
        return error_response(InvalidRequest(message, param=param, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(HttpError(exc.status_code, str(exc.detail), headers=exc.headers))
    # Unhandled exceptions: RequestContextMiddleware logs them (with the request id)
    # and answers 500 in the envelope.
