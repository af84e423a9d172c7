"""How vLLM's engine processes wait for each other's messages, tuned for small CPU hosts.

The engine core and its worker pass every step through shared-memory queues
(``vllm.distributed.device_communicators.shm_broadcast``). A reader that has read in
the last second busy-waits for the next message, spinning on ``sched_yield``: on a
GPU host that saves microseconds per step and costs an idle core. On a CPU host the
worker computes the step itself, so while it does, the engine core's spin takes CPU
from the cores that do the work (the model's, and the server's decoding and speech
detection): in ``python -m loadtest.cpu`` the engine core spent 4-7 CPU s of a 9 s
run spinning.

``install(spin_ms)`` shortens the spin to ``spin_ms`` and then waits on the queue's
notification socket. vLLM's notifications can be lost (it re-checks the queue every
5 s for that reason, and with the spin simply turned off a 9 s run took 23 s), so
for as long as vLLM would have spun, the wait re-checks every ``ACTIVE_POLL_MS``.
An idle engine still sleeps between vLLM's own 5 s re-checks.
"""

from __future__ import annotations

import functools
import logging
import os
import time

SPIN_MS_ENV = "GRANITE_SPEECH_ENGINE_SPIN_MS"
"""Set by the server from ``--engine-spin-ms``; read in each process of its engine."""
CPU_SPIN_MS = 2.0
"""The default on CPU: a step's reply from the other process within 2 ms (the worker's
next scheduler output, usually) is still caught by the spin."""
ACTIVE_POLL_MS = 1
"""How often a recently active reader re-checks its queue past the spin."""

logger = logging.getLogger(__name__)


def spin_ms_for_this_host() -> float | None:
    """``$GRANITE_SPEECH_ENGINE_SPIN_MS`` if set, else ``CPU_SPIN_MS`` on a CPU host,
    else None: vLLM's own spin, which GPU hosts are built for."""
    configured = os.environ.get(SPIN_MS_ENV, "").strip()
    if configured:
        return float(configured)
    from vllm.platforms import current_platform

    return CPU_SPIN_MS if current_platform.is_cpu() else None


def install(spin_ms: float) -> None:
    """Make every shared-memory queue reader of this process spin at most ``spin_ms``."""
    from vllm.distributed.device_communicators import shm_broadcast

    condition = shm_broadcast.SpinCondition
    vllm_wait = getattr(condition.wait, "__wrapped__", condition.wait)
    if not hasattr(condition, "record_read"):
        logger.warning("vLLM's SpinCondition has changed; its busy-wait is left as it is")
        return
    condition.wait = _bounded_wait(vllm_wait, spin_ms / 1000)


def _bounded_wait(vllm_wait, spin_s: float):
    @functools.wraps(vllm_wait)
    def wait(self, timeout_ms: int | None = None) -> None:
        # vLLM decides per instance, from busy_loop_s, whether to spin or to poll.
        active_s = self.__dict__.setdefault("_vllm_busy_loop_s", self.busy_loop_s)
        self.busy_loop_s = min(spin_s, active_s)
        if time.monotonic() <= self.last_read + active_s:
            timeout_ms = ACTIVE_POLL_MS if timeout_ms is None else min(timeout_ms,
                                                                        ACTIVE_POLL_MS)
        vllm_wait(self, timeout_ms)

    return wait
