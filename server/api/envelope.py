"""OpenAI's error envelope: the one place a ``ServerError`` becomes a response.

Used by the app's exception handlers and by the ASGI middlewares (auth, admission,
upload limit), which answer before FastAPI's handlers are reachable.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from granite_speech_server.errors import ServerError


def error_body(message: str, error_type: str, param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(exc: ServerError) -> JSONResponse:
    return JSONResponse(error_body(exc.message, exc.error_type, exc.param, exc.code),
                        status_code=exc.status_code, headers=exc.headers)
