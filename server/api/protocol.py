"""The API's own shapes: what a request may ask for and the model list (pydantic).

The response shapes of the audio endpoints are in ``granite_speech_server.formats.openai``,
where the formats that build them can import them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]


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
