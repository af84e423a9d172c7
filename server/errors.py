"""Domain errors, each carrying what OpenAI's error envelope needs, and the one mapping
of any exception to that envelope.

Domain code raises these. ``error_body`` turns any exception into
``{"error": {"message", "type", "param", "code"}}``: the HTTP error responses
(``granite_speech_server.api.envelope``) and the error event of a stream that already
began (``granite_speech_server.formats.sse``) both send what it returns, so a failure
reads the same wherever it surfaces. Subclasses only set defaults, so raising one
reads like the problem it names.
"""

from __future__ import annotations

INTERNAL_ERROR_MESSAGE = "Internal server error."


class ServerError(Exception):
    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None
    param: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if param is not None:
            self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}


class InvalidRequest(ServerError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class AudioDecodeError(InvalidRequest):
    """The upload is not audio FFmpeg can decode (or has no audio stream)."""

    param = "file"
    code = "invalid_audio"


class EmptyAudio(InvalidRequest):
    """The upload decoded to zero samples, or was empty to begin with."""

    param = "file"
    code = "empty_audio"


class AudioTooShort(InvalidRequest):
    param = "file"
    code = "audio_too_short"


class AudioTooLong(InvalidRequest):
    param = "file"
    code = "audio_too_long"


class UnsupportedLanguage(InvalidRequest):
    param = "language"
    code = "unsupported_language"


class ModelNotFound(ServerError):
    status_code = 404
    error_type = "invalid_request_error"
    param = "model"
    code = "model_not_found"


class NotReady(ServerError):
    status_code = 503
    error_type = "server_error"
    code = "not_ready"


class EngineError(ServerError):
    """The inference engine failed or died while serving a request."""

    status_code = 503
    error_type = "server_error"
    code = "engine_unavailable"


class UploadTooLarge(ServerError):
    status_code = 413
    error_type = "invalid_request_error"
    param = "file"
    code = "upload_too_large"


class Unauthorized(ServerError):
    """No API key, or not one of the server's (OpenAI's shape for a bad key)."""

    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class Overloaded(ServerError):
    """Beyond an admission limit: refused at once (429 + Retry-After) rather than
    queued. As in OpenAI's 429s, ``type`` names the exhausted budget."""

    status_code = 429
    code = "overloaded"


class TooManyRequests(Overloaded):
    error_type = "requests"


class TooMuchAudioInFlight(Overloaded):
    error_type = "audio_seconds"


class ShuttingDown(ServerError):
    """The server is draining before it exits; another replica should take the request."""

    status_code = 503
    error_type = "server_error"
    code = "shutting_down"


class RequestTimeout(ServerError):
    """The request ran past ``--request-timeout-seconds``; its engine work was aborted."""

    status_code = 504
    error_type = "server_error"
    code = "request_timeout"


class HttpError(ServerError):
    """Starlette's own refusals (404 for an unknown path, 405 for a wrong method), in
    the envelope like every other error."""

    def __init__(self, status_code: int, message: str, *,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.status_code = status_code
        self.error_type = "invalid_request_error" if status_code < 500 else "server_error"


def as_server_error(exc: BaseException) -> ServerError:
    """The error as a client sees it: a ``ServerError`` as raised; anything else is a bug,
    answered as a bare 500 that tells nothing of the internals (the log has them)."""
    return exc if isinstance(exc, ServerError) else ServerError(INTERNAL_ERROR_MESSAGE)


def error_body(exc: BaseException) -> dict[str, dict[str, str | None]]:
    """OpenAI's error envelope for any exception."""
    error = as_server_error(exc)
    return {"error": {"message": error.message, "type": error.error_type,
                      "param": error.param, "code": error.code}}
