"""Per-request context: request id, deadline, access log and request metrics.

The outermost middleware. It names the request (the client's ``X-Request-ID``
when it is a sane token, else a fresh one) and returns the id in the response
header; it sets the deadline the handlers and the upload limit enforce; and
when the response is over it writes one access-log line and records the
request metrics, whoever answered: a handler, or a middleware that refused
the request (401, 413, 429, 503).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from granite_speech_server.api.envelope import error_response
from granite_speech_server.api.deadline import Deadline
from granite_speech_server.logs import ACCESS_LOGGER, request_id_var
from granite_speech_server.metrics import Metrics

log = logging.getLogger(__name__)
access_log = logging.getLogger(ACCESS_LOGGER)

CONTEXT_KEY = "granite_speech.context"
REQUEST_ID_HEADER = "x-request-id"
CLIENT_CLOSED = 499
"""Status recorded (nginx's convention) when the client left before the response ended."""

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


@dataclass
class RequestContext:
    request_id: str
    endpoint: str
    """The route's path template (a bounded label), or ``other``."""
    started: float
    """Arrival, in the event loop's clock."""
    deadline: Deadline | None = None
    response_format: str | None = None
    audio_seconds: float | None = None


def request_context(request: Request) -> RequestContext:
    return request.scope[CONTEXT_KEY]


def incoming_request_id(headers: Headers) -> str:
    """The client's id when it is a plain token (no spaces or control characters that
    could forge log lines), else a new one."""
    value = headers.get(REQUEST_ID_HEADER, "")
    return value if _SANE_REQUEST_ID.fullmatch(value) else uuid.uuid4().hex


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, endpoint_of: Callable[[Scope], str],
                 timeout_seconds: float) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoint_of = endpoint_of
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = asyncio.get_running_loop().time()
        request_id = incoming_request_id(Headers(scope=scope))
        context = RequestContext(request_id, self.endpoint_of(scope), started)
        if self.timeout_seconds:
            context.deadline = Deadline(started + self.timeout_seconds, self.timeout_seconds)
        scope[CONTEXT_KEY] = context
        token = request_id_var.set(request_id)
        status: int | None = None
        recorded = False

        def record(final_status: int) -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                self._record(scope, context, final_status,
                             asyncio.get_running_loop().time() - started)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                # Recorded as the last byte goes out, before the app's clean-up (closing
                # the upload's files): a client that asks /metrics next sees its request.
                record(status)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # noqa: BLE001 - the envelope, not a bare 500, and logged with the id
            log.exception("Unhandled error on %s %s", scope["method"], scope["path"])
            if status is None:
                await error_response(exc)(scope, receive, send_with_id)
        finally:
            # Not recorded yet: the response never ended (the client went away mid-way),
            # or never began (the task was cancelled).
            record(CLIENT_CLOSED if status is not None else 500)
            request_id_var.reset(token)

    def _record(self, scope: Scope, context: RequestContext, status: int, elapsed: float) -> None:
        self.metrics.observe_request(context.endpoint, scope["method"], status,
                                     context.response_format, elapsed)
        client = scope.get("client")
        access_log.info(
            "%s %s %d", scope["method"], scope["path"], status,
            extra={
                "request_id": context.request_id,
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_s": round(elapsed, 4),
                "audio_seconds": None if context.audio_seconds is None
                else round(context.audio_seconds, 3),
                "response_format": context.response_format,
                "client": client[0] if client else None,
            },
        )
