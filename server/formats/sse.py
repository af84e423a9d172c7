"""Transcript events -> OpenAI's server-sent event stream.

Once the 200 and its headers are sent, a failure can't become a status code:
it is sent as a final ``error`` event (the OpenAI SDK raises it as an APIError)
rather than ending the stream early and leaving a truncated text.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from pydantic import BaseModel

from granite_speech_server.api.protocol import (
    ErrorDetail,
    StreamError,
    TranscriptTextDelta,
    TranscriptTextDone,
)
from granite_speech_server.asr.transcript import Finished, TextDelta, TranscriptEvent
from granite_speech_server.errors import ServerError
from granite_speech_server.formats.render import logprobs_out, token_usage

log = logging.getLogger(__name__)


def sse_data(event: BaseModel) -> str:
    return f"data: {event.model_dump_json()}\n\n"


async def sse_stream(events: AsyncIterator[TranscriptEvent], *,
                     include_logprobs: bool) -> AsyncIterator[str]:
    try:
        async for event in events:
            match event:
                case TextDelta(text=text, logprobs=logprobs):
                    yield sse_data(TranscriptTextDelta(
                        delta=text, logprobs=logprobs_out(logprobs) if include_logprobs else None))
                case Finished(transcript=transcript):
                    yield sse_data(TranscriptTextDone(
                        text=transcript.text, usage=token_usage(transcript.usage),
                        logprobs=logprobs_out(transcript.logprobs) if include_logprobs else None))
    except ServerError as exc:
        yield sse_data(StreamError(error=ErrorDetail(
            message=exc.message, type=exc.error_type, param=exc.param, code=exc.code)))
    except Exception:
        log.exception("Stream failed after it began")
        yield sse_data(StreamError(error=ErrorDetail(
            message="Internal server error.", type="server_error", code="internal_error")))
    finally:
        await events.aclose()
