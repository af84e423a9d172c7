"""A preprocessing process: decodes uploads and plans their segments beside the API
process, so that work is not bound to the API process's interpreter.

The API process (``granite_speech_server.preprocess.pool``) sends a job over a pipe:
the upload's bytes, the decode limits and the plan's options. This process answers on
the same pipe with messages naming the job, in this order:

- ``("head", job, Head)`` once the file's head is decoded (``decode_audio``), or
  ``("refused", job, error)`` if it can't be;
- ``("samples", job, array)`` and ``("plan", job, segments)``: a batch's samples always
  go before the batch, so the API process holds the audio of every segment it is given;
- the rest of the samples, ``("finished", job, total)`` and ``("planned", job)``, or
  ``("failed", job, error)`` where decoding or planning failed.

``("close", job)`` from the API process (the request ended, or its client went away)
stops the job: its decoder and planner stop at their next step, as in one process.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np

from granite_speech_server.audio.decode import decode_audio
from granite_speech_server.audio.progressive import DecodeCancelled, DecodingAudio
from granite_speech_server.audio.segment import PlanOptions, SpeechPlanner
from granite_speech_server.errors import INTERNAL_ERROR_MESSAGE, ServerError
from granite_speech_server.priority import lower_this_thread

log = logging.getLogger(__name__)

SAMPLES_PER_MESSAGE = 1 << 18
"""Samples per ``samples`` message at most (16 s, 1 MiB)."""


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
    data: bytes
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
            running[job_id] = state = _Running()
            threading.Thread(target=_run, args=(outbox, planner, job_id, rest[0], state, running),
                             name=f"job-{job_id}", daemon=True).start()
        elif kind == "close" and (state := running.get(job_id)) is not None:
            state.close()
    for state in list(running.values()):
        state.close()


def _run(outbox: Outbox, planner: SpeechPlanner, job_id: int, job: Job, state: _Running,
         running: dict[int, _Running]) -> None:
    try:
        _decode_and_plan(outbox, planner, job_id, job, state)
    finally:
        running.pop(job_id, None)


def _decode_and_plan(outbox: Outbox, planner: SpeechPlanner, job_id: int, job: Job,
                     state: _Running) -> None:
    try:
        decoded = decode_audio(job.data, **job.decode)
    except ServerError as exc:
        outbox.send("refused", job_id, exc)
        return
    except Exception:  # noqa: BLE001 - the request's answer, not this process's end
        log.exception("Decoding failed")
        outbox.send("refused", job_id, ServerError(INTERNAL_ERROR_MESSAGE))
        return
    audio = decoded.audio
    state.attach(audio)
    outbox.send("head", job_id, Head(decoded.source_format, decoded.codec,
                                     decoded.source_sample_rate, decoded.source_channels,
                                     decoded.declared_s, audio.total))
    lower_this_thread(job.niceness)
    sent = 0
    try:
        for batch in planner(audio, job.plan):
            sent = _forward(outbox, job_id, audio.until(batch[-1].audio_end), sent)
            outbox.send("plan", job_id, batch)
        # The plan ends at the end of the file: all of it is decoded. Its samples go
        # first, so the request has them all when its plan ends.
        sent = _forward(outbox, job_id, audio.whole(), sent)
        outbox.send("finished", job_id, sent)
        outbox.send("planned", job_id)
    except DecodeCancelled:
        pass
    except ServerError as exc:  # the upload's fault, found late
        outbox.send("failed", job_id, exc)
    except Exception:  # noqa: BLE001
        log.exception("Planning failed")
        outbox.send("failed", job_id, ServerError(INTERNAL_ERROR_MESSAGE))


def _forward(outbox: Outbox, job_id: int, samples: np.ndarray, sent: int) -> int:
    """Send ``samples`` past the first ``sent``; returns how many are sent now."""
    for start in range(sent, samples.size, SAMPLES_PER_MESSAGE):
        outbox.send("samples", job_id, samples[start : start + SAMPLES_PER_MESSAGE])
    return max(sent, samples.size)
