"""The API process's side of the preprocessing processes: each upload is decoded and
planned in one of them (``granite_speech_server.preprocess.worker``), and its samples and
plan come back as they are made.

Why processes: decoding, resampling and the VAD take ~90% of the server's own CPU per
audio second, and in threads of the API process they share one interpreter with each
other and with the event loop: on two cores the server served less audio per second
than on one (``python -m loadtest.capacity``). A process per core runs them side by
side; the API process keeps the HTTP, the engine client and the orchestration.

The samples are decoded once, into memory both processes map
(``granite_speech_server.preprocess.shared``), so a recording is held once. What a
request had in one process it keeps here: ``decode`` returns once the head is decoded (the duration is then known for admission) while the rest decodes; the plan's
batches arrive in audio order, each with its samples; closing the audio (the request
ended, or its client went away) stops the job in its process; an upload refused late
fails the request with its own error. A process that dies fails its jobs with a 500
and is started again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from pathlib import Path

from granite_speech_server.audio.decode import TARGET_SAMPLE_RATE, DecodedAudio
from granite_speech_server.audio.progressive import DecodingAudio
from granite_speech_server.audio.segment import PlannedSegment, PlanOptions
from granite_speech_server.errors import INTERNAL_ERROR_MESSAGE, ServerError
from granite_speech_server.preprocess import worker
from granite_speech_server.preprocess.shared import UploadSpool, map_buffer
from granite_speech_server.preprocess.worker import Head, Job

log = logging.getLogger(__name__)

WORKER_LOST_MESSAGE = "The audio preprocessing process stopped unexpectedly."

AUTO_WORKERS_MAX = 8
"""Processes started by default, at most: enough for an H100's rate (loadtest/RESULTS.md,
"Front-end capacity"). A pod without a CPU limit sees every core of its node, and each
process holds ~190 MB."""


def usable_cores() -> int:
    """CPU cores this process may use: its affinity, within a cgroup's CPU quota
    (a Kubernetes CPU limit) where there is one."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


class RemoteAudio(DecodingAudio):
    """An upload's samples as its preprocessing process forwards them, and its plan."""

    def __init__(self, on_close) -> None:
        # Its buffers are the process's (``share``), with only final samples counted.
        super().__init__(0, hold_back=0)
        self.batches: asyncio.Queue = asyncio.Queue()
        self._on_close = on_close

    def close(self) -> None:
        super().close()
        self._on_close()

    async def plan(self) -> AsyncIterator[list[PlannedSegment]]:
        while (batch := await self.batches.get()) is not None:
            if isinstance(batch, BaseException):
                raise batch
            yield batch


class _RemoteJob:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.head: asyncio.Future = loop.create_future()
        self.audio: RemoteAudio | None = None


class _Worker:
    """One preprocessing process, its pipe, and the jobs it runs."""

    def __init__(self, index: int, pool: PreprocessPool) -> None:
        self.index, self.pool = index, pool
        self.jobs: dict[int, _RemoteJob] = {}
        self._send_lock = threading.Lock()
        self.alive = False
        self._start()

    def _start(self) -> None:
        # A fresh interpreter running the worker module, not a fork (torch's threads)
        # nor multiprocessing's spawn (which imports the parent's __main__ again).
        ours, theirs = socket.socketpair()
        core = "-"
        if self.pool.pinned:
            # One core each: its threads then never hold two cores taking turns at its
            # one interpreter lock (+11% CPU per audio second on two cores, unpinned).
            cores = sorted(os.sched_getaffinity(0))
            core = str(cores[self.index % len(cores)])
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", worker.__name__, str(theirs.fileno()), core,
                 *self.pool.log_settings], pass_fds=[theirs.fileno()])
        self.conn = Connection(ours.detach())
        try:
            ready = self.conn.recv()
        except (EOFError, OSError):
            ready = None
        if ready != ("ready",):
            raise RuntimeError(f"a preprocessing process failed to start "
                               f"(exit code {self.process.poll()})")
        self.alive = True
        threading.Thread(target=self._read, name=f"preprocess-{self.index}-reader",
                         daemon=True).start()

    def send(self, *message) -> None:
        with self._send_lock:
            self.conn.send(message)

    def send_job(self, job_id: int, job: Job, fd: int) -> None:
        """The job, then its upload's descriptor (closed here)."""
        try:
            with self._send_lock:
                self.conn.send(("job", job_id, job))
                send_handle(self.conn, fd, self.process.pid)
        finally:
            os.close(fd)

    def _read(self) -> None:
        while True:
            try:
                kind, job_id, *rest = self.conn.recv()
                if kind == "buffer":  # its descriptor follows, whoever still wants it
                    rest = [map_buffer(recv_handle(self.conn), rest[0])]
            except (EOFError, OSError):
                break
            job = self.jobs.get(job_id)
            if job is None:
                continue
            try:
                self._deliver(job_id, job, kind, rest)
            except Exception:  # noqa: BLE001 - one job's failure; the reader goes on
                log.exception("Preprocessing message %r failed", kind)
                self.jobs.pop(job_id, None)
                self._fail(job, ServerError(INTERNAL_ERROR_MESSAGE))
        self.alive = False
        self._fail_all(ServerError(WORKER_LOST_MESSAGE))
        if not self.pool.closing:
            log.error("Preprocessing process %d exited (code %s); starting another",
                      self.index, self.process.wait())
            try:
                self._start()
            except Exception:  # noqa: BLE001 - the pool goes on with the others
                log.exception("Preprocessing process %d could not be started again",
                              self.index)

    def _deliver(self, job_id: int, job: _RemoteJob, kind: str, rest: list) -> None:
        """Runs in the reader thread: samples go straight into the audio (its one
        writer); what the event loop awaits goes through the loop."""
        if kind == "published":
            job.audio.share(job.audio.buffer, rest[0])
        elif kind == "buffer":
            job.audio.share(rest[0], job.audio.written)
        elif kind == "head":
            job.audio = RemoteAudio(on_close=lambda: self.close_job(job_id))
            job.loop.call_soon_threadsafe(_settle, job.head, rest[0])
        elif kind == "plan":
            job.loop.call_soon_threadsafe(job.audio.batches.put_nowait, rest[0])
        elif kind == "planned":  # the job's last message
            self.jobs.pop(job_id, None)
            job.loop.call_soon_threadsafe(job.audio.batches.put_nowait, None)
        elif kind == "finished":
            job.audio.finish(rest[0])
        elif kind in ("refused", "failed"):
            self.jobs.pop(job_id, None)
            self._fail(job, rest[0])

    def _fail(self, job: _RemoteJob, error: BaseException) -> None:
        if job.audio is None:
            job.loop.call_soon_threadsafe(_settle, job.head, error)
            return
        job.audio.fail(error)
        job.loop.call_soon_threadsafe(job.audio.batches.put_nowait, error)

    def _fail_all(self, error: BaseException) -> None:
        jobs, self.jobs = self.jobs, {}
        for job in jobs.values():
            self._fail(job, error)

    def close_job(self, job_id: int) -> None:
        """The request is done with the job's audio: stop the job if it still runs."""
        if self.jobs.pop(job_id, None) is not None and self.alive:
            try:
                self.send("close", job_id)
            except OSError:
                pass  # the process is gone: its reader fails what was left

    def stop(self, timeout_s: float) -> None:
        try:
            with self._send_lock:
                self.conn.send(None)
        except OSError:
            pass
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _settle(future: asyncio.Future, outcome) -> None:
    if future.done():  # the request was cancelled meanwhile
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class PreprocessPool:
    """``size`` preprocessing processes; each upload goes to the least busy one."""

    def __init__(self, size: int, *, pin: bool = True, log_level: str = "info",
                 log_format: str = "text") -> None:
        """``pin``: one core per process, where the cores are this server's alone (a
        CPU-manager pod, taskset; within a CFS quota over a node's cores, a pinned
        process would wait for one core while others idle). Not where the engine
        computes on the same CPU: vLLM pins its worker there, and a process pinned
        beside it waits while the other core idles (one client's requests took 1.13x as
        long, against 0.87x unpinned, in ``loadtest.bench --compare-vllm``)."""
        self.closing = False
        self.log_settings = (log_level, log_format)
        self.pinned = pin and size == len(os.sched_getaffinity(0)) == usable_cores()
        self._ids = itertools.count()
        self.workers = [_Worker(index, self) for index in range(size)]

    async def decode(self, upload: UploadSpool, *, plan: PlanOptions, niceness: int,
                     **decode: object) -> DecodedAudio:
        """``decode_audio`` of the upload, run in a preprocessing process, which maps the
        spool's own memory and makes the plan there too: the audio's ``plan``. Raises
        what ``decode_audio`` raises."""
        live = [w for w in self.workers if w.alive] or self.workers
        chosen = min(live, key=lambda w: len(w.jobs))
        job_id = next(self._ids)
        job = chosen.jobs[job_id] = _RemoteJob(asyncio.get_running_loop())
        try:
            chosen.send_job(job_id, Job(upload.size, decode, plan, niceness), upload.share())
        except OSError as exc:
            chosen.jobs.pop(job_id, None)
            raise ServerError(WORKER_LOST_MESSAGE) from exc
        try:
            head: Head = await job.head
        except asyncio.CancelledError:
            chosen.close_job(job_id)
            raise
        audio = job.audio
        if head.total is not None:  # the head was the whole file; its samples may still
            audio_s = head.total / TARGET_SAMPLE_RATE  # be on their way
        else:
            audio_s = head.declared_s
        return DecodedAudio(audio, head.source_format, head.codec, head.source_sample_rate,
                            head.source_channels, audio_s, plan=audio.plan())

    def close(self, timeout_s: float = 5.0) -> None:
        self.closing = True
        for w in self.workers:
            w.stop(timeout_s)
