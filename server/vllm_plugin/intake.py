"""How vLLM's engine core takes in requests when it wakes from idle: it waits a moment
for the rest of a burst.

The server submits a window's segments together (``granite_speech_server.asr.engine`` releases
them in one burst), but they reach the engine core one message at a time, each
deserialized by its input thread. An idle core wakes on the first and starts a step
encoding that segment alone; the others, in its queue a fraction of a millisecond
later, wait that whole step out (~20 ms at one client on the test machine, a
quarter of a short file's latency). ``install(gather_ms)`` makes a core that woke
from idle go on taking requests until ``gather_ms`` passes without one (at most
``MAX_GATHER_ROUNDS`` times that in all), so the burst is encoded in one step. A
busy core is unchanged: what arrives during a step is taken in before the next.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import time
from collections.abc import Callable

GATHER_MS_ENV = "GRANITE_SPEECH_ENGINE_GATHER_MS"
"""Set by the server from ``--engine-gather-ms``; read in the engine core's process."""
DEFAULT_GATHER_MS = 1.0
MAX_GATHER_ROUNDS = 4
"""A steady trickle of requests can't hold an idle core back longer than this many waits."""

logger = logging.getLogger(__name__)


def configured_gather_ms() -> float:
    """``$GRANITE_SPEECH_ENGINE_GATHER_MS`` if set, else ``DEFAULT_GATHER_MS`` (any host:
    an idle core's wait costs the same 1 ms on a GPU)."""
    configured = os.environ.get(GATHER_MS_ENV, "").strip()
    return float(configured) if configured else DEFAULT_GATHER_MS


def install(gather_ms: float) -> None:
    """Make this process's engine cores gather bursts for ``gather_ms`` (0: don't)."""
    from vllm.v1.engine.core import EngineCoreProc

    take = EngineCoreProc._process_input_queue
    vllm_take = getattr(take, "__wrapped__", take)
    if not hasattr(EngineCoreProc, "_handle_client_request"):
        logger.warning("vLLM's EngineCoreProc has changed; its intake is left as it is")
        return
    EngineCoreProc._process_input_queue = (
        gathering(vllm_take, gather_ms / 1000) if gather_ms > 0 else vllm_take)


def gathering(vllm_take, gather_s: float):
    """vLLM's ``_process_input_queue``, followed by a short wait for more when the core
    was idle before it and has work now."""

    @functools.wraps(vllm_take)
    def take(core) -> None:
        was_idle = not core.has_work()
        vllm_take(core)
        if was_idle and core.has_work():
            take_burst(core, gather_s)

    return take


def take_burst(core, gather_s: float, clock: Callable[[], float] = time.monotonic) -> None:
    deadline = clock() + MAX_GATHER_ROUNDS * gather_s
    while (left := deadline - clock()) > 0:
        try:
            request = core.input_queue.get(timeout=min(gather_s, left))
        except queue.Empty:
            return
        core._handle_client_request(*request)
