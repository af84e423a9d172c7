"""Transcript x response_format -> a response body, its media type and headers.

Pure: the body is text ready to send; ``granite_speech_server.api`` wraps it in an HTTP
response. Nothing here knows the web framework, the engine or the request.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from granite_speech_server.asr.prompt import LANGUAGE_NAMES
from granite_speech_server.asr.transcript import Segment, TokenLogprob, Transcript, Usage
from granite_speech_server.formats.openai import (
    DurationUsage,
    InputTokenDetails,
    TokenLogprobOut,
    TokenUsage,
    TranscriptionLanguage,
    TranscriptionResponse,
    TranscriptionSegment,
    TranscriptionWord,
    VerboseTranscriptionResponse,
)
from granite_speech_server.formats.subtitles import to_srt, to_vtt

DEFAULT_GRANULARITIES = frozenset({"segment"})


@dataclass(frozen=True)
class Rendered:
    """A whole response body with what the HTTP layer needs to send it."""

    body: str
    media_type: str
    headers: Mapping[str, str] = field(default_factory=dict)


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


def duration_usage(usage: Usage) -> DurationUsage:
    """verbose_json's usage: OpenAI's duration shape, carrying the token counts too."""
    tokens = token_usage(usage)
    return DurationUsage(
        seconds=tokens.seconds,
        input_tokens=tokens.input_tokens,
        output_tokens=tokens.output_tokens,
        total_tokens=tokens.total_tokens,
        input_token_details=tokens.input_token_details,
    )


def logprobs_out(logprobs: Iterable[TokenLogprob]) -> list[TokenLogprobOut]:
    # OpenAI sends each token's UTF-8 bytes so clients can rebuild text split mid-character.
    return [
        TokenLogprobOut(token=lp.token, logprob=lp.logprob, bytes=list(lp.token.encode("utf-8")))
        for lp in logprobs
    ]


def languages_out(transcript: Transcript) -> list[TranscriptionLanguage] | None:
    """OpenAI's ``languages`` for a transcription (empty when none was detected); a
    translation has none."""
    if transcript.task != "transcribe":
        return None
    return [TranscriptionLanguage(code=code) for code in transcript.detected_languages]


def usage_headers(usage: Usage) -> dict[str, str]:
    """Plain-text bodies can't carry the usage object: these headers do (extension)."""
    return {
        "X-Usage-Audio-Seconds": f"{usage.seconds:.3f}",
        "X-Usage-Input-Tokens": str(usage.input_tokens),
        "X-Usage-Audio-Tokens": str(usage.audio_tokens),
        "X-Usage-Output-Tokens": str(usage.output_tokens),
    }


def render(
    transcript: Transcript,
    response_format: str,
    *,
    include_logprobs: bool = False,
    timestamp_granularities: frozenset[str] = DEFAULT_GRANULARITIES,
) -> Rendered:
    headers = usage_headers(transcript.usage)
    match response_format:
        case "text":
            return Rendered(transcript.text, "text/plain", headers)
        case "srt":
            # OpenAI serves SRT as text/plain too.
            return Rendered(to_srt(transcript.segments, transcript.words), "text/plain", headers)
        case "vtt":
            return Rendered(to_vtt(transcript.segments, transcript.words), "text/vtt", headers)
        case "verbose_json":
            return json_body(verbose(transcript, timestamp_granularities).model_dump(mode="json"))
        case _:
            body = TranscriptionResponse(
                text=transcript.text,
                languages=languages_out(transcript),
                logprobs=logprobs_out(transcript.logprobs) if include_logprobs else None,
                usage=token_usage(transcript.usage),
            )
            return json_body(body.model_dump(mode="json"))


def json_body(content: dict) -> Rendered:
    # Serialized as Starlette's JSONResponse does, so bodies are byte for byte what they
    # were when the formats built that response themselves.
    text = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None,
                      separators=(",", ":"))
    return Rendered(text, "application/json")


def verbose(transcript: Transcript, granularities: frozenset[str]) -> VerboseTranscriptionResponse:
    # As at OpenAI: segments come by default and go only when words alone were asked for.
    with_segments = "segment" in granularities or "word" not in granularities
    words = transcript.words if "word" in granularities else None
    return VerboseTranscriptionResponse(
        task=transcript.task,
        language=language_name(transcript.spoken_language),
        duration=round(transcript.duration, 3),
        text=transcript.text,
        segments=spoken_segments(transcript) if with_segments else None,
        words=[TranscriptionWord(word=w.word, start=round(w.start, 3), end=round(w.end, 3))
               for w in words] if words is not None else None,
        usage=duration_usage(transcript.usage),
    )


def spoken_segments(transcript: Transcript) -> list[TranscriptionSegment]:
    """Segments with text, numbered in order. A stretch the VAD took for speech where the
    model heard none is left out, as subtitles leave it out."""
    spoken = [segment for segment in transcript.segments if segment.text]
    return [verbose_segment(segment, number) for number, segment in enumerate(spoken)]


def verbose_segment(segment: Segment, number: int) -> TranscriptionSegment:
    return TranscriptionSegment(
        id=number,
        seek=frames(segment.start),
        start=round(segment.start, 3),
        end=round(segment.end, 3),
        text=segment.text,
        tokens=segment.token_ids,
        temperature=segment.temperature,
        avg_logprob=segment.avg_logprob,
        compression_ratio=compression_ratio(segment.text),
        no_speech_prob=0.0,
    )


def language_name(code: str | None) -> str:
    """Whisper names languages in lowercase English ("english", "french")."""
    if code is None:
        return "unknown"
    return LANGUAGE_NAMES.get(code, code).lower()


def frames(seconds: float) -> int:
    # Whisper's seek counts 10 ms mel frames. Round away float noise before flooring,
    # so that 1.23 s (1.2299999... * 100) is frame 123, not 122.
    return int(round(seconds * 100, 6))


def compression_ratio(text: str) -> float:
    """Whisper's repetition signal: UTF-8 bytes over zlib-compressed bytes.
    An empty text gives 0.0 (zlib still writes an 8-byte stream for it)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))
