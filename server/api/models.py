"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

import time

from fastapi import APIRouter

from granite_speech_server.api.deps import StateDep
from granite_speech_server.api.protocol import ModelCard, ModelList
from granite_speech_server.formats.openai import ErrorResponse
from granite_speech_server.asr.prompt import TRANSCRIPTION_LANGUAGES
from granite_speech_server.errors import ModelNotFound
from granite_speech_server.state import AppState

router = APIRouter(tags=["models"])
_STARTED = int(time.time())


def model_cards(state: AppState) -> list[ModelCard]:
    return [
        ModelCard(
            id=name,
            created=_STARTED,
            root=state.settings.model,
            tasks=["transcription", "translation"],
            languages=list(TRANSCRIPTION_LANGUAGES),
        )
        for name in state.settings.model_names
    ]


@router.get("/v1/models", response_model=ModelList, summary="List served models")
async def list_models(state: StateDep) -> ModelList:
    return ModelList(data=model_cards(state))


@router.get("/v1/models/{model_id:path}", response_model=ModelCard,
            responses={404: {"model": ErrorResponse}}, summary="Describe one served model")
async def get_model(model_id: str, state: StateDep) -> ModelCard:
    for card in model_cards(state):
        if card.id == model_id:
            return card
    raise ModelNotFound(f"The model '{model_id}' does not exist.")
