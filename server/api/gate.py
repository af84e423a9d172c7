"""The gate in front of the audio endpoints: refuses work the server can't take now
(draining, not ready, at its concurrency bound) before the body is read, and
releases the request's admission when its response is over, however it ended:
completed, failed, timed out, or abandoned by a client mid-stream."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from granite_speech_server.admission import RETRY_AFTER_S, Ticket
from granite_speech_server.api.envelope import error_response
from granite_speech_server.errors import EngineError, NotReady, ServerError, ShuttingDown, TooManyRequests
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
        state, rejections = self.state, self.state.metrics.rejections
        if state.draining:
            rejections.labels("shutting_down").inc()
            raise ShuttingDown("The server is shutting down; retry on another replica.",
                               headers={"Retry-After": RETRY_AFTER_S})
        if state.engine_dead:
            rejections.labels("not_ready").inc()
            raise EngineError("The inference engine is down; the server is restarting.")
        if not state.accepting:
            rejections.labels("not_ready").inc()
            raise NotReady("The model is not ready to serve requests yet; retry shortly.",
                           headers={"Retry-After": "5"})
        try:
            return state.admission.admit()
        except TooManyRequests:
            rejections.labels("requests").inc()
            raise
