"""The server's phase, driven through each of its states and read by all four of its
readers: the admission gate, /ready, the transcriber dependency and the engine watcher.
They must agree; a dead engine in particular is ``engine_unavailable`` at the gate and
in the dependency, whether or not the watcher looked yet. No vLLM: an engine stand-in
with ``alive`` is all the phase sees of an engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI

from granite_speech_server import lifecycle
from granite_speech_server.api.deps import get_transcriber
from granite_speech_server.api.gate import GateMiddleware
from granite_speech_server.app import create_app
from granite_speech_server.asr.transcriber import Transcriber
from granite_speech_server.config import Settings
from granite_speech_server.errors import ServerError
from granite_speech_server.phase import Phase
from granite_speech_server.state import AppState
from tests.ops.conftest import scrape, value

DELAY_S = 7.0


class StandInEngine:
    alive = True

    def load(self) -> tuple[int, int]:
        """Requests running and waiting, for /metrics."""
        return 0, 0


@dataclass(frozen=True)
class Case:
    drive: Callable[[AppState, StandInEngine], None]
    ready: tuple[int, str]
    """/ready's status code and body status."""
    gate: tuple[int, str | None, str | None]
    """The gate's status (200: let through), error code and rejections label."""
    deps: str | None
    """The code of the error the transcriber dependency raises for a request the gate
    admitted (None: it serves it)."""
    watcher_stops: bool
    """Whether the watcher's next look stops the server (exit code 1)."""
    phase_after_watcher: Phase


def never_served(state, engine):
    pass


def dead_during_start_up(state, engine):
    engine.alive = False  # the warm-up fails on its own; the watcher leaves it to it


def serving(state, engine):
    state.phase.started_serving()


def dead_unnoticed(state, engine):
    state.phase.started_serving()
    engine.alive = False


def dead_noticed(state, engine):
    dead_unnoticed(state, engine)
    assert lifecycle.stop_if_engine_died(state)


def draining(state, engine):
    state.phase.started_serving()
    assert state.phase.drain(), "it was serving: the shutdown delay is due"


def dead_while_draining(state, engine):
    draining(state, engine)
    engine.alive = False


def stopping_before_ready(state, engine):
    assert not state.phase.drain(), "it never served: stop at once"


def warmed_up_while_stopping(state, engine):
    stopping_before_ready(state, engine)
    state.phase.started_serving()  # a start-up that finished after the SIGTERM


CASES = {
    "starting": Case(never_served, (503, "starting"), (503, "not_ready", "not_ready"),
                     "not_ready", False, Phase.STARTING),
    "starting, engine dead": Case(dead_during_start_up, (503, "starting"),
                                  (503, "not_ready", "not_ready"), "not_ready", False,
                                  Phase.STARTING),
    "ready": Case(serving, (200, "ready"), (200, None, None), None, False, Phase.READY),
    "engine dead, watcher not looked yet": Case(
        dead_unnoticed, (503, "engine_dead"), (503, "engine_unavailable", "not_ready"),
        "engine_unavailable", True, Phase.ENGINE_DEAD),
    "engine dead, watcher acted": Case(
        dead_noticed, (503, "engine_dead"), (503, "engine_unavailable", "not_ready"),
        "engine_unavailable", False, Phase.ENGINE_DEAD),
    "draining": Case(draining, (503, "draining"), (503, "shutting_down", "shutting_down"),
                     None, False, Phase.DRAINING),
    "draining, engine dead": Case(
        dead_while_draining, (503, "draining"), (503, "shutting_down", "shutting_down"),
        "engine_unavailable", True, Phase.DRAINING),
    # No request is admitted before ready: the dependency, which only sees admitted
    # ones, serves them while the engine is alive.
    "SIGTERM before ready": Case(
        stopping_before_ready, (503, "draining"), (503, "shutting_down", "shutting_down"),
        None, False, Phase.DRAINING),
    "warmed up after SIGTERM": Case(
        warmed_up_while_stopping, (503, "draining"),
        (503, "shutting_down", "shutting_down"), None, False, Phase.DRAINING),
}


@dataclass
class Server:
    app: FastAPI
    state: AppState
    engine: StandInEngine
    shutdowns: list[float]
    """The delays of the shutdowns the app requested."""


@pytest.fixture
def server(vad_network) -> Server:
    engine = StandInEngine()
    app = create_app(Settings(model="m", shutdown_delay_seconds=DELAY_S), engine=engine)
    app.state.server.vad = vad_network  # as the bring-up, which these cases skip, loads it
    shutdowns: list[float] = []
    app.state.server.request_shutdown = lambda after_s=0.0: shutdowns.append(after_s)
    return Server(app, app.state.server, engine, shutdowns)


async def gate_answer(state: AppState) -> httpx.Response:
    """An upload through the gate alone, in front of an app that answers 200."""
    async def behind_the_gate(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    gate = GateMiddleware(behind_the_gate, state=state)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gate),
                                 base_url="http://test") as client:
        return await client.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"")})


def rejections(state: AppState) -> dict[str, float]:
    samples = scrape(state.metrics.render()[0].decode())
    return {limit: value(samples, "granite_speech_admission_rejections_total", limit=limit)
            for limit in ("not_ready", "shutting_down", "requests", "audio_seconds")}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
async def test_every_reader_gives_the_phases_answer(case: Case, server: Server):
    state = server.state
    case.drive(state, server.engine)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app),
                                 base_url="http://test") as client:
        ready = await client.get("/ready")
    assert (ready.status_code, ready.json()["status"]) == case.ready

    before = rejections(state)
    gate = await gate_answer(state)
    status, code, label = case.gate
    assert gate.status_code == status
    if code is None:
        assert state.admission.requests == 0, "the gate released its admission"
    else:
        assert gate.json()["error"]["code"] == code
        assert "retry-after" in gate.headers or code == "engine_unavailable"
    counted = {limit: n - before[limit] for limit, n in rejections(state).items()}
    assert counted == {limit: float(limit == label) for limit in counted}

    if case.deps is None:
        assert isinstance(get_transcriber(state), Transcriber)
    else:
        with pytest.raises(ServerError) as refused:
            get_transcriber(state)
        assert (refused.value.status_code, refused.value.code) == (503, case.deps)

    exit_code, shutdowns = state.exit_code, list(server.shutdowns)
    assert lifecycle.stop_if_engine_died(state) is case.watcher_stops
    if case.watcher_stops:
        assert (state.exit_code, server.shutdowns) == (1, [*shutdowns, DELAY_S])
    else:
        assert (state.exit_code, server.shutdowns) == (exit_code, shutdowns)
    assert state.phase.current is case.phase_after_watcher


def test_sigterm_after_the_engine_died_stops_at_once():
    state = AppState(settings=Settings(model="m"), engine=StandInEngine())
    dead_unnoticed(state, state.engine)
    assert lifecycle.stop_if_engine_died(state)
    assert not state.phase.drain(), "nothing to drain: the engine is gone"
    assert state.phase.current is Phase.DRAINING
