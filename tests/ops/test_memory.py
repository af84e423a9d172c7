"""Freed heap memory goes back to the OS on a timer (glibc keeps it otherwise)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from server.memory import libc_malloc_trim, trim_heap_periodically

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_the_heap_is_trimmed_on_a_timer_off_the_event_loop():
    calls: list[bool] = []
    loop_thread = threading.get_ident()
    task = asyncio.create_task(trim_heap_periodically(
        lambda: calls.append(threading.get_ident() != loop_thread), interval_s=0.01))
    await asyncio.sleep(0.2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(calls) >= 3 and all(calls)


async def test_without_malloc_trim_there_is_nothing_to_do():
    await asyncio.wait_for(trim_heap_periodically(None), timeout=1)


async def test_glibc_trim_runs_here():
    trim = libc_malloc_trim()
    assert trim is not None  # the CI machine and the images run glibc
    trim()
