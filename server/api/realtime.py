"""OpenAI's Realtime sessions over a WebSocket: transcription at
``GET /v1/realtime?intent=transcription``, translation at ``GET /v1/realtime/translations``
(``granite_speech_server.realtime`` speaks the protocols).

Refusals come before the upgrade, as HTTP answers in OpenAI's envelope: a wrong key (the
auth middleware), a server that isn't serving (503), the session limit (429), an intent
or model this server doesn't have (400, 404). Once open, the socket carries JSON events
both ways until the client closes it, goes silent for the idle timeout, or the server
stops.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Query, WebSocket

from granite_speech_server.api.audio_form import check_model
from granite_speech_server.api.envelope import answer_error
from granite_speech_server.errors import InvalidRequest, ServerError, TooManyRequests
from granite_speech_server.phase import Phase
from granite_speech_server.realtime.live import Accounting, LiveSession
from granite_speech_server.realtime.transcription import TranscriptionSession
from granite_speech_server.realtime.translation import TranslationSession
from granite_speech_server.state import AppState

router = APIRouter(tags=["realtime"])

NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
"""The close code of a session ended by the server's drain."""
POLICY_VIOLATION = 1008
"""The close code of a session ended by the server over the client's conduct (idle)."""


@router.websocket("/v1/realtime")
async def transcription_session(
        websocket: WebSocket,
        intent: str | None = Query(None, description="`transcription`."),
        model: str | None = Query(None, description="A served model name.")) -> None:
    if intent != "transcription":
        refusal = InvalidRequest("This server's realtime sessions are transcription sessions "
                                 "(connect with ?intent=transcription) and translation "
                                 "sessions (/v1/realtime/translations).", param="intent")
        await answer_error(refusal, websocket.scope, websocket.receive, websocket.send)
        return
    await run_session(websocket, TranscriptionSession, model)


@router.websocket("/v1/realtime/translations")
async def translation_session(
        websocket: WebSocket,
        model: str | None = Query(None, description="A served model name.")) -> None:
    await run_session(websocket, TranslationSession, model)


async def run_session(websocket: WebSocket, kind: type[LiveSession], model: str | None) -> None:
    state: AppState = websocket.app.state.server
    try:
        session = open_session(state, websocket, kind, model)
    except ServerError as exc:
        await answer_error(exc, websocket.scope, websocket.receive, websocket.send)
        return
    await websocket.accept()
    state.realtime_sessions.add(session)
    client_left = True
    try:
        await session.start()
        client_left = await serve(websocket, session, state)
    finally:
        state.realtime_sessions.discard(session)
        await session.close(wait=not client_left)


def open_session(state: AppState, websocket: WebSocket, kind: type[LiveSession],
                 model: str | None) -> LiveSession:
    if (refusal := state.phase.refusal()) is not None:
        raise refusal
    served = state.settings.model_names
    if model is not None:
        check_model(served, model)
    limit = state.settings.realtime_max_sessions
    if limit and len(state.realtime_sessions) >= limit:
        raise TooManyRequests(f"This server has its limit of {limit} realtime sessions open.",
                              headers={"Retry-After": "1"})
    lock = asyncio.Lock()

    async def send(event: dict[str, Any]) -> None:
        async with lock:  # the session's work and its reader send from their own tasks
            await websocket.send_text(json.dumps(event, ensure_ascii=False))

    return kind(transcriber=state.transcriber, network=state.vad, send=send,
                accounting=Accounting(state.admission, state.metrics),
                served_models=served, model=model or served[0],
                max_turn_seconds=state.settings.max_segment_seconds,
                max_buffer_seconds=state.settings.realtime_max_buffer_seconds)


async def serve(websocket: WebSocket, session: LiveSession, state: AppState) -> bool:
    """Reads and handles the client's events until the socket ends. True when the client
    went away (its work is then cancelled), False when the server closed it: at the
    client's ``session.close``, after the idle timeout, or draining on SIGTERM (the turn in
    progress is finished and sent first)."""
    idle_timeout = state.settings.realtime_idle_timeout_seconds
    draining = asyncio.create_task(until_draining(state))
    try:
        while True:
            receiving = asyncio.create_task(websocket.receive())
            await asyncio.wait({receiving, draining}, timeout=idle_timeout or None,
                               return_when=asyncio.FIRST_COMPLETED)
            if not receiving.done():
                receiving.cancel()
                if draining.done():
                    await session.finish()
                    await websocket.close(GOING_AWAY, "the server is shutting down")
                else:
                    await session.error(InvalidRequest(
                        f"No event for {idle_timeout:g} s: the session is closed.",
                        code="session_idle_timeout"))
                    await websocket.close(POLICY_VIOLATION, "idle timeout")
                return False
            message = receiving.result()
            if message["type"] == "websocket.disconnect":
                return True
            await handle_message(session, message)
            if session.closed:  # the client's session.close
                await websocket.close(NORMAL_CLOSURE)
                return False
    finally:
        draining.cancel()


async def handle_message(session: LiveSession, message: dict[str, Any]) -> None:
    if message.get("text") is None:
        await session.error(InvalidRequest("Events are JSON text frames.", code="invalid_event"))
        return
    try:
        event = json.loads(message["text"])
    except json.JSONDecodeError as exc:
        await session.error(InvalidRequest(f"An event is not JSON: {exc}.", code="invalid_json"))
        return
    await session.handle(event)


async def until_draining(state: AppState) -> None:
    """Returns once SIGTERM put the server in its drain (checked every 100 ms: the signal
    handler sets the phase outside any coroutine)."""
    while state.phase.current is not Phase.DRAINING:
        await asyncio.sleep(0.1)
