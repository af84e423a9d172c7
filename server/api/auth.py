"""API keys: ``Authorization: Bearer <key>``, as the OpenAI SDKs send them.

Checked in a middleware, before the body is read: an unauthenticated client
can't make the server receive, spool or decode an upload. Keys are compared
as SHA-256 digests with ``hmac.compare_digest`` against every key, without
stopping at a match, so the time taken says nothing about any key, not even
its length. Keys never reach a log line or an error message.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from granite_speech_server.api.envelope import answer_error
from granite_speech_server.errors import Unauthorized

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics", "/docs", "/docs/oauth2-redirect",
                        "/redoc", "/openapi.json"})
"""Open to probes, scrapers and browsers unless ``--auth-all-endpoints``."""


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


class ApiKeys:
    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(key) for key in keys if key)

    def __len__(self) -> int:
        return len(self._digests)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None) -> None:
        """Raise Unauthorized unless the header carries one of the keys."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized(
                "You didn't provide an API key. Send it in an Authorization header using "
                "Bearer auth (Authorization: Bearer YOUR_KEY).",
                headers={"WWW-Authenticate": "Bearer"})
        candidate = _digest(token)
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(digest, candidate)
        if not matched:
            raise Unauthorized("Incorrect API key provided.",
                               headers={"WWW-Authenticate": "Bearer"})


class AuthMiddleware:
    def __init__(self, app: ASGIApp, *, keys: ApiKeys, open_paths: frozenset[str]) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.keys.enabled \
                and scope["path"] not in self.open_paths:
            try:
                self.keys.check(Headers(scope=scope).get("authorization"))
            except Unauthorized as exc:
                await answer_error(exc, scope, receive, send)
                return
        await self.app(scope, receive, send)

