"""OpenAI audio API shapes (pydantic), in OpenAI's field order, plus additive extensions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]


class InputTokenDetails(BaseModel):
    audio_tokens: int
    text_tokens: int


class TokenUsage(BaseModel):
    type: Literal["tokens"] = "tokens"
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_token_details: InputTokenDetails
    seconds: float = Field(description="Extension: duration of the audio, in seconds.")


class TranscriptionResponse(BaseModel):
    text: str
    usage: TokenUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "granite-speech-server"
    root: str = Field(description="Extension: the checkpoint this name serves.")
    tasks: list[str] = Field(description="Extension: endpoints this model serves.")
    languages: list[str] = Field(description="Extension: ISO-639-1 codes it transcribes.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
