"""What the plugin's changes to vLLM's waits cost and save, measured: a report, no verdict.

    python -m loadtest.engine_waits [--repeat N]

``shm_wait`` (``granite_speech_server.vllm_plugin.shm_wait``): a reader of one of vLLM's
shared-memory queues waits 0.5 s for its next message, in a process of its own (the
change is process-wide), with vLLM's spin and with the plugin's. Reported: the CPU
seconds the wait took (vLLM's spin takes most of a core) and the time from the write
to the read, with the writer's notification delivered and lost (vLLM's notifications
can be lost; the plugin's wait re-checks while vLLM would have spun).

``intake`` (``granite_speech_server.vllm_plugin.intake``), on a stand-in for vLLM's
engine core: how long an idle core takes to gather a burst sent one message at a time,
how long a busy core waits (it shouldn't), and how long a steady trickle of requests
holds an idle core before its step (at most ``MAX_GATHER_ROUNDS`` gathers).

The unit tests (``tests/test_vllm_plugin.py``) hold the behaviour; these are the
timings, which depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import statistics
import threading
import time
from dataclasses import dataclass

PAUSE_S = 0.5
"""How long a queue reader waits for its next message."""


@dataclass(frozen=True)
class MessageWait:
    cpu_s: float
    """CPU seconds the reader's thread spent waiting."""
    latency_s: float
    """From the write to the read."""


def next_message_wait(spin_ms: float | None, notified: bool) -> MessageWait:
    """A reader waits for a message written ``PAUSE_S`` after the one it last read, with
    vLLM's spin (``spin_ms`` None) or the plugin's. Run it in a fresh process."""
    from vllm.distributed.device_communicators.shm_broadcast import MessageQueue

    from granite_speech_server.vllm_plugin import shm_wait

    if spin_ms is not None:
        shm_wait.install(spin_ms)
    writer = MessageQueue(n_reader=1, n_local_reader=1)
    measured: dict[str, float] = {}

    def read() -> None:
        reader = MessageQueue.create_from_handle(writer.export_handle(), 0)
        reader.wait_until_ready()
        reader.dequeue()
        cpu = time.thread_time()
        reader.dequeue()
        measured["cpu"] = time.thread_time() - cpu
        measured["read"] = time.monotonic()

    thread = threading.Thread(target=read)
    thread.start()
    writer.wait_until_ready()
    writer.enqueue("step 1")
    time.sleep(PAUSE_S)
    if not notified:
        writer._spin_condition.notify = lambda: None
    written = time.monotonic()
    writer.enqueue("step 2")
    thread.join()
    return MessageWait(measured["cpu"], measured["read"] - written)


class StandInCore:
    """What ``intake`` uses of vLLM's engine core: its input queue, and work to do."""

    def __init__(self, busy: bool = False, input_queue: queue.Queue | None = None) -> None:
        self.input_queue = input_queue if input_queue is not None else queue.Queue()
        self.taken: list[str] = []
        self.busy = busy

    def has_work(self) -> bool:
        return self.busy or bool(self.taken)

    def _handle_client_request(self, kind: str, request: str) -> None:
        self.taken.append(request)


def vllm_take(core: StandInCore) -> None:
    """vLLM's intake, as far as it matters here: an idle core blocks for one request,
    then takes what is already queued."""
    if not core.has_work():
        core._handle_client_request(*core.input_queue.get())
    while not core.input_queue.empty():
        core._handle_client_request(*core.input_queue.get_nowait())


def send_later(core: StandInCore, count: int, apart_s: float) -> None:
    def send() -> None:
        for k in range(count):
            core.input_queue.put(("add", f"r{k}"))
            time.sleep(apart_s)

    threading.Thread(target=send, daemon=True).start()


def timed_intake(core: StandInCore, gather_ms: float) -> float:
    """Seconds one patched intake of ``core`` took."""
    from granite_speech_server.vllm_plugin.intake import gathering

    start = time.monotonic()
    gathering(vllm_take, gather_ms / 1000)(core)
    return time.monotonic() - start


def intake_runs() -> dict[str, tuple[float, int, str]]:
    """(seconds, requests taken, what it is compared with) of each intake case."""
    from granite_speech_server.vllm_plugin.intake import DEFAULT_GATHER_MS, MAX_GATHER_ROUNDS

    runs = {}
    burst = StandInCore()
    send_later(burst, 3, apart_s=0.0001)
    runs[f"burst of 3, 0.1 ms apart, {DEFAULT_GATHER_MS:g} ms gather"] = (
        timed_intake(burst, DEFAULT_GATHER_MS), len(burst.taken), "3 taken: one step")
    spread = StandInCore()
    send_later(spread, 3, apart_s=0.02)
    runs["burst of 3, 20 ms apart, 200 ms gather"] = (
        timed_intake(spread, 200), len(spread.taken), "~0.04 s + one gather")
    busy = StandInCore(busy=True)
    busy.input_queue.put(("add", "queued"))
    runs["busy core, 1000 ms gather"] = (timed_intake(busy, 1000), len(busy.taken),
                                         "~0 s: a busy core doesn't wait")
    trickle = StandInCore()
    send_later(trickle, 200, apart_s=0.01)
    runs["trickle every 10 ms, 50 ms gather"] = (
        timed_intake(trickle, 50), len(trickle.taken),
        f"at most {MAX_GATHER_ROUNDS} x 0.05 s (the trickle lasts 2 s)")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each wait (median shown)")
    parser.add_argument("--spin-ms", type=float, default=None,
                        help="the plugin's spin (default: shm_wait.CPU_SPIN_MS)")
    args = parser.parse_args(argv)
    from granite_speech_server.vllm_plugin.shm_wait import CPU_SPIN_MS

    spin_ms = CPU_SPIN_MS if args.spin_ms is None else args.spin_ms
    print(f"shared-memory queue reader, next message after {PAUSE_S} s "
          f"(median of {args.repeat}, each in a fresh process):")
    print(f"  {'':38} {'CPU s':>8} {'write->read ms':>15}")
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        for notified in (True, False):
            for label, spin in (("vLLM's spin (1 s)", None), (f"plugin ({spin_ms:g} ms)", spin_ms)):
                waits = [pool.apply(next_message_wait, (spin, notified))
                         for _ in range(args.repeat)]
                name = f"{label}, {'notified' if notified else 'notification lost'}"
                print(f"  {name:38} {statistics.median(w.cpu_s for w in waits):8.3f} "
                      f"{1000 * statistics.median(w.latency_s for w in waits):15.1f}")
    print("engine-core intake (a stand-in core):")
    for name, (seconds, taken, expected) in intake_runs().items():
        print(f"  {name:42} {seconds:7.3f} s, {taken:3d} taken   ({expected})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
