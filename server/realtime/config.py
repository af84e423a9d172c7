"""A transcription session's configuration: what ``session.update`` may set, in OpenAI's
shape (``openai.types.realtime.RealtimeTranscriptionSessionCreateRequest``), and the
effective configuration ``session.created`` / ``session.updated`` send back whole.

An update changes only the fields it names (``null`` clears one: ``turn_detection: null``
means manual commits). A field this server doesn't know, or can't honour (semantic VAD,
noise reduction, the transcription ``delay`` of OpenAI's own model), is refused by name:
the session keeps its configuration and the client gets an ``error`` event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from granite_speech_server.api.audio_form import collect_keywords, spoken_language
from granite_speech_server.errors import InvalidRequest, ModelNotFound
from granite_speech_server.realtime.turns import ServerVad

LOGPROBS = "item.input_audio_transcription.logprobs"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PcmFormat(Strict):
    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Literal[24000] = 24000


class PcmuFormat(Strict):
    type: Literal["audio/pcmu"]


class PcmaFormat(Strict):
    type: Literal["audio/pcma"]


AudioFormat = Annotated[PcmFormat | PcmuFormat | PcmaFormat, Field(discriminator="type")]


class TranscriptionSettings(Strict):
    model: str | None = None
    language: str | None = None
    languages: list[str] | None = None
    prompt: str | None = None
    keywords: list[str] | None = None


class ServerVadSettings(Strict):
    type: Literal["server_vad"]
    threshold: float = Field(0.5, gt=0, lt=1)
    prefix_padding_ms: int = Field(300, ge=0, le=5_000)
    silence_duration_ms: int = Field(500, ge=0, le=10_000)


class AudioInputSettings(Strict):
    format: AudioFormat | None = None
    noise_reduction: None = Field(None, description="Not available: always null.")
    transcription: TranscriptionSettings | None = None
    turn_detection: ServerVadSettings | None = None


class AudioSettings(Strict):
    input: AudioInputSettings | None = None


class TranscriptionSession(Strict):
    """The ``session`` of a transcription session's ``session.update``."""

    type: Literal["transcription"]
    audio: AudioSettings | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None


@dataclass(frozen=True)
class SessionConfig:
    """The effective configuration, checked: what the session runs with."""

    format_type: str
    model: str
    language: str | None
    languages: tuple[str, ...]
    prompt: str | None
    keywords: tuple[str, ...]
    """The client's keywords as given, echoed in ``session.updated``."""
    bias: tuple[str, ...]
    """What Granite's keyword biasing gets: the prompt's and the keywords, checked."""
    turn_detection: ServerVad | None
    include_logprobs: bool

    @classmethod
    def default(cls, model: str) -> SessionConfig:
        return cls(format_type="audio/pcm", model=model, language=None, languages=(),
                   prompt=None, keywords=(), bias=(), turn_detection=ServerVad(),
                   include_logprobs=False)

    def as_openai(self) -> dict[str, Any]:
        """The session object of ``session.created`` / ``session.updated``."""
        fmt: dict[str, Any] = {"type": self.format_type}
        if self.format_type == "audio/pcm":
            fmt["rate"] = 24000
        vad = self.turn_detection
        return {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "audio": {"input": {
                "format": fmt,
                "noise_reduction": None,
                "transcription": {"model": self.model, "language": self.language,
                                  "languages": list(self.languages), "prompt": self.prompt,
                                  "keywords": list(self.keywords)},
                "turn_detection": None if vad is None else {
                    "type": "server_vad", "threshold": vad.threshold,
                    "prefix_padding_ms": vad.prefix_padding_ms,
                    "silence_duration_ms": vad.silence_duration_ms},
            }},
            "include": [LOGPROBS] if self.include_logprobs else [],
        }

    def updated(self, update: TranscriptionSession, served: Sequence[str]) -> SessionConfig:
        """This configuration with ``update``'s fields applied and checked."""
        merged = _merge(self.as_openai(), update.model_dump(exclude_unset=True))
        audio_in = merged["audio"]["input"]
        settings = audio_in["transcription"] or {}
        model = settings.get("model") or self.model
        if model not in served:
            raise ModelNotFound(f"The model '{model}' does not exist; this server serves "
                                f"{', '.join(served)}.", param="audio.input.transcription.model")
        language, candidates = spoken_language(settings.get("language"),
                                               settings.get("languages"))
        keywords = tuple(settings.get("keywords") or ())
        vad = audio_in["turn_detection"]
        return SessionConfig(
            format_type=audio_in["format"]["type"], model=model, language=language,
            languages=candidates, prompt=settings.get("prompt"), keywords=keywords,
            bias=collect_keywords(settings.get("prompt"), keywords),
            turn_detection=None if vad is None else ServerVad(
                threshold=vad["threshold"], prefix_padding_ms=vad["prefix_padding_ms"],
                silence_duration_ms=vad["silence_duration_ms"]),
            include_logprobs=LOGPROBS in (merged.get("include") or []))


SessionModel = TypeVar("SessionModel", bound=BaseModel)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update``'s keys over ``base``'s, nested objects merged key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def check_update(raw: Any, shape: type[SessionModel] = TranscriptionSession) -> SessionModel:
    """A client's ``session`` object as ``shape``, or an InvalidRequest naming what is
    wrong in it (a field this server doesn't have: "not supported")."""
    try:
        return shape.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        if first["type"] == "extra_forbidden":
            message = f"session.{where}: not supported by this server"
        else:
            message = f"session.{where}: {first['msg']}"
        raise InvalidRequest(message, param=f"session.{where}") from None
