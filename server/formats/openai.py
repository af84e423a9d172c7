"""OpenAI's audio API response shapes (pydantic), in OpenAI's field order, plus additive
extensions.

Here, not in ``api/``, because both sides use them: the formats build bodies and stream
events from them, the API documents its responses with them. Request-side types (the
forms, ``ResponseFormat``) stay with the API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer


class OmitNoneModel(BaseModel):
    """A model whose optional fields (default ``None``) are left out of its JSON when unset.

    OpenAI omits such keys (``logprobs`` unless asked for, ``words`` unless word
    timestamps were asked for) rather than sending ``null``; strict clients tell
    the two apart. Only this model's own keys are dropped, so a nested model that
    sends ``null`` on purpose (``ErrorDetail.param``) keeps it.
    """

    # No return annotation on purpose: pydantic would take it as the serialized
    # schema, and /docs would show these models as a bare "any".
    @model_serializer(mode="wrap")
    def _omit_none(self, handler: SerializerFunctionWrapHandler):  # noqa: ANN202
        data = handler(self)
        fields = type(self).model_fields
        return {
            key: value for key, value in data.items()
            if value is not None or key not in fields or fields[key].default is not None
        }


class InputTokenDetails(BaseModel):
    audio_tokens: int = Field(description="Audio tokens the model read (the encoder's output).")
    text_tokens: int = Field(description="Prompt text tokens the model read.")


class TokenUsage(BaseModel):
    """Usage by tokens, as OpenAI reports it for json responses and streams."""

    type: Literal["tokens"] = "tokens"
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_token_details: InputTokenDetails
    seconds: float = Field(description="Extension: duration of the audio, in seconds.")


class DurationUsage(BaseModel):
    """Usage by audio duration: the only usage shape OpenAI (and its SDK's types) have
    for verbose_json. The token counts ride along as extensions."""

    type: Literal["duration"] = "duration"
    seconds: float = Field(description="Duration of the audio, in seconds.")
    input_tokens: int = Field(description="Extension: as in token usage.")
    output_tokens: int = Field(description="Extension: as in token usage.")
    total_tokens: int = Field(description="Extension: as in token usage.")
    input_token_details: InputTokenDetails = Field(description="Extension: as in token usage.")


class TokenLogprobOut(BaseModel):
    token: str = Field(description="The token as text.", examples=[" hello"])
    logprob: float = Field(description="Natural log of the token's probability.",
                           examples=[-0.0123])
    bytes: list[int] = Field(description="The token's UTF-8 bytes.",
                             examples=[[32, 104, 101, 108, 108, 111]])


class TranscriptionLanguage(BaseModel):
    code: str = Field(description="ISO-639-1 code of a language detected in the audio.",
                      examples=["en"])


LANGUAGES_DESCRIPTION = (
    "Transcriptions only: the language the transcript is written in, which Granite writes "
    "as it hears it (detected from the text, among `languages` when given). Empty when it "
    "couldn't be told reliably (very short or mixed text).")


class TranscriptionResponse(OmitNoneModel):
    """``response_format=json`` (transcriptions and translations)."""

    text: str = Field(description="The transcribed (or translated) text.",
                      examples=["Hello, and welcome."])
    languages: list[TranscriptionLanguage] | None = Field(
        default=None, description=LANGUAGES_DESCRIPTION, examples=[[{"code": "en"}]])
    logprobs: list[TokenLogprobOut] | None = Field(
        default=None,
        description="Log probabilities of the output tokens; only with `include[]=logprobs`.")
    usage: TokenUsage


class TranscriptionSegment(BaseModel):
    """One segment of the plan: a stretch of audio the model transcribed on its own."""

    id: int = Field(description="Index of the segment, from 0.")
    seek: int = Field(description="Start of the segment in 10 ms frames (Whisper's convention).")
    start: float = Field(description="Start of the segment in the audio, in seconds.")
    end: float = Field(description="End of the segment in the audio, in seconds.")
    text: str = Field(description="Text of the segment.")
    tokens: list[int] = Field(description="Output token ids of the segment.")
    temperature: float = Field(description="Sampling temperature used for the segment.")
    avg_logprob: float = Field(
        description="Mean log probability of the segment's output tokens (0 when it has none).")
    compression_ratio: float = Field(
        description="UTF-8 length of the text over its zlib-compressed length (Whisper's "
        "definition; above 2.4 suggests repetition). 0 for an empty text.")
    no_speech_prob: float = Field(
        description="Probability that the segment holds no speech. Not estimated yet: always 0.")


class TranscriptionWord(BaseModel):
    word: str = Field(description="The word, without surrounding spaces.", examples=["hello"])
    start: float = Field(description="Start of the word, in seconds.", examples=[0.52])
    end: float = Field(description="End of the word, in seconds.", examples=[0.9])


class VerboseTranscriptionResponse(OmitNoneModel):
    """``response_format=verbose_json`` (transcriptions and translations)."""

    task: Literal["transcribe", "translate"]
    language: str = Field(
        description="Lowercase English name of the output language: for a transcription, "
        "the one the client named, or else the one detected (`unknown` when none could "
        "be told); for a translation, its target.", examples=["english"])
    duration: float = Field(description="Duration of the audio, in seconds.")
    text: str
    segments: list[TranscriptionSegment] | None = Field(
        default=None,
        description="Present unless only `word` timestamps were asked for.")
    words: list[TranscriptionWord] | None = Field(
        default=None, description="Present with `timestamp_granularities[]=word`.")
    usage: DurationUsage


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# Streaming (``stream=true``): each event is one ``data:`` line of a text/event-stream.

class TranscriptTextDelta(OmitNoneModel):
    model_config = ConfigDict(json_schema_extra={
        "examples": [{"type": "transcript.text.delta", "delta": " and welcome"}]})

    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    delta: str = Field(description="Text that follows what was sent so far, in audio order.")
    logprobs: list[TokenLogprobOut] | None = Field(
        default=None, description="Log probabilities of the delta's tokens; only with "
        "`include[]=logprobs`.")


class TranscriptTextDone(OmitNoneModel):
    type: Literal["transcript.text.done"] = "transcript.text.done"
    text: str = Field(description="The whole text: the concatenation of every delta.")
    languages: list[TranscriptionLanguage] | None = Field(
        default=None, description=LANGUAGES_DESCRIPTION)
    logprobs: list[TokenLogprobOut] | None = Field(
        default=None, description="Log probabilities of every output token; only with "
        "`include[]=logprobs`.")
    usage: TokenUsage


class StreamError(BaseModel):
    """A failure after the stream began. The OpenAI SDK raises an ``APIError`` with
    ``error.message`` for any event whose data object has an ``error`` key."""

    type: Literal["error"] = "error"
    error: ErrorDetail
