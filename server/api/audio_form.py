"""Form fields shared by the transcription and translation endpoints, and their checks.

Field names follow what the OpenAI SDKs send: list fields arrive as repeated
``name[]`` parts. Each check raises a typed error naming the offending field.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Literal

from fastapi import File, Form, Request, UploadFile
from pydantic import BaseModel, Field, ValidationError

from granite_speech_server.api.protocol import ResponseFormat
from granite_speech_server.asr.prompt import LANGUAGE_NAMES, TRANSCRIPTION_LANGUAGES, TRANSLATION_PAIRS
from granite_speech_server.audio.vad import VadOptions
from granite_speech_server.errors import InvalidRequest, ModelNotFound, UnsupportedLanguage
from granite_speech_server.state import AppState

log = logging.getLogger(__name__)

MAX_KEYWORDS = 50
MAX_KEYWORD_CHARS = 1000
"""Keywords go into the prompt: bounded so they can't crowd out audio and output."""

FileField = Annotated[UploadFile, File(description="Audio in any format FFmpeg decodes "
                                       "(flac, mp3, mp4, mpeg, mpga, m4a, ogg, opus, wav, webm, ...).")]
ModelField = Annotated[str, Form(description="A served model name (see GET /v1/models).",
                                 examples=["granite-4.0-1b-speech"])]
PromptField = Annotated[str | None, Form(
    description="Text to guide the model. Granite has no free-text prompt: the text is split "
    "on commas, semicolons and newlines into keywords for its keyword biasing.",
    examples=["Granite, vLLM, Kubernetes"])]
KeywordsField = Annotated[list[str] | None, Form(
    description="Extension: names, acronyms or spellings to bias the model towards. "
    "Repeat the field or give a comma-separated list.", examples=[["Granite", "vLLM"]])]
TemperatureField = Annotated[float, Form(ge=0, le=1, description="Sampling temperature; "
                                         "0 decodes greedily.")]
ResponseFormatField = Annotated[ResponseFormat, Form(
    description="json, text, srt, verbose_json or vtt. text/srt/vtt are plain bodies.")]
ChunkingField = Annotated[str | None, Form(
    description="`auto` (the default here: Silero VAD picks the cuts, in pauses), or a "
    "`server_vad` object, as JSON or as the SDK's `chunking_strategy[...]` fields: "
    "`threshold` (0-1), `silence_duration_ms` (pause that may separate segments), "
    "`prefix_padding_ms` (audio kept around each segment's speech).",
    examples=["auto", '{"type": "server_vad", "silence_duration_ms": 500}'])]
StreamField = Annotated[bool, Form(
    description="Stream the text as server-sent events (`transcript.text.delta`, then "
    "`transcript.text.done`). json and text formats only.")]


def check_model(state: AppState, model: str) -> None:
    names = state.settings.model_names
    if model not in names:
        raise ModelNotFound(
            f"The model '{model}' does not exist; this server serves {', '.join(names)}."
        )


def check_transcription_language(language: str | None) -> None:
    if language is not None and language not in TRANSCRIPTION_LANGUAGES:
        raise UnsupportedLanguage(
            f"Language '{language}' is not supported for transcription; supported: "
            f"{', '.join(TRANSCRIPTION_LANGUAGES)}."
        )


def check_translation_pair(source: str | None, target: str) -> None:
    """The model translates X->English and English->X; a missing source means
    English when the target isn't, and any supported source when it is."""
    supported = ", ".join(f"{s}->{t}" for s, t in TRANSLATION_PAIRS)
    if target not in LANGUAGE_NAMES or target not in {t for _, t in TRANSLATION_PAIRS}:
        raise UnsupportedLanguage(f"Cannot translate into '{target}'; supported pairs: "
                                  f"{supported}.", param="to_language")
    if source is not None and (source, target) not in TRANSLATION_PAIRS:
        raise UnsupportedLanguage(f"Cannot translate {source}->{target}; supported pairs: "
                                  f"{supported}.", param="language")


def check_streamable(stream: bool, response_format: str) -> None:
    if stream and response_format not in ("json", "text"):
        raise InvalidRequest(f"stream=true is available for json and text, not "
                             f"'{response_format}'.", param="stream")


def collect_keywords(prompt: str | None, keywords: Iterable[str] | None) -> tuple[str, ...]:
    pieces = [prompt or ""] + list(keywords or [])
    found = [word.strip() for piece in pieces for word in re.split(r"[,;\n]", piece)]
    unique = tuple(dict.fromkeys(word for word in found if word))
    if len(unique) > MAX_KEYWORDS or sum(map(len, unique)) > MAX_KEYWORD_CHARS:
        raise InvalidRequest(f"Too many keywords: at most {MAX_KEYWORDS} and "
                             f"{MAX_KEYWORD_CHARS} characters in all.", param="prompt")
    return unique


class ServerVad(BaseModel, extra="forbid"):
    """OpenAI's server_vad chunking strategy, with OpenAI's defaults."""

    type: Literal["server_vad"]
    threshold: float = Field(0.5, gt=0, lt=1)
    silence_duration_ms: int = Field(200, ge=0, le=10_000)
    prefix_padding_ms: int = Field(300, ge=0, le=2_000)


async def parse_chunking_strategy(request: Request) -> tuple[VadOptions | None, int | None]:
    """(VAD settings, padding) from `chunking_strategy`; (None, None) means the server's."""
    form = await request.form()
    prefix = "chunking_strategy["
    fields = {key[len(prefix):-1]: value for key, value in form.items()
              if key.startswith(prefix) and key.endswith("]")}
    raw = form.get("chunking_strategy")
    if raw in (None, "auto") and not fields:
        return None, None
    try:
        strategy = ServerVad.model_validate(fields or json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise InvalidRequest(f"chunking_strategy must be 'auto' or a server_vad object: {exc}",
                             param="chunking_strategy") from None
    vad = VadOptions(threshold=strategy.threshold, min_silence_ms=strategy.silence_duration_ms)
    return vad, strategy.prefix_padding_ms


async def log_unknown_fields(request: Request, known: Iterable[str]) -> None:
    """OpenAI clients add fields over time: accept them, but say which were ignored."""
    names = {key for key in (await request.form()).keys() if not key.startswith("chunking_strategy[")}
    unknown = sorted(names - set(known))
    if unknown:
        log.info("Ignoring unknown form fields on %s: %s", request.url.path, ", ".join(unknown))
