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
    Output,
    TranscriptionForm,
    TranslationForm,
    check_model,
    check_unknown_fields,
)
from granite_speech_server.api.context import RequestContext, request_context
from granite_speech_server.api.deadline import iterate_within, within
from granite_speech_server.api.deps import StateDep, TranscriberDep
from granite_speech_server.api.gate import TICKET_KEY
from granite_speech_server.api.upload_limit import InMemoryUploadRoute
from granite_speech_server.asr.planning import plan_options
from granite_speech_server.asr.transcriber import Transcriber
from granite_speech_server.asr.transcript import (
    Finished,
    TextDelta,
    TranscriptEvent,
    TranscriptionOptions,
)
from granite_speech_server.audio.decode import HEAD_S, DecodedAudio, decode_audio
from granite_speech_server.audio.probe import probe_format
from granite_speech_server.audio.segment import PlanOptions
from granite_speech_server.errors import ServerError, TooMuchAudioInFlight, UploadTooLarge
from granite_speech_server.formats.openai import (
    ErrorResponse,
    TranscriptionResponse,
    VerboseTranscriptionResponse,
)
from granite_speech_server.formats.render import render
from granite_speech_server.formats.sse import event_stream
from granite_speech_server.metrics import Metrics
from granite_speech_server.preprocess.shared import UploadSpool
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

# One model per form; multipart, as the file makes it (FastAPI would document a form model
# as url-encoded).
TranscriptionFormDep = Annotated[TranscriptionForm, Form(media_type="multipart/form-data")]
TranslationFormDep = Annotated[TranslationForm, Form(media_type="multipart/form-data")]


@router.post("/v1/audio/transcriptions", responses=RESPONSES, response_model=None,
             summary="Transcribe audio into the input language")
async def create_transcription(request: Request, state: StateDep, transcriber: TranscriberDep,
                               form: TranscriptionFormDep) -> Response:
    check_unknown_fields(form)
    check_model(state.settings.model_names, form.model)
    options, output = form.options(word_alignment=state.ctc is not None)
    return await respond(request, state, transcriber, form.file, options, output)


@router.post("/v1/audio/translations", responses=RESPONSES, response_model=None,
             summary="Translate speech into English (or, as an extension, out of English)")
async def create_translation(request: Request, state: StateDep, transcriber: TranscriberDep,
                             form: TranslationFormDep) -> Response:
    check_unknown_fields(form)
    check_model(state.settings.model_names, form.model)
    options, output = form.options()
    return await respond(request, state, transcriber, form.file, options, output)


async def respond(request: Request, state: AppState, transcriber: Transcriber, file: UploadFile,
                  options: TranscriptionOptions, output: Output) -> Response:
    context = request_context(request)
    context.response_format = "sse" if output.stream else output.response_format
    received = asyncio.get_running_loop().time()  # the upload is in: processing starts
    plan = plan_options(state.settings, options)
    decoded = await within(context.deadline, decode_upload(state, file, context, plan))
    try:
        admit_audio(request, state.metrics, context.audio_seconds)
    except TooMuchAudioInFlight:
        decoded.audio.close()
        raise
    if output.stream:
        events = transcriber.stream(decoded.audio, options, plan=decoded.plan)
        events = observed(iterate_within(context.deadline, events), state.metrics,
                          context.endpoint, received, decoded)
        stream = event_stream(events, include_logprobs=output.include_logprobs)
        return StreamingResponse(stream.events, media_type=stream.media_type,
                                 headers=dict(stream.headers))
    with counting_late_decode_failure(state.metrics, decoded):
        transcript = await within(context.deadline,
                                  transcriber.transcribe(decoded.audio, options,
                                                         plan=decoded.plan))
    state.metrics.observe_transcript(context.endpoint, transcript,
                                     asyncio.get_running_loop().time() - received)
    rendered = render(transcript, output.response_format,
                      include_logprobs=output.include_logprobs,
                      timestamp_granularities=output.granularities)
    return Response(rendered.body, media_type=rendered.media_type, headers=dict(rendered.headers))


async def decode_upload(state: AppState, file: UploadFile, context: RequestContext,
                        plan: PlanOptions) -> DecodedAudio:
    """The upload's audio: its head decoded, the rest of a long file still decoding; in
    a preprocessing process, if the server has them, which plans it there too."""
    settings = state.settings
    # UploadLimitMiddleware already bounded the whole body; this bounds the file itself.
    if (file.size or 0) > settings.max_upload_bytes:
        raise UploadTooLarge(f"The upload exceeds the limit of {settings.max_upload_mb:g} MB.")
    limits = {"head_s": HEAD_S, "max_duration_s": settings.max_audio_seconds,
              "min_duration_s": settings.min_audio_seconds,
              "rest_niceness": settings.preprocessing_niceness}
    spool: UploadSpool = file.file  # InMemoryUploadParser's: decoded where it lies
    try:
        if state.preprocess is not None:
            decoded = await state.preprocess.decode(
                spool, plan=plan, niceness=settings.preprocessing_niceness, **limits)
        else:
            decoded = await run_in_threadpool(decode_audio, spool.mapped(), **limits)
    except ServerError as exc:
        container, codec = await run_in_threadpool(probe_format, spool.mapped())
        state.metrics.decode_failures.labels(container, codec, exc.code or "unknown").inc()
        raise
    finally:
        await file.close()  # a mapping or a preprocessing process holds what it needs
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
