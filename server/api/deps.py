"""Typed dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from granite_speech_server.asr.transcriber import Transcriber
from granite_speech_server.errors import NotReady
from granite_speech_server.state import AppState


def get_state(request: Request) -> AppState:
    return request.app.state.server


StateDep = Annotated[AppState, Depends(get_state)]


def get_transcriber(state: StateDep) -> Transcriber:
    if not state.ready or state.engine is None or not state.engine.alive:
        raise NotReady("The model is not ready to serve requests yet; retry shortly.",
                       headers={"Retry-After": "5"})
    return state.transcriber


TranscriberDep = Annotated[Transcriber, Depends(get_transcriber)]
