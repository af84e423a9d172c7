"""Typed dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from granite_speech_server.asr.transcriber import Transcriber
from granite_speech_server.state import AppState


def get_state(request: Request) -> AppState:
    return request.app.state.server


StateDep = Annotated[AppState, Depends(get_state)]


def get_transcriber(state: StateDep) -> Transcriber:
    # The gate admitted the request; the engine may have died since.
    refusal = state.phase.refusal(admitted=True)
    if refusal is not None:
        raise refusal
    return state.transcriber


TranscriberDep = Annotated[Transcriber, Depends(get_transcriber)]
