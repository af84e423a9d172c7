"""SIGTERM during start-up: the engine's start-up, blocked in a thread on a child process
(as vLLM's waits for its engine core), ends when the app abandons it; the SIGTERM handler
stops at once before readiness and drains after it. A stand-in for vLLM: a start that
spawns a child and waits for it, as vLLM's AsyncLLM waits for its engine core."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import threading
import time

import pytest
import uvicorn

from granite_speech_server import lifecycle
from granite_speech_server.config import Settings
from granite_speech_server.phase import Phase
from granite_speech_server.state import AppState


def _sleep_long() -> None:
    time.sleep(600)


class _Started:
    """What a finished start-up leaves: an engine the app must shut down."""

    def __init__(self) -> None:
        self.shut_down = False

    def shutdown(self) -> None:
        self.shut_down = True


def start_waiting_on_a_child(children: list, finished: threading.Event):
    def start(settings):
        child = multiprocessing.get_context("spawn").Process(target=_sleep_long)
        child.start()
        children.append(child)
        child.join()  # vLLM: the hand-shake with its engine core
        finished.set()
        if child.exitcode != 0:
            raise RuntimeError(f"Engine core initialization failed: exit {child.exitcode}")
        return _Started()
    return start


async def test_abandon_kills_the_engine_start_and_its_thread_returns(monkeypatch):
    # A child from before the start-up (in tests: the session's engine) is left alone.
    bystander = multiprocessing.get_context("spawn").Process(target=_sleep_long, daemon=True)
    bystander.start()
    children: list = []
    finished = threading.Event()
    monkeypatch.setattr(lifecycle.VllmEngine, "start",
                        start_waiting_on_a_child(children, finished))
    state = AppState(settings=Settings(model="unused"))
    bring_up = asyncio.create_task(asyncio.to_thread(state.engine_start.run, state))
    while not children:
        await asyncio.sleep(0.05)
    bring_up.cancel()  # what the app's shutdown does to its bring-up task first
    await state.engine_start.abandon()
    assert finished.is_set(), "the start-up thread still waits on its child"
    assert not children[0].is_alive()
    assert state.engine is None
    assert bystander.is_alive(), "a child the start-up didn't start was killed"
    bystander.kill()
    bystander.join()


async def test_abandon_before_the_thread_ran_keeps_the_engine_from_starting(monkeypatch):
    started = []
    monkeypatch.setattr(lifecycle.VllmEngine, "start", lambda settings: started.append(1))
    state = AppState(settings=Settings(model="unused"))
    await state.engine_start.abandon()
    with pytest.raises(lifecycle.StartAbandoned):
        state.engine_start.run(state)
    assert started == []


async def test_abandon_after_the_start_finished_leaves_the_engine_to_shut_down(monkeypatch):
    monkeypatch.setattr(lifecycle.VllmEngine, "start", lambda settings: _Started())
    state = AppState(settings=Settings(model="unused"))
    await asyncio.to_thread(state.engine_start.run, state)
    await state.engine_start.abandon()
    assert isinstance(state.engine, _Started) and not state.engine.shut_down


@pytest.mark.parametrize("ready", [False, True])
def test_sigterm_stops_at_once_before_ready_and_drains_after(ready):
    settings = Settings(model="unused", shutdown_delay_seconds=30)
    state = AppState(settings=settings)
    if ready:
        state.phase.started_serving()
    server = lifecycle.GracefulServer(uvicorn.Config(app=None), state)
    server.handle_exit(signal.SIGTERM, None)
    assert state.phase.current is Phase.DRAINING
    delay = server._stop_at - time.monotonic()
    if ready:
        assert delay > 20  # the shutdown delay: load balancers see readiness fail first
    else:
        assert delay <= 0
