"""Bounds on the request body, enforced while it streams in; and where an upload waits
for its route: in memory a preprocessing process can map (``InMemoryUploadParser``).

A declared ``Content-Length`` over the limit is refused before a byte of the body
is read. Otherwise the bytes are counted as the app receives them; the moment
the count crosses the limit (or the request's deadline passes while the body is
still arriving) the middleware answers 413 (or 504) itself and tells the app the
client is gone, so the multipart parser stops and closes its spooled files; what
the client still sends is never read (uvicorn stops reading from the socket and
closes it after the response).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import aclosing

from fastapi import Request, Response
from fastapi.routing import APIRoute
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, Headers
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from granite_speech_server.api.context import CONTEXT_KEY, RequestContext
from granite_speech_server.api.envelope import error_response
from granite_speech_server.errors import ServerError, UploadTooLarge
from granite_speech_server.preprocess.shared import UploadSpool

FORM_OVERHEAD_BYTES = 64 * 1024
"""Room for the multipart framing and the text fields beside a file of the full size."""

_DISCONNECT: Message = {"type": "http.disconnect"}

class InMemoryUploadParser(MultiPartParser):
    """Starlette's parser, spooling each file part into an ``UploadSpool`` (memory a
    preprocessing process maps) instead of a ``SpooledTemporaryFile``, which rolled
    anything over 1 MB to a temporary file written and read back a 64 KB chunk at a time
    through the thread pool: ~40 ms for a 19 MB WAV, before the first text of a stream.
    The body's limit (``UploadLimitMiddleware``) bounds it."""

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        upload = self._current_part.file
        if upload is not None:  # a file part: Starlette just made its spool
            self._files_to_close_on_error.remove(upload.file)
            upload.file.close()
            upload.file = UploadSpool()
            self._files_to_close_on_error.append(upload.file)


class InMemoryUploadRequest(Request):
    """A request whose multipart form is parsed by ``InMemoryUploadParser``.

    Starlette takes no parser from its callers: the routes that want their uploads
    spooled so get this request (``InMemoryUploadRoute``), and Starlette's parser is left
    as it is for every other app in the process."""

    async def _get_form(self, *, max_files: int | float = 1000, max_fields: int | float = 1000,
                        max_part_size: int = 1024 * 1024) -> FormData:
        content_type, _ = parse_options_header(self.headers.get("content-type"))
        if self._form is None and content_type == b"multipart/form-data":
            try:
                async with aclosing(self.stream()) as stream:
                    self._form = await InMemoryUploadParser(
                        self.headers, stream, max_files=max_files, max_fields=max_fields,
                        max_part_size=max_part_size).parse()
            except MultiPartException as exc:  # as Starlette answers it
                raise HTTPException(status_code=400, detail=exc.message) from exc
        return await super()._get_form(max_files=max_files, max_fields=max_fields,
                                       max_part_size=max_part_size)


class InMemoryUploadRoute(APIRoute):
    """A route whose uploads are spooled by ``InMemoryUploadParser`` (FastAPI's way to
    give a route its own request class: ``APIRouter(route_class=...)``)."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handle = super().get_route_handler()

        async def handle_in_memory(request: Request) -> Response:
            return await handle(InMemoryUploadRequest(request.scope, request.receive))

        return handle_in_memory


class UploadLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_upload_mb: float) -> None:
        self.app = app
        self.max_upload_mb = max_upload_mb
        self.max_body_bytes = int(max_upload_mb * 1_000_000) + FORM_OVERHEAD_BYTES

    def _too_large(self) -> UploadTooLarge:
        return UploadTooLarge(f"The upload exceeds the limit of {self.max_upload_mb:g} MB.")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await error_response(self._too_large())(scope, receive, send)
            return
        context: RequestContext | None = scope.get(CONTEXT_KEY)
        deadline = context.deadline if context else None
        received = 0
        body_done = refused = False
        response_started = False

        async def refuse(exc: ServerError) -> Message:
            nonlocal refused
            refused = True
            if not response_started:
                await error_response(exc)(scope, receive, send)
            return _DISCONNECT

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if refused:
                return _DISCONNECT
            if body_done or deadline is None:
                # After the body, receive() only waits for a disconnect (a streaming
                # response listens for one): the handlers own the deadline then.
                message = await receive()
            else:
                try:
                    async with asyncio.timeout_at(deadline.at):
                        message = await receive()
                except TimeoutError:
                    return await refuse(deadline.error())
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_body_bytes:
                    return await refuse(self._too_large())
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if refused:
                return  # the refusal was the response; the app's reply to "disconnect" isn't
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)
