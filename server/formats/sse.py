"""Transcript events -> OpenAI's server-sent event stream, as text.

Pure like ``render``: an ``EventStream`` holds the event lines and what the HTTP layer
needs to send them. Once the 200 and its headers are sent, a failure can't become a
status code: it is sent as a final ``error`` event carrying the same envelope an HTTP
error would (``granite_speech_server.errors.error_body``; the OpenAI SDK raises it as
an APIError) rather than ending the stream early and leaving a truncated text.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel

from granite_speech_server.asr.transcript import Finished, TextDelta, TranscriptEvent
from granite_speech_server.errors import ServerError, error_body
from granite_speech_server.formats.openai import (
    ErrorDetail,
    StreamError,
    TranscriptTextDelta,
    TranscriptTextDone,
)
from granite_speech_server.formats.render import languages_out, logprobs_out, token_usage

log = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"


@dataclass(frozen=True)
class EventStream:
    """``data:`` lines as they are produced, with what the HTTP layer needs to send them."""

    events: AsyncIterator[str]
    media_type: str = MEDIA_TYPE
    # A proxy or browser cache must not hold on to (or replay) a live stream.
    headers: Mapping[str, str] = field(default_factory=lambda: {"Cache-Control": "no-cache"})


def event_stream(events: AsyncIterator[TranscriptEvent], *,
                 include_logprobs: bool) -> EventStream:
    return EventStream(sse_lines(events, include_logprobs=include_logprobs))


def sse_data(event: BaseModel) -> str:
    return f"data: {event.model_dump_json()}\n\n"


def sse_error(exc: BaseException) -> str:
    return sse_data(StreamError(error=ErrorDetail(**error_body(exc)["error"])))


async def sse_lines(events: AsyncIterator[TranscriptEvent], *,
                    include_logprobs: bool) -> AsyncIterator[str]:
    try:
        async for event in events:
            match event:
                case TextDelta(text=text, logprobs=logprobs):
                    yield sse_data(TranscriptTextDelta(
                        delta=text, logprobs=logprobs_out(logprobs) if include_logprobs else None))
                case Finished(transcript=transcript):
                    yield sse_data(TranscriptTextDone(
                        text=transcript.text, languages=languages_out(transcript),
                        usage=token_usage(transcript.usage),
                        logprobs=logprobs_out(transcript.logprobs) if include_logprobs else None))
    except Exception as exc:  # noqa: BLE001 - every failure ends the stream with its event
        if not isinstance(exc, ServerError):
            log.exception("Stream failed after it began")
        yield sse_error(exc)
    finally:
        await events.aclose()
