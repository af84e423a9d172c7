"""Liveness and readiness, for load balancers and Kubernetes probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from server.api.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the process is up and serving HTTP")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: the engine answered its warm-up and is alive")
async def ready(state: StateDep) -> JSONResponse:
    engine_alive = state.engine is not None and state.engine.alive
    if state.ready and engine_alive:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "starting" if not state.ready else "engine_dead"},
                        status_code=503)
