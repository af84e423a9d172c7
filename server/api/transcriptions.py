"""POST /v1/audio/transcriptions."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from server.api.deps import StateDep, TranscriberDep
from server.api.protocol import ErrorResponse, ResponseFormat, TranscriptionResponse
from server.asr.prompt import TRANSCRIPTION_LANGUAGES
from server.asr.transcriber import TranscriptionOptions
from server.audio.decode import decode_audio
from server.errors import InvalidRequest, ModelNotFound, UnsupportedLanguage, UploadTooLarge
from server.formats.render import render
from server.state import AppState

log = logging.getLogger(__name__)
router = APIRouter(tags=["audio"])

ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Invalid request or undecodable audio",
        404: "Unknown model",
        413: "Upload too large",
        503: "Model not ready or engine unavailable",
    }.items()
}


@router.post(
    "/v1/audio/transcriptions",
    response_model=TranscriptionResponse,
    responses={
        **ERROR_RESPONSES,
        200: {"content": {"text/plain": {"schema": {"type": "string"}}},
              "description": "JSON for `json`; a plain text body for `text`."},
    },
    summary="Transcribe audio into the input language",
)
async def create_transcription(
    state: StateDep,
    transcriber: TranscriberDep,
    file: Annotated[UploadFile, File(description="Audio in any format FFmpeg decodes.")],
    model: Annotated[str, Form(description="A served model name (see GET /v1/models).")],
    language: Annotated[str | None, Form(description="ISO-639-1 code of the spoken language.",
                                         examples=["en"])] = None,
    prompt: Annotated[str | None, Form(description="Text to guide the model.")] = None,
    response_format: Annotated[ResponseFormat, Form(description="Output format.")] = "json",
    temperature: Annotated[float, Form(ge=0, le=1, description="Sampling temperature; "
                                       "0 decodes greedily.")] = 0.0,
) -> Response:
    check_model(state, model)
    check_language(language)
    if response_format not in ("json", "text"):
        raise InvalidRequest(f"response_format '{response_format}' is not supported yet; "
                             "use json or text.", param="response_format")
    audio = await decode_upload(state, file)
    options = TranscriptionOptions(task="transcribe", language=language, temperature=temperature)
    transcript = await transcriber.transcribe(audio, options)
    return render(transcript, response_format)


def check_model(state: AppState, model: str) -> None:
    names = state.settings.model_names
    if model not in names:
        raise ModelNotFound(
            f"The model '{model}' does not exist; this server serves {', '.join(names)}."
        )


def check_language(language: str | None) -> None:
    if language is not None and language not in TRANSCRIPTION_LANGUAGES:
        raise UnsupportedLanguage(
            f"Language '{language}' is not supported; supported languages: "
            f"{', '.join(TRANSCRIPTION_LANGUAGES)}."
        )


async def decode_upload(state: AppState, file: UploadFile):
    settings = state.settings
    data = await file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise UploadTooLarge(f"The upload exceeds the limit of {settings.max_upload_mb:g} MB.")
    decoded = await run_in_threadpool(
        decode_audio,
        data,
        max_duration_s=settings.max_audio_seconds,
        min_duration_s=settings.min_audio_seconds,
    )
    return decoded.samples
