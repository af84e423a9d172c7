"""Freed heap memory goes back to the OS on a timer (glibc keeps it otherwise)."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref

import pytest

from granite_speech_server.memory import (
    freeze_startup_heap,
    libc_malloc_trim,
    trim_heap_periodically,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_the_heap_is_trimmed_on_a_timer_off_the_event_loop():
    calls: list[bool] = []
    loop_thread = threading.get_ident()
    task = asyncio.create_task(trim_heap_periodically(
        lambda: calls.append(threading.get_ident() != loop_thread), interval_s=0.01))
    for _ in range(6000):  # the deadline (60 s) only ends a hang
        if len(calls) >= 3:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(calls) >= 3 and all(calls)


async def test_without_malloc_trim_there_is_nothing_to_do():
    await asyncio.wait_for(trim_heap_periodically(None), timeout=1)


async def test_glibc_trim_runs_here():
    trim = libc_malloc_trim()
    assert trim is not None  # the CI machine and the images run glibc
    trim()


class _Node:
    pass


async def test_a_frozen_startup_heap_still_collects_what_comes_after():
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > 10_000  # this process's imports, left out of full passes
        node = _Node()
        node.self = node  # a cycle: only the collector frees it
        collected = weakref.ref(node)
        del node
        gc.collect()
        assert collected() is None
    finally:
        gc.unfreeze()
