"""Handing freed heap memory back to the operating system.

Every request allocates and frees tens of megabytes from worker threads (the upload, the
decoded samples, VAD blocks, features). glibc keeps what those threads free in its arenas
instead of returning it, so the server's RSS climbs under steady traffic although nothing
leaks. Measured: 300 mixed requests grew RSS by 167 MB while Python and numpy allocations
stayed flat under tracemalloc, and one ``malloc_trim(0)`` gave all of it back. A trim every
few seconds keeps RSS flat.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
from collections.abc import Callable

TRIM_INTERVAL_S = 10.0


def freeze_startup_heap() -> None:
    """Exempt everything alive after start-up from the garbage collector's full passes.

    Start-up leaves millions of long-lived objects (torch, vLLM, transformers), and a full
    pass walks them all: 0.37-0.5 s with the GIL held, which every request in flight waits
    out, every few minutes under load (measured in the soak). Frozen, they are never
    walked again; what requests allocate is collected as before. (vLLM's engine core
    freezes its start-up heap the same way.)"""
    gc.collect()
    gc.freeze()


def libc_malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where there is none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return lambda: trim(0)


async def trim_heap_periodically(trim: Callable[[], object] | None,
                                 interval_s: float = TRIM_INTERVAL_S) -> None:
    """Trim every ``interval_s`` until cancelled (in a worker thread: a trim walks the
    heap and may take milliseconds)."""
    if trim is None:
        return
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(trim)
