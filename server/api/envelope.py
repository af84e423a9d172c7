"""An error as an HTTP response: OpenAI's envelope (``granite_speech_server.errors``)
with the error's status and headers.

Used by the app's exception handlers and by the ASGI middlewares (auth, admission,
upload limit, request context), which answer before FastAPI's handlers are reachable.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from granite_speech_server.errors import as_server_error, error_body


def error_response(exc: BaseException) -> JSONResponse:
    error = as_server_error(exc)
    return JSONResponse(error_body(error), status_code=error.status_code, headers=error.headers)


async def answer_error(exc: BaseException, scope: Scope, receive: Receive, send: Send) -> None:
    """``error_response`` sent. A WebSocket is refused before its upgrade: with that HTTP
    answer where the server supports it (uvicorn does), else by a close before the
    handshake (the client sees a 403)."""
    if scope["type"] == "websocket" and "websocket.http.response" not in scope.get(
            "extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    await error_response(exc)(scope, receive, send)
