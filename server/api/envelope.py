"""An error as an HTTP response: OpenAI's envelope (``granite_speech_server.errors``)
with the error's status and headers.

Used by the app's exception handlers and by the ASGI middlewares (auth, admission,
upload limit, request context), which answer before FastAPI's handlers are reachable.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from granite_speech_server.errors import as_server_error, error_body


def error_response(exc: BaseException) -> JSONResponse:
    error = as_server_error(exc)
    return JSONResponse(error_body(error), status_code=error.status_code, headers=error.headers)
