"""POST /v1/audio/transcriptions and /v1/audio/translations."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from granite_speech_server.api.audio_form import (
    ChunkingField,
    FileField,
    KeywordsField,
    ModelField,
    PromptField,
    ResponseFormatField,
    StreamField,
    TemperatureField,
    check_model,
    check_streamable,
    check_transcription_language,
    check_translation_pair,
    parse_chunking_strategy,
    collect_keywords,
    log_unknown_fields,
)
from granite_speech_server.api.context import RequestContext, request_context
from granite_speech_server.api.deadline import iterate_within, within
from granite_speech_server.api.deps import StateDep, TranscriberDep
from granite_speech_server.api.gate import TICKET_KEY
from granite_speech_server.api.protocol import ErrorResponse, TranscriptionResponse, VerboseTranscriptionResponse
from granite_speech_server.api.upload_limit import InMemoryUploadRoute
from granite_speech_server.asr.transcriber import Transcriber
from granite_speech_server.asr.transcript import Finished, TextDelta, TranscriptEvent, TranscriptionOptions
from granite_speech_server.audio.decode import HEAD_S, DecodedAudio, decode_audio
from granite_speech_server.audio.probe import probe_format
from granite_speech_server.errors import InvalidRequest, ServerError, TooMuchAudioInFlight, UploadTooLarge
from granite_speech_server.formats.render import render
from granite_speech_server.formats.sse import sse_stream
from granite_speech_server.metrics import Metrics
from granite_speech_server.state import AppState

router = APIRouter(tags=["audio"], route_class=InMemoryUploadRoute)

RESPONSES = {
    200: {
        "description": "`json`: Transcription; `verbose_json`: VerboseTranscription; "
        "`text`, `srt`: text/plain; `vtt`: text/vtt; `stream=true`: text/event-stream.",
        "model": TranscriptionResponse | VerboseTranscriptionResponse,
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "text/vtt": {"schema": {"type": "string"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    },
    **{status: {"model": ErrorResponse, "description": description} for status, description in {
        400: "Invalid request, unsupported language or undecodable audio",
        401: "Missing or wrong API key",
        404: "Unknown model",
        413: "Upload too large",
        429: "Overloaded: too many requests or too much audio in flight; see Retry-After",
        503: "Model not ready, engine unavailable, or shutting down",
        504: "The request ran past the server's timeout",
    }.items()},
}

TRANSCRIPTION_FIELDS = {"file", "model", "language", "prompt", "response_format", "temperature",
                        "timestamp_granularities[]", "include[]", "stream", "keywords",
                        "chunking_strategy"}
TRANSLATION_FIELDS = {"file", "model", "language", "to_language", "prompt", "response_format",
                      "temperature", "stream", "keywords", "chunking_strategy"}


@router.post("/v1/audio/transcriptions", responses=RESPONSES, response_model=None,
             summary="Transcribe audio into the input language")
async def create_transcription(
    request: Request,
    state: StateDep,
    transcriber: TranscriberDep,
    file: FileField,
    model: ModelField,
    language: Annotated[str | None, Form(description="ISO-639-1 code of the spoken language "
                                         "(en, fr, de, es, pt, ja).", examples=["en"])] = None,
    prompt: PromptField = None,
    response_format: ResponseFormatField = "json",
    temperature: TemperatureField = 0.0,
    timestamp_granularities: Annotated[list[str] | None, Form(
        alias="timestamp_granularities[]",
        description="`segment` (speech segments of the plan) and/or `word` (CTC forced "
        "alignment of the transcript; not for Japanese); needs verbose_json.")] = None,
    include: Annotated[list[str] | None, Form(
        alias="include[]", description="`logprobs`: token log probabilities (json, or "
        "streamed).")] = None,
    stream: StreamField = False,
    keywords: KeywordsField = None,
    chunking_strategy: ChunkingField = None,
) -> Response:
    await log_unknown_fields(request, TRANSCRIPTION_FIELDS)
    check_model(state, model)
    check_transcription_language(language)
    check_streamable(stream, response_format)
    granularities = check_granularities(timestamp_granularities, response_format)
    words = word_timing_wanted(state, granularities, response_format, language)
    include_logprobs = check_include(include, response_format)
    vad, padding_ms = await parse_chunking_strategy(request)
    options = TranscriptionOptions(task="transcribe", language=language,
                                   keywords=collect_keywords(prompt, keywords),
                                   temperature=temperature, vad=vad, padding_ms=padding_ms,
                                   word_timestamps=words)
    return await respond(request, state, transcriber, file, options, response_format,
                         stream=stream, include_logprobs=include_logprobs,
                         granularities=granularities)


@router.post("/v1/audio/translations", responses=RESPONSES, response_model=None,
             summary="Translate speech into English (or, as an extension, out of English)")
async def create_translation(
    request: Request,
    state: StateDep,
    transcriber: TranscriberDep,
    file: FileField,
    model: ModelField,
    prompt: PromptField = None,
    response_format: ResponseFormatField = "json",
    temperature: TemperatureField = 0.0,
    language: Annotated[str | None, Form(description="Extension: ISO-639-1 code of the "
                                         "spoken language, if known.", examples=["fr"])] = None,
    to_language: Annotated[str, Form(description="Extension: target language. `en` (the "
                                     "default, as OpenAI) from fr/de/es/pt/ja; from English "
                                     "into fr, de, es, pt, ja, it or zh.",
                                     examples=["en", "fr"])] = "en",
    stream: StreamField = False,
    keywords: KeywordsField = None,
    chunking_strategy: ChunkingField = None,
) -> Response:
    await log_unknown_fields(request, TRANSLATION_FIELDS)
    check_model(state, model)
    check_translation_pair(language, to_language)
    check_streamable(stream, response_format)
    vad, padding_ms = await parse_chunking_strategy(request)
    options = TranscriptionOptions(task="translate", language=language, to_language=to_language,
                                   keywords=collect_keywords(prompt, keywords),
                                   temperature=temperature, vad=vad, padding_ms=padding_ms)
    return await respond(request, state, transcriber, file, options, response_format,
                         stream=stream, include_logprobs=False,
                         granularities=frozenset({"segment"}))


def check_granularities(values: list[str] | None, response_format: str) -> frozenset[str]:
    granularities = frozenset(values or ["segment"])
    if unknown := granularities - {"segment", "word"}:
        raise InvalidRequest(f"Unknown timestamp granularity: {', '.join(sorted(unknown))}; "
                             "use segment or word.", param="timestamp_granularities")
    if values and response_format != "verbose_json":
        raise InvalidRequest("timestamp_granularities needs response_format=verbose_json.",
                             param="timestamp_granularities")
    return granularities


def word_timing_wanted(state: AppState, granularities: frozenset[str], response_format: str,
                       language: str | None) -> bool:
    """Word times when asked for, and for subtitles whenever they can be had (cues then
    split on real word boundaries). Japanese has no word boundaries to align yet."""
    alignable = state.ctc is not None and language != "ja"
    if "word" in granularities and not alignable:
        reason = ("Japanese" if language == "ja" else
                  "this server (started without --word-timestamps)")
        raise InvalidRequest(f"Word timestamps are not available for {reason}; use segment.",
                             param="timestamp_granularities")
    return "word" in granularities or (alignable and response_format in ("srt", "vtt"))


def check_include(values: list[str] | None, response_format: str) -> bool:
    if not values:
        return False
    if unknown := set(values) - {"logprobs"}:
        raise InvalidRequest(f"Unknown include value: {', '.join(sorted(unknown))}.",
                             param="include")
    if response_format != "json":
        raise InvalidRequest("include[]=logprobs needs response_format=json.", param="include")
    return True


async def respond(request: Request, state: AppState, transcriber: Transcriber, file: UploadFile,
                  options: TranscriptionOptions, response_format: str, *, stream: bool,
                  include_logprobs: bool, granularities: frozenset[str]) -> Response:
    context = request_context(request)
    context.response_format = "sse" if stream else response_format
    received = asyncio.get_running_loop().time()  # the upload is in: processing starts
    decoded = await within(context.deadline, decode_upload(state, file, context))
    try:
        admit_audio(request, state.metrics, context.audio_seconds)
    except TooMuchAudioInFlight:
        decoded.audio.close()
        raise
    if stream:
        events = transcriber.stream(decoded.audio, options)
        events = observed(iterate_within(context.deadline, events), state.metrics,
                          context.endpoint, received, decoded)
        return StreamingResponse(sse_stream(events, include_logprobs=include_logprobs),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    with counting_late_decode_failure(state.metrics, decoded):
        transcript = await within(context.deadline,
                                  transcriber.transcribe(decoded.audio, options))
    state.metrics.observe_transcript(context.endpoint, transcript,
                                     asyncio.get_running_loop().time() - received)
    return render(transcript, response_format, include_logprobs=include_logprobs,
                  timestamp_granularities=granularities)


async def decode_upload(state: AppState, file: UploadFile,
                        context: RequestContext) -> DecodedAudio:
    """The upload's audio: its head decoded, the rest of a long file still decoding."""
    settings = state.settings
    data = await file.read(settings.max_upload_bytes + 1)
    await file.close()  # its spooled copy isn't needed once the bytes are in memory
    # UploadLimitMiddleware already bounded the whole body; this bounds the file itself.
    if len(data) > settings.max_upload_bytes:
        raise UploadTooLarge(f"The upload exceeds the limit of {settings.max_upload_mb:g} MB.")
    try:
        decoded = await run_in_threadpool(
            decode_audio, data, head_s=HEAD_S,
            max_duration_s=settings.max_audio_seconds, min_duration_s=settings.min_audio_seconds,
            rest_niceness=settings.preprocessing_niceness,
        )
    except ServerError as exc:
        container, codec = await run_in_threadpool(probe_format, data)
        state.metrics.decode_failures.labels(container, codec, exc.code or "unknown").inc()
        raise
    context.audio_seconds = decoded.expected_duration_s
    state.metrics.audio_received.labels(context.endpoint).inc(decoded.expected_duration_s)
    return decoded


@contextlib.contextmanager
def counting_late_decode_failure(metrics: Metrics, decoded: DecodedAudio) -> Iterator[None]:
    """A long upload that turns out broken after its head counts as a decode failure too."""
    try:
        yield
    except ServerError as exc:
        if exc is decoded.audio.error:
            metrics.decode_failures.labels(decoded.source_format, decoded.codec,
                                           exc.code or "unknown").inc()
        raise


def admit_audio(request: Request, metrics: Metrics, seconds: float) -> None:
    """The second admission step, now that the audio's duration is known."""
    ticket = request.scope.get(TICKET_KEY)
    if ticket is None:
        return
    try:
        ticket.add_audio(seconds)
    except TooMuchAudioInFlight:
        metrics.rejections.labels("audio_seconds").inc()
        raise


async def observed(events: AsyncIterator[TranscriptEvent], metrics: Metrics, endpoint: str,
                   received: float, decoded: DecodedAudio) -> AsyncIterator[TranscriptEvent]:
    """The events, unchanged; records the time to the first delta, the finished
    transcript's metrics and a late decode failure as they pass."""
    loop = asyncio.get_running_loop()
    first_delta = True
    try:
        with counting_late_decode_failure(metrics, decoded):
            async for event in events:
                if first_delta and isinstance(event, TextDelta):
                    first_delta = False
                    metrics.time_to_first_delta.labels(endpoint).observe(loop.time() - received)
                elif isinstance(event, Finished):
                    metrics.observe_transcript(endpoint, event.transcript, loop.time() - received)
                yield event
    finally:
        await events.aclose()
