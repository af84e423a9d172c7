"""What every realtime session does with its live audio, whatever it makes of the turns.

A client event at a time (``handle``); ``append`` decodes and resamples the audio, runs the
server VAD over it and hands each turn event to the session's ``on_turn_event``; audio no
turn can need any more is let go. Server events leave through ``send``. A client's mistake
raised as a ``ServerError`` becomes an ``error`` event and the session goes on. Work a
session starts (transcriptions, translations) is tracked, so closing it waits for that
work (a drain) or cancels it, which aborts it in the engine (a client that left).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

from granite_speech_server.admission import Admission
from granite_speech_server.asr.transcript import Transcript
from granite_speech_server.audio.features import SAMPLE_RATE
from granite_speech_server.audio.silero import SileroNetwork
from granite_speech_server.errors import InvalidRequest, Overloaded, ServerError, error_body
from granite_speech_server.metrics import Metrics
from granite_speech_server.realtime.audio_in import InputAudio
from granite_speech_server.realtime.buffer import StreamBuffer
from granite_speech_server.realtime.turns import ServerVad, TurnDetector, TurnEvent

Send = Callable[[dict[str, Any]], Awaitable[None]]
METRICS_ENDPOINT = "/v1/realtime"
"""The ``endpoint`` label of realtime turns in the transcript metrics."""


@dataclass(frozen=True)
class Accounting:
    """Where a session's turns are admitted and counted: the server's own admission (a
    turn is audio in flight like an upload) and metrics."""

    admission: Admission
    metrics: Metrics


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def ms(samples: int) -> int:
    return samples * 1000 // SAMPLE_RATE


class LiveSession:
    kind = "live"
    """The metrics' ``session`` label."""

    def __init__(self, *, network: SileroNetwork, send: Send, accounting: Accounting,
                 format_type: str, vad: ServerVad | None, max_turn_seconds: float,
                 max_buffer_seconds: float) -> None:
        self.id = new_id("sess")
        self.accounting = accounting
        self.network = network
        self.send = send
        self.max_turn_samples = int(max_turn_seconds * SAMPLE_RATE)
        self.max_buffer_samples = int(max_buffer_seconds * SAMPLE_RATE)
        self.audio = InputAudio(format_type)
        self.buffer = StreamBuffer()
        self.vad = vad
        self.detector = self._new_detector()
        self.work: set[asyncio.Task] = set()
        self.pending_samples = 0
        """Audio of turns taken and not transcribed yet: with what the buffer holds, it
        bounds what a client sending faster than real time can make the server hold."""
        self.closed = False
        """Set when the client asked the session to end (its socket then closes)."""

    # ---- what a session makes of its events and turns ------------------------------------

    def session_object(self) -> dict[str, Any]:
        """The effective configuration, as ``session.created`` / ``updated`` carry it."""
        raise NotImplementedError

    async def dispatch(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    async def on_turn_event(self, event: TurnEvent) -> None:
        raise NotImplementedError

    async def take_turn_in_progress(self) -> None:
        """No more audio will come: whatever the turn in progress said is taken."""
        raise NotImplementedError

    async def finish(self) -> None:
        """Ends the stream (the client's close, or the server's drain): the turn in
        progress is taken, then every turn's work is waited for."""
        await self.take_turn_in_progress()
        await asyncio.gather(*self.work, return_exceptions=True)

    # ---- in --------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.emit("session.created", session=self.session_object())

    async def handle(self, event: Any) -> None:
        client_event_id = event.get("event_id") if isinstance(event, dict) else None
        try:
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise InvalidRequest("An event is a JSON object with a string `type`.",
                                     param="type", code="invalid_event")
            await self.dispatch(event)
        except ServerError as exc:
            await self.error(exc, client_event_id)

    async def append(self, audio: Any) -> None:
        if not isinstance(audio, str):
            raise InvalidRequest("`audio` must be a base64 string.", param="audio",
                                 code="invalid_value")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("`audio` is not valid base64.", param="audio",
                                 code="invalid_value") from None
        incoming = self.audio.samples_in(data)
        if self.buffer.uncommitted + self.pending_samples + incoming > self.max_buffer_samples:
            raise InvalidRequest(
                f"The session holds its limit of {self.max_buffer_samples // SAMPLE_RATE} s of "
                f"audio ({self.buffer.uncommitted / SAMPLE_RATE:.1f} s uncommitted, "
                f"{self.pending_samples / SAMPLE_RATE:.1f} s being transcribed): commit, clear, "
                "or send no faster than real time (the append was dropped).",
                param="audio", code="input_audio_buffer_full")
        self.accounting.metrics.realtime_audio.labels(self.kind).inc(incoming / SAMPLE_RATE)
        for turn_event in await asyncio.to_thread(self._take_in, data):
            await self.on_turn_event(turn_event)
        self.buffer.committed = self._keep_from()
        self.buffer.forget_before(self.buffer.committed)

    def set_format(self, format_type: str) -> None:
        if format_type != self.audio.format_type:
            self.audio = InputAudio(format_type)

    def set_vad(self, vad: ServerVad | None) -> None:
        if vad != self.vad:
            self.vad = vad
            self.detector = self._new_detector()

    def _take_in(self, data: bytes) -> list[TurnEvent]:
        """Worker thread: decode, resample, and run the VAD over the new audio."""
        samples = self.audio.push(data)
        self.buffer.append(samples)
        return self.detector.detect(samples) if self.detector is not None else []

    def _keep_from(self) -> int:
        """Audio before this can't be part of any turn any more: with the server VAD
        and no one speaking, all but the prefix padding's worth (and a second more)."""
        if self.detector is None or self.detector.speaking:
            return self.buffer.committed
        vad = self.detector.vad
        padding = vad.samples(vad.prefix_padding_ms)
        return max(self.buffer.committed, self.buffer.end - padding - SAMPLE_RATE)

    def _new_detector(self) -> TurnDetector | None:
        if self.vad is None:
            return None
        return TurnDetector(self.network, self.vad, self.max_turn_samples,
                            floor=self.buffer.end)

    # ---- out -------------------------------------------------------------------------------

    async def emit(self, event_type: str, **fields: Any) -> None:
        await self.send({"type": event_type, "event_id": new_id("event"), **fields})

    async def error(self, exc: BaseException, client_event_id: str | None = None) -> None:
        await self.emit("error", error={**error_body(exc)["error"], "event_id": client_event_id})

    @contextlib.contextmanager
    def admitted_turn(self, samples: int, ended_at: float
                      ) -> Iterator[Callable[[Transcript | None], None]]:
        """A turn of ``samples`` (ended at loop time ``ended_at``) admitted as audio in
        flight, raising ``Overloaded`` beyond the server's bounds; yields the call that
        records its final event (latency, and the transcript's metrics when given)."""
        admission, metrics = self.accounting.admission, self.accounting.metrics
        try:
            ticket = admission.admit()
            try:
                ticket.add_audio(samples / SAMPLE_RATE)
            except Overloaded:
                ticket.release()
                raise
        except Overloaded as exc:
            metrics.rejections.labels(exc.error_type).inc()
            raise
        metrics.realtime_turns.labels(self.kind).inc()
        loop = asyncio.get_running_loop()

        def finished(transcript: Transcript | None) -> None:
            seconds = loop.time() - ended_at
            metrics.realtime_turn_latency.labels(self.kind).observe(seconds)
            if transcript is not None:
                metrics.observe_transcript(METRICS_ENDPOINT, transcript, seconds)
        try:
            yield finished
        finally:
            ticket.release()

    def start_turn(self, samples: int, work: Coroutine[Any, Any, None]) -> asyncio.Task:
        """``work`` on a turn of ``samples``, counted as held until ``admitted_turn`` ends."""
        self.pending_samples += samples
        task = self.start_work(work)
        task.add_done_callback(lambda _: self._turn_done(samples))
        return task

    def _turn_done(self, samples: int) -> None:
        self.pending_samples -= samples

    def start_work(self, work: Coroutine[Any, Any, None]) -> asyncio.Task:
        task = asyncio.create_task(work)
        self.work.add(task)
        task.add_done_callback(self.work.discard)
        return task

    async def close(self, *, wait: bool) -> None:
        """Ends the session: its work finishes first when ``wait`` (a drain), or is
        cancelled, which aborts it in the engine (a client that left)."""
        tasks = list(self.work)
        if not wait:
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
