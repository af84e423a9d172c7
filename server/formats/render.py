"""Transcript x response_format -> HTTP response."""

from __future__ import annotations

from fastapi.responses import JSONResponse, PlainTextResponse, Response

from server.api.protocol import InputTokenDetails, TokenUsage, TranscriptionResponse
from server.asr.transcriber import Transcript, Usage


def token_usage(usage: Usage) -> TokenUsage:
    return TokenUsage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        total_tokens=usage.input_tokens + usage.output_tokens,
        input_token_details=InputTokenDetails(
            audio_tokens=usage.audio_tokens, text_tokens=usage.text_tokens
        ),
        seconds=round(usage.seconds, 3),
    )


def render(transcript: Transcript, response_format: str) -> Response:
    match response_format:
        case "text":
            return PlainTextResponse(transcript.text)
        case _:
            body = TranscriptionResponse(text=transcript.text, usage=token_usage(transcript.usage))
            return JSONResponse(body.model_dump())
