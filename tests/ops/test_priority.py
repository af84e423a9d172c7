"""The threads that prepare a request's audio run below the engine's CPU priority."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import pytest

from granite_speech_server.asr.transcriber import planned_ahead
from granite_speech_server.priority import start_thread

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")


def niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_a_started_thread_runs_that_much_nicer_than_its_starter():
    seen: list[int] = []
    before = niceness()
    start_thread(lambda: seen.append(niceness()), name="t", niceness=7).join()
    start_thread(lambda: seen.append(niceness()), name="t", niceness=0).join()
    assert seen == [min(19, before + 7), before]
    assert niceness() == before


def test_the_plan_is_computed_at_the_niceness_asked_for():
    seen: list[int] = []

    def windows():
        seen.append(niceness())
        yield []

    async def plan() -> None:
        async for _ in planned_ahead(windows(), niceness=5):
            pass

    before = niceness()
    asyncio.run(plan())
    assert seen == [min(19, before + 5)]
