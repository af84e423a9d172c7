"""The per-request deadline (``--request-timeout-seconds``) and how work meets it.

Cancelling at the deadline is what aborts the engine work: cancelling the
transcriber's coroutine (or closing its event stream) cancels every segment's
``engine.generate``, which aborts the request in vLLM.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TypeVar

from granite_speech_server.errors import RequestTimeout

T = TypeVar("T")


@dataclass(frozen=True)
class Deadline:
    at: float
    """In the event loop's clock (``loop.time()``)."""
    seconds: float
    """The limit it was set from, for the message."""

    def error(self) -> RequestTimeout:
        return RequestTimeout(f"The request took longer than the server's limit of "
                              f"{self.seconds:g} s; its work was stopped.")


async def within(deadline: Deadline | None, awaitable: Awaitable[T]) -> T:
    """Await it, cancelled at the deadline (then RequestTimeout)."""
    if deadline is None:
        return await awaitable
    timeout = asyncio.timeout_at(deadline.at)
    try:
        async with timeout:
            return await awaitable
    except TimeoutError:
        if timeout.expired():
            raise deadline.error() from None
        raise


async def iterate_within(deadline: Deadline | None,
                         events: AsyncIterator[T]) -> AsyncIterator[T]:
    """Its items until the deadline, then RequestTimeout. The timeout covers each
    wait for the next item, never a ``yield`` (the consumer's time between items
    runs outside the generator, where a cancel scope must not reach)."""
    try:
        while True:
            try:
                item = await within(deadline, anext(events))
            except StopAsyncIteration:
                return
            yield item
    finally:
        await events.aclose()
