"""The forms of the transcription and translation endpoints, one pydantic model each,
and their checks.

Field names follow what the OpenAI SDKs send: list fields arrive as repeated ``name[]``
parts. Each form builds the transcription options and output choices it asks for;
each check raises a typed error naming the offending field. Fields a form doesn't
know are kept as the model's extras: logged and ignored (OpenAI clients add fields over
time), except the SDK's ``chunking_strategy[...]`` fields, which are read from there.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from granite_speech_server.api.protocol import ResponseFormat
from granite_speech_server.asr.prompt import (
    LANGUAGE_NAMES,
    TRANSCRIPTION_LANGUAGES,
    TRANSLATION_PAIRS,
)
from granite_speech_server.asr.transcript import TranscriptionOptions
from granite_speech_server.audio.vad import VadOptions
from granite_speech_server.errors import InvalidRequest, ModelNotFound, UnsupportedLanguage

log = logging.getLogger(__name__)

MAX_KEYWORDS = 50
MAX_KEYWORD_CHARS = 1000
"""Keywords go into the prompt: bounded so they can't crowd out audio and output."""
CHUNKING_PREFIX = "chunking_strategy["

FileField = Annotated[UploadFile, Field(description="Audio in any format FFmpeg decodes "
                                        "(flac, mp3, mp4, mpeg, mpga, m4a, ogg, opus, wav, webm, ...).")]
ModelField = Annotated[str, Field(description="A served model name (see GET /v1/models).",
                                  examples=["granite-4.0-1b-speech"])]
PromptField = Annotated[str | None, Field(
    description="Text to guide the model. Granite has no free-text prompt: the text is split "
    "on commas, semicolons and newlines into keywords for its keyword biasing.",
    examples=["Granite, vLLM, Kubernetes"])]
KeywordsField = Annotated[list[str] | None, Field(
    description="Extension: names, acronyms or spellings to bias the model towards. "
    "Repeat the field or give a comma-separated list.", examples=[["Granite", "vLLM"]])]
TemperatureField = Annotated[float, Field(ge=0, le=1, description="Sampling temperature; "
                                          "0 decodes greedily.")]
ResponseFormatField = Annotated[ResponseFormat, Field(
    description="json, text, srt, verbose_json or vtt. text/srt/vtt are plain bodies.")]
ChunkingField = Annotated[str | None, Field(
    description="`auto` (the default here: Silero VAD picks the cuts, in pauses), or a "
    "`server_vad` object, as JSON or as the SDK's `chunking_strategy[...]` fields: "
    "`threshold` (0-1), `silence_duration_ms` (pause that may separate segments), "
    "`prefix_padding_ms` (audio kept around each segment's speech).",
    examples=["auto", '{"type": "server_vad", "silence_duration_ms": 500}'])]
StreamField = Annotated[bool, Field(
    description="Stream the text as server-sent events (`transcript.text.delta`, then "
    "`transcript.text.done`). json and text formats only.")]


@dataclass(frozen=True)
class Output:
    """How the client wants the transcript back."""

    response_format: str
    stream: bool
    include_logprobs: bool = False
    granularities: frozenset[str] = frozenset({"segment"})


def _without_additional_properties(schema: dict[str, Any]) -> None:
    schema.pop("additionalProperties", None)


class AudioForm(BaseModel):
    """What both endpoints' forms share: the fields they don't know, and empty fields.
    (Each form declares its own fields, ``chunking_strategy`` among them, in its order.)"""

    # FastAPI hands a form model every part of the form: those it has no field for
    # land in ``model_extra``. The schema doesn't advertise them (additionalProperties):
    # they are tolerated, not part of the API.
    model_config = ConfigDict(extra="allow", json_schema_extra=_without_additional_properties)

    @model_validator(mode="before")
    @classmethod
    def _empty_fields_are_absent(cls, data: Any) -> Any:
        # FastAPI reads an empty part as an absent one for a lone Form parameter, but not
        # for a form model's fields: a client's `language=` still means "no language".
        if not isinstance(data, dict):
            return data
        known = cls.field_names()
        return {key: value for key, value in data.items() if not (value == "" and key in known)}

    @classmethod
    def field_names(cls) -> set[str]:
        """The names the form knows, as clients send them (``include[]``)."""
        return {field.alias or name for name, field in cls.model_fields.items()}

    def unknown_fields(self) -> list[str]:
        return sorted(key for key in self.model_extra or {} if not key.startswith(CHUNKING_PREFIX))

    def chunking_fields(self) -> dict[str, Any]:
        """The SDK's ``chunking_strategy[key]`` fields, by key."""
        return {key[len(CHUNKING_PREFIX):-1]: last(value)
                for key, value in (self.model_extra or {}).items()
                if key.startswith(CHUNKING_PREFIX) and key.endswith("]")}

    def chunking(self) -> tuple[VadOptions | None, int | None]:
        return parse_chunking_strategy(self.chunking_strategy, self.chunking_fields())


class TranscriptionForm(AudioForm):
    """The transcription request, in OpenAI's field order. Other fields are accepted
    and ignored."""

    file: FileField
    model: ModelField
    language: Annotated[str | None, Field(description="ISO-639-1 code of the spoken language "
                                          "(en, fr, de, es, pt, ja).", examples=["en"])] = None
    prompt: PromptField = None
    response_format: ResponseFormatField = "json"
    temperature: TemperatureField = 0.0
    timestamp_granularities: Annotated[list[str] | None, Field(
        alias="timestamp_granularities[]",
        description="`segment` (speech segments of the plan) and/or `word` (CTC forced "
        "alignment of the transcript; not for Japanese); needs verbose_json.")] = None
    include: Annotated[list[str] | None, Field(
        alias="include[]", description="`logprobs`: token log probabilities (json, or "
        "streamed).")] = None
    stream: StreamField = False
    keywords: KeywordsField = None
    chunking_strategy: ChunkingField = None

    def options(self, *, word_alignment: bool) -> tuple[TranscriptionOptions, Output]:
        """What to run and how to answer; ``word_alignment``: the server can align words."""
        check_transcription_language(self.language)
        check_streamable(self.stream, self.response_format)
        granularities = check_granularities(self.timestamp_granularities, self.response_format)
        words = word_timing_wanted(word_alignment, granularities, self.response_format,
                                   self.language)
        include_logprobs = check_include(self.include, self.response_format)
        vad, padding_ms = self.chunking()
        options = TranscriptionOptions(task="transcribe", language=self.language,
                                       keywords=collect_keywords(self.prompt, self.keywords),
                                       temperature=self.temperature, vad=vad,
                                       padding_ms=padding_ms, word_timestamps=words)
        return options, Output(self.response_format, self.stream, include_logprobs,
                               granularities)


class TranslationForm(AudioForm):
    """The translation request: OpenAI's fields, then this server's extensions. Other
    fields are accepted and ignored."""

    file: FileField
    model: ModelField
    prompt: PromptField = None
    response_format: ResponseFormatField = "json"
    temperature: TemperatureField = 0.0
    language: Annotated[str | None, Field(description="Extension: ISO-639-1 code of the "
                                          "spoken language, if known.", examples=["fr"])] = None
    to_language: Annotated[str, Field(description="Extension: target language. `en` (the "
                                      "default, as OpenAI) from fr/de/es/pt/ja; from English "
                                      "into fr, de, es, pt, ja, it or zh.",
                                      examples=["en", "fr"])] = "en"
    stream: StreamField = False
    keywords: KeywordsField = None
    chunking_strategy: ChunkingField = None

    def options(self) -> tuple[TranscriptionOptions, Output]:
        check_translation_pair(self.language, self.to_language)
        check_streamable(self.stream, self.response_format)
        vad, padding_ms = self.chunking()
        options = TranscriptionOptions(task="translate", language=self.language,
                                       to_language=self.to_language,
                                       keywords=collect_keywords(self.prompt, self.keywords),
                                       temperature=self.temperature, vad=vad,
                                       padding_ms=padding_ms)
        return options, Output(self.response_format, self.stream)


def ignore_unknown_fields(path: str, form: AudioForm) -> None:
    """OpenAI clients add fields over time: accept them, but say which were ignored.
    (To refuse them instead, raise an ``InvalidRequest`` here.)"""
    if unknown := form.unknown_fields():
        log.info("Ignoring unknown form fields on %s: %s", path, ", ".join(unknown))


def last(value: Any) -> Any:
    """A repeated form field's last value, as a form's plain lookup gives it."""
    return value[-1] if isinstance(value, list) else value


def check_model(served: Iterable[str], model: str) -> None:
    names = list(served)
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


def parse_chunking_strategy(raw: str | None, fields: dict[str, Any]
                            ) -> tuple[VadOptions | None, int | None]:
    """(VAD settings, padding) from `chunking_strategy` (JSON, or the SDK's bracketed
    ``fields``, which win); (None, None) means the server's."""
    if raw in (None, "auto") and not fields:
        return None, None
    try:
        strategy = ServerVad.model_validate(fields or json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise InvalidRequest(f"chunking_strategy must be 'auto' or a server_vad object: {exc}",
                             param="chunking_strategy") from None
    vad = VadOptions(threshold=strategy.threshold, min_silence_ms=strategy.silence_duration_ms)
    return vad, strategy.prefix_padding_ms


def check_granularities(values: list[str] | None, response_format: str) -> frozenset[str]:
    granularities = frozenset(values or ["segment"])
    if unknown := granularities - {"segment", "word"}:
        raise InvalidRequest(f"Unknown timestamp granularity: {', '.join(sorted(unknown))}; "
                             "use segment or word.", param="timestamp_granularities")
    if values and response_format != "verbose_json":
        raise InvalidRequest("timestamp_granularities needs response_format=verbose_json.",
                             param="timestamp_granularities")
    return granularities


def word_timing_wanted(word_alignment: bool, granularities: frozenset[str],
                       response_format: str, language: str | None) -> bool:
    """Word times when asked for, and for subtitles whenever they can be had (cues then
    split on real word boundaries). Japanese has no word boundaries to align yet."""
    alignable = word_alignment and language != "ja"
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
