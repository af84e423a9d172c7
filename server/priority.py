"""The CPU priority of the threads that prepare a request's audio.

Every request waits on the engine's steps, computed by vLLM's worker process; a
thread decoding one upload or scanning it for speech serves only that request. On a
machine with fewer cores than busy threads, the kernel shares the CPU out evenly, so
that thread slows every request's steps. Started with ``start_thread`` it runs at a
higher niceness: the engine gets the CPU first and the preparation what is left,
which is everything while the engine waits for work.

In ``python -m loadtest.cpu`` (2 cores, 4 clients) niceness 10 for these threads cut
the run's wall time from 9.25 to 8.21 s (mean of three runs each).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

MAX_NICENESS = 19


def start_thread(target: Callable[..., Any], *args: Any, name: str,
                 niceness: int) -> threading.Thread:
    """Run ``target(*args)`` in a daemon thread ``niceness`` steps below this
    process's priority."""

    def run() -> None:
        lower_this_thread(niceness)
        target(*args)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def lower_this_thread(niceness: int) -> None:
    # Linux schedules threads on their own and setpriority takes a thread id there;
    # elsewhere the call would renice the whole process.
    if niceness <= 0 or sys.platform != "linux":
        return
    thread = threading.get_native_id()
    current = os.getpriority(os.PRIO_PROCESS, thread)
    os.setpriority(os.PRIO_PROCESS, thread, min(MAX_NICENESS, current + niceness))
