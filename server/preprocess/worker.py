"""A preprocessing process: decodes uploads and plans their segments beside the API
process, so that work is not bound to the API process's interpreter.

The API process (``granite_speech_server.preprocess.pool``) sends a job over a pipe:
the decode limits and the plan's options, then the descriptor of memory holding the
upload (``granite_speech_server.preprocess.shared``). This process answers on
the same pipe with messages naming the job, in this order:

- ``("head", job, Head)`` once the file's head is decoded (``decode_audio``), or
  ``("refused", job, error)`` if it can't be;
- ``("published", job, n)``: the job's first n samples are in its buffer, memory both
  processes map (``granite_speech_server.preprocess.shared``), each new buffer first
  announced by ``("buffer", job, size)`` and its descriptor;
- ``("plan", job, segments)``, each after the samples it covers are published;
- ``("finished", job, total)`` and ``("planned", job)``, or ``("failed", job, error)``
  where decoding or planning failed.

``("close", job)`` from the API process (the request ended, or its client went away)
stops the job: its decoder and planner stop at their next step, as in one process.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle

from granite_speech_server.audio.decode import decode_audio
from granite_speech_server.audio.progressive import DecodeCancelled, DecodingAudio
from granite_speech_server.audio.segment import PlanOptions, SpeechPlanner
from granite_speech_server.errors import INTERNAL_ERROR_MESSAGE, ServerError
from granite_speech_server.preprocess.shared import SharedBuffers, map_bytes
from granite_speech_server.priority import lower_this_thread

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Head:
    """What ``DecodedAudio`` says of the upload, once its head is decoded."""

    source_format: str
    codec: str
    source_sample_rate: int
    source_channels: int
    declared_s: float | None
    total: int | None
    """The number of samples, when the head was the whole file."""


@dataclass(frozen=True)
class Job:
    size: int
    """The upload's bytes, whose memory's descriptor follows the job on the pipe."""
    decode: dict
    """``decode_audio``'s keyword arguments."""
    plan: PlanOptions
    niceness: int
    """For the job's planning once the head is decoded (``granite_speech_server.priority``)."""


class Outbox:
    """The pipe to the API process, shared by the jobs' threads."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, *message) -> None:
        with self._lock:
            self._conn.send(message)

    def send_buffer(self, job_id: int, fd: int, samples: int) -> None:
        """A buffer's size and descriptor, back to back (the reader takes them so)."""
        try:
            with self._lock:
                self._conn.send(("buffer", job_id, samples))
                send_handle(self._conn, fd, 0)
        finally:
            os.close(fd)


class _Running:
    """A job's audio, once decoding began, and whether the API process closed it."""

    def __init__(self) -> None:
        self.audio: DecodingAudio | None = None
        self.closed = False

    def close(self) -> None:
        self.closed = True
        if self.audio is not None:
            self.audio.close()

    def attach(self, audio: DecodingAudio) -> None:
        self.audio = audio
        if self.closed:  # closed while its head was decoding
            audio.close()


def serve(conn: Connection) -> None:
    """The process's main loop: jobs in, each run in a thread of its own, until the
    pipe closes or says None."""
    import torch

    from granite_speech_server.audio.silero import SileroNetwork

    torch.set_num_threads(1)  # many jobs' threads at once; see granite_speech_server.__main__
    planner = SpeechPlanner(SileroNetwork())
    outbox = Outbox(conn)
    running: dict[int, _Running] = {}
    outbox.send("ready")
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            message = None
        if message is None:
            break
        kind, job_id, *rest = message
        if kind == "job":
            job: Job = rest[0]
            data = map_bytes(recv_handle(conn), job.size)
            running[job_id] = state = _Running()
            threading.Thread(target=_run, name=f"job-{job_id}", daemon=True,
                             args=(outbox, planner, job_id, job, data, state, running)).start()
        elif kind == "close" and (state := running.get(job_id)) is not None:
            state.close()
    for state in list(running.values()):
        state.close()


def _run(outbox: Outbox, planner: SpeechPlanner, job_id: int, job: Job, data,
         state: _Running, running: dict[int, _Running]) -> None:
    try:
        _decode_and_plan(outbox, planner, job_id, job, data, state)
    finally:
        running.pop(job_id, None)


def _decode_and_plan(outbox: Outbox, planner: SpeechPlanner, job_id: int, job: Job,
                     data, state: _Running) -> None:
    buffers = SharedBuffers()
    try:
        decoded = decode_audio(data, allocate=buffers.allocate, **job.decode)
    except ServerError as exc:
        buffers.close()
        outbox.send("refused", job_id, exc)
        return
    except Exception:  # noqa: BLE001 - the request's answer, not this process's end
        buffers.close()
        log.exception("Decoding failed")
        outbox.send("refused", job_id, ServerError(INTERNAL_ERROR_MESSAGE))
        return
    audio = decoded.audio
    state.attach(audio)
    outbox.send("head", job_id, Head(decoded.source_format, decoded.codec,
                                     decoded.source_sample_rate, decoded.source_channels,
                                     decoded.declared_s, audio.total))
    lower_this_thread(job.niceness)
    publish = _Publisher(outbox, job_id, audio, buffers)
    try:
        for batch in planner(audio, job.plan):
            publish()
            outbox.send("plan", job_id, batch)
        # The plan ends at the end of the file: all of it is decoded, and published
        # before the plan's end, so the request has every sample when its plan ends.
        total = audio.whole().size
        publish()
        outbox.send("finished", job_id, total)
        outbox.send("planned", job_id)
    except DecodeCancelled:
        pass
    except ServerError as exc:  # the upload's fault, found late
        outbox.send("failed", job_id, exc)
    except Exception:  # noqa: BLE001
        log.exception("Planning failed")
        outbox.send("failed", job_id, ServerError(INTERNAL_ERROR_MESSAGE))
    finally:
        buffers.close()


class _Publisher:
    """Tells the API process how many of a job's samples it may read, and hands it
    each new buffer first."""

    def __init__(self, outbox: Outbox, job_id: int, audio: DecodingAudio,
                 buffers: SharedBuffers) -> None:
        self.outbox, self.job_id, self.audio, self.buffers = outbox, job_id, audio, buffers
        self.published = 0

    def __call__(self) -> None:
        # The count before the buffer: a buffer that grew meanwhile holds a copy of
        # every sample counted.
        available = self.audio.available
        buffer = self.audio.buffer
        if (fd := self.buffers.hand_over(buffer)) is not None:
            self.outbox.send_buffer(self.job_id, fd, buffer.size)
        if available > self.published:
            self.published = available
            self.outbox.send("published", self.job_id, available)


def main(argv: list[str]) -> None:
    """``python -m granite_speech_server.preprocess.worker FD CORE LOG_LEVEL LOG_FORMAT``,
    as the pool starts it: FD is its end of the pipe, CORE the one it runs on (``-``:
    any), before any thread starts."""
    from granite_speech_server.logs import configure_logging

    fd, core, level, log_format = argv
    # The server drains on SIGTERM/SIGINT and then closes the pipe: a signal sent to the
    # whole process group (Ctrl-C, an init that forwards to the group) must not end a
    # job the drain is waiting for. Without the server, the pipe's end ends this process.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if core != "-":
        os.sched_setaffinity(0, {int(core)})
    configure_logging(level, log_format)
    serve(Connection(int(fd)))


if __name__ == "__main__":
    # The module under its own name: what this process pickles (``Head``) must unpickle
    # in the API process, where this module isn't __main__.
    from granite_speech_server.preprocess import worker

    worker.main(sys.argv[1:])
