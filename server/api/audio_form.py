"""The forms of the transcription and translation endpoints, one pydantic model each,
and their checks.

A list field is read in both spellings clients use: ``name[]`` (the OpenAI SDKs, Python
and Node, repeat it) and ``name`` (curl, older clients), repeated or comma-separated. Each
form builds the transcription options and output choices it asks for; each check raises
a typed error naming the offending field. A field a form doesn't know is a 400 naming it
(a field dropped in silence is how the SDK's ``keywords[]`` once went unread), except the
SDK's ``chunking_strategy[...]`` fields, which are read from the model's extras.
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import UploadFile
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from granite_speech_server.api.protocol import ResponseFormat
from granite_speech_server.asr.prompt import (
    LANGUAGE_NAMES,
    TRANSCRIPTION_LANGUAGES,
    TRANSLATION_PAIRS,
)
from granite_speech_server.asr.transcript import TranscriptionOptions
from granite_speech_server.audio.vad import VadOptions
from granite_speech_server.errors import InvalidRequest, ModelNotFound, UnsupportedLanguage


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
    description="Words or phrases to guide transcription: Granite's keyword biasing, as "
    "`prompt` is. Also `keywords[]`, repeated or comma-separated.",
    examples=[["Granite", "vLLM"]])]
HotwordsField = Annotated[list[str] | None, Field(
    description="The same as `keywords` (the name vLLM's and speaches' clients use).")]
SUPPORTED = ", ".join(TRANSCRIPTION_LANGUAGES)
LanguagesField = Annotated[list[str] | None, Field(
    description=f"Possible languages of the input audio, ISO-639-1 ({SUPPORTED}); also "
    "`languages[]`. One acts as `language`; several restrict what `languages` in the "
    "response may say.", examples=[["en", "fr"]])]
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


SPEAKER_FIELDS = frozenset({"known_speaker_names", "known_speaker_references"})
NO_SPEAKERS = "this model has no speaker output (diarization)"


class AudioForm(BaseModel):
    """What both endpoints' forms share: list fields' two spellings, unknown and empty
    fields. (Each form declares its own fields, ``chunking_strategy`` among them, in its
    order.)"""

    # FastAPI hands a form model every part of the form: those it has no field for
    # land in ``model_extra`` (``check_unknown_fields`` refuses them). The schema doesn't
    # advertise them (additionalProperties).
    model_config = ConfigDict(extra="allow", json_schema_extra=_without_additional_properties)

    @model_validator(mode="before")
    @classmethod
    def _one_spelling_per_field(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in cls.list_fields():
            # FastAPI fills the declared ``name`` (every part of that name); the SDKs'
            # ``name[]`` parts arrive as an extra, one value or a list of them.
            values = as_list(data.pop(name, None)) + as_list(data.pop(f"{name}[]", None))
            pieces = [piece.strip() for value in values for piece in str(value).split(",")]
            if pieces := [piece for piece in pieces if piece]:
                data[name] = pieces
        # FastAPI reads an empty part as an absent one for a lone Form parameter, but not
        # for a form model's fields: a client's `language=` still means "no language".
        known = set(cls.model_fields)
        return {key: value for key, value in data.items() if not (value == "" and key in known)}

    @field_validator("response_format", mode="before", check_fields=False)
    @classmethod
    def _no_speaker_format(cls, value: Any) -> Any:
        if value == "diarized_json":
            raise PydanticCustomError("unsupported_format", f"diarized_json: {NO_SPEAKERS}; "
                                      "use json, text, srt, verbose_json or vtt.")
        return value

    @classmethod
    def list_fields(cls) -> list[str]:
        return [name for name, field in cls.model_fields.items()
                if any(typing.get_origin(type_) is list
                       for type_ in (field.annotation, *typing.get_args(field.annotation)))]

    def unknown_fields(self) -> list[str]:
        return sorted(key for key in self.model_extra or {} if not key.startswith(CHUNKING_PREFIX))

    def chunking_fields(self) -> dict[str, Any]:
        """The SDK's ``chunking_strategy[key]`` fields, by key."""
        return {key[len(CHUNKING_PREFIX):-1]: last(value)
                for key, value in (self.model_extra or {}).items()
                if key.startswith(CHUNKING_PREFIX) and key.endswith("]")}

    def chunking(self) -> tuple[VadOptions | None, int | None]:
        return parse_chunking_strategy(self.chunking_strategy, self.chunking_fields())


GranularitiesField = Annotated[list[str] | None, Field(
    description="`segment` (speech segments of the plan) and/or `word` (CTC forced alignment "
    "of the transcript; not for Japanese, nor translations); needs verbose_json. Also "
    "`timestamp_granularities[]`.")]
IncludeField = Annotated[list[str] | None, Field(
    description="`logprobs`: token log probabilities (json, or streamed). Also `include[]`.")]


class TranscriptionForm(AudioForm):
    """The transcription request, in OpenAI's field order, then this server's extensions."""

    file: FileField
    model: ModelField
    language: Annotated[str | None, Field(description=f"ISO-639-1 code of the spoken language "
                                          f"({SUPPORTED}).", examples=["en"])] = None
    languages: LanguagesField = None
    prompt: PromptField = None
    keywords: KeywordsField = None
    response_format: ResponseFormatField = "json"
    temperature: TemperatureField = 0.0
    timestamp_granularities: GranularitiesField = None
    include: IncludeField = None
    stream: StreamField = False
    chunking_strategy: ChunkingField = None
    hotwords: HotwordsField = None

    def options(self, *, word_alignment: bool) -> tuple[TranscriptionOptions, Output]:
        """What to run and how to answer; ``word_alignment``: the server can align words."""
        language, candidates = spoken_language(self.language, self.languages)
        check_streamable(self.stream, self.response_format)
        granularities = check_granularities(self.timestamp_granularities, self.response_format)
        words = word_timing_wanted(word_alignment, granularities, self.response_format,
                                   language)
        include_logprobs = check_include(self.include, self.response_format)
        vad, padding_ms = self.chunking()
        options = TranscriptionOptions(
            task="transcribe", language=language, languages=candidates,
            keywords=collect_keywords(self.prompt, self.keywords, self.hotwords),
            temperature=self.temperature, vad=vad, padding_ms=padding_ms, word_timestamps=words)
        return options, Output(self.response_format, self.stream, include_logprobs,
                               granularities)


class TranslationForm(AudioForm):
    """The translation request: OpenAI's fields, then this server's extensions."""

    file: FileField
    model: ModelField
    prompt: PromptField = None
    response_format: ResponseFormatField = "json"
    temperature: TemperatureField = 0.0
    language: Annotated[str | None, Field(description="Extension: ISO-639-1 code of the "
                                          "spoken language, if known.", examples=["fr"])] = None
    languages: LanguagesField = None
    to_language: Annotated[str, Field(description="Extension: target language. `en` (the "
                                      "default, as OpenAI) from fr/de/es/pt/ja; from English "
                                      "into fr, de, es, pt, ja, it or zh.",
                                      examples=["en", "fr"])] = "en"
    keywords: KeywordsField = None
    timestamp_granularities: GranularitiesField = None
    include: IncludeField = None
    stream: StreamField = False
    chunking_strategy: ChunkingField = None
    hotwords: HotwordsField = None

    def options(self) -> tuple[TranscriptionOptions, Output]:
        language, candidates = spoken_language(self.language, self.languages)
        for source in candidates or [language]:
            check_translation_pair(source, self.to_language)
        check_streamable(self.stream, self.response_format)
        granularities = check_granularities(self.timestamp_granularities, self.response_format)
        if "word" in granularities:
            raise InvalidRequest("Word timestamps are for transcriptions: a translation's "
                                 "words were never spoken; use segment.",
                                 param="timestamp_granularities")
        include_logprobs = check_include(self.include, self.response_format)
        vad, padding_ms = self.chunking()
        options = TranscriptionOptions(
            task="translate", language=language, languages=candidates,
            to_language=self.to_language,
            keywords=collect_keywords(self.prompt, self.keywords, self.hotwords),
            temperature=self.temperature, vad=vad, padding_ms=padding_ms)
        return options, Output(self.response_format, self.stream, include_logprobs,
                               granularities)


def check_unknown_fields(form: AudioForm) -> None:
    """A field the form doesn't know is refused, named: dropped, a client's field (a
    newer SDK's, a peer server's) would change nothing and nobody would know."""
    for name in form.unknown_fields():
        field = name.removesuffix("[]")
        if field in SPEAKER_FIELDS:
            raise InvalidRequest(f"{field}: {NO_SPEAKERS}.", param=field)
        known = ", ".join(type(form).model_fields)
        raise InvalidRequest(f"Unknown field '{name}'; this endpoint takes {known}.",
                             param=name, code="unknown_parameter")


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def last(value: Any) -> Any:
    """A repeated form field's last value, as a form's plain lookup gives it."""
    return value[-1] if isinstance(value, list) else value


def check_model(served: Iterable[str], model: str) -> None:
    names = list(served)
    if model not in names:
        raise ModelNotFound(
            f"The model '{model}' does not exist; this server serves {', '.join(names)}."
        )


def spoken_language(language: str | None, languages: Iterable[str] | None
                    ) -> tuple[str | None, tuple[str, ...]]:
    """(the spoken language if known, the candidates): each checked against the model's
    languages; a single candidate is the language."""
    candidates = tuple(dict.fromkeys(languages or ()))
    for param, codes in (("language", [language] if language else []), ("languages", candidates)):
        for code in codes:
            if code not in TRANSCRIPTION_LANGUAGES:
                raise UnsupportedLanguage(f"Language '{code}' is not supported for "
                                          f"transcription; supported: {SUPPORTED}.",
                                          param=param)
    if language and candidates and language not in candidates:
        raise InvalidRequest(f"language '{language}' is not among languages "
                             f"({', '.join(candidates)}).", param="language")
    if language is None and len(candidates) == 1:
        language = candidates[0]
    return language, candidates


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


def collect_keywords(prompt: str | None, *keyword_lists: Iterable[str] | None
                     ) -> tuple[str, ...]:
    pieces = [prompt or ""] + [word for words in keyword_lists for word in words or ()]
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
