"""The gate in front of the audio endpoints: refuses work the server can't take now
(its phase refuses it: not ready, draining, engine dead; or it is at its concurrency
bound) before the body is read, and releases the request's admission when its
response is over, however it ended: completed, failed, timed out, or abandoned by a
client mid-stream."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from granite_speech_server.admission import Ticket
from granite_speech_server.api.envelope import error_response
from granite_speech_server.errors import ServerError, ShuttingDown, TooManyRequests
from granite_speech_server.state import AppState

GUARDED_PREFIX = "/v1/audio/"
TICKET_KEY = "granite_speech.admission"
"""Scope key of the request's admission ``Ticket``."""


class GateMiddleware:
    """Guards POST /v1/audio/*; other routes pass straight through."""

    def __init__(self, app: ASGIApp, *, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(GUARDED_PREFIX) \
                or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            ticket = self._admit()
        except ServerError as exc:
            await error_response(exc)(scope, receive, send)
            return
        scope[TICKET_KEY] = ticket

        async def send_and_release(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                # The work is over once the last byte is out; a client that sends its next
                # request at once must find the slot free, not wait for the app's clean-up.
                ticket.release()

        try:
            await self.app(scope, receive, send_and_release)
        finally:
            ticket.release()  # idempotent: covers responses that never ended

    def _admit(self) -> Ticket:
        rejections = self.state.metrics.rejections
        refusal = self.state.phase.refusal()
        if refusal is not None:
            # Not started and engine dead both count as not_ready, as dashboards read them.
            reason = "shutting_down" if isinstance(refusal, ShuttingDown) else "not_ready"
            rejections.labels(reason).inc()
            raise refusal
        try:
            return self.state.admission.admit()
        except TooManyRequests:
            rejections.labels("requests").inc()
            raise
