"""Liveness, readiness and metrics: what probes and scrapers call."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from granite_speech_server.api.deps import StateDep
from granite_speech_server.phase import Phase

router = APIRouter(tags=["operations"])


@router.get("/health", summary="Liveness: the process is up and serving HTTP")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: warmed up, engine alive, not shutting down",
            responses={503: {"description": "`starting`, `draining` or `engine_dead`"}})
async def ready(state: StateDep) -> JSONResponse:
    phase = state.phase.current
    return JSONResponse({"status": phase.value},
                        status_code=200 if phase is Phase.READY else 503)


@router.get("/metrics", summary="Prometheus metrics (text exposition format)",
            response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(state: StateDep) -> Response:
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)
