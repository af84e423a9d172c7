"""A translation session of OpenAI's Realtime protocol (``/v1/realtime/translations``).

The client streams speech (``session.input_audio_buffer.append``, 24 kHz PCM16); the server
VAD finds its turns and each is translated as soon as it ends (or is cut, in a monologue)
into ``audio.output.language``: English from fr, de, es, pt, ja; from English into fr, de,
es, pt, ja, it, zh. The translation arrives as ``session.output_transcript.delta`` events,
one text in turn order; with ``audio.input.transcription`` set, the source transcript as
``session.input_transcript.delta`` too. Granite writes text, not speech: the session says
``output_modalities: ["text"]`` and no output audio event is ever sent.
``session.close`` translates what was said so far, then ``session.closed`` ends it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import numpy as np

from granite_speech_server.api.audio_form import check_model
from granite_speech_server.asr.prompt import TRANSLATION_PAIRS
from granite_speech_server.asr.stitch import UNSPACED_LANGUAGES
from granite_speech_server.asr.transcriber import Transcriber
from granite_speech_server.asr.transcript import TextDelta, TranscriptionOptions
from granite_speech_server.audio.silero import SileroNetwork
from granite_speech_server.errors import (
    InvalidRequest,
    Overloaded,
    ServerError,
    UnsupportedLanguage,
)
from granite_speech_server.realtime.config import Strict, check_update
from granite_speech_server.realtime.live import Accounting, LiveSession, Send, ms
from granite_speech_server.realtime.turns import (
    ServerVad,
    SpeechStarted,
    SpeechStopped,
    TurnCut,
    TurnEvent,
)

log = logging.getLogger(__name__)

TARGETS = tuple(dict.fromkeys(target for _, target in TRANSLATION_PAIRS))
ELAPSED_STEP_MS = 200
"""OpenAI's ``elapsed_ms`` advances in 200 ms steps."""


class InputTranscription(Strict):
    model: str


class TranslationInput(Strict):
    noise_reduction: None = None
    transcription: InputTranscription | None = None


class TranslationOutput(Strict):
    language: str | None = None


class TranslationAudio(Strict):
    input: TranslationInput | None = None
    output: TranslationOutput | None = None


class TranslationUpdate(Strict):
    type: Literal["translation"] | None = None
    audio: TranslationAudio | None = None


class TranslationSession(LiveSession):
    kind = "translation"

    def __init__(self, *, transcriber: Transcriber, network: SileroNetwork, send: Send,
                 accounting: Accounting, served_models: Sequence[str], model: str,
                 max_turn_seconds: float, max_buffer_seconds: float) -> None:
        super().__init__(network=network, send=send, accounting=accounting,
                         format_type="audio/pcm", vad=ServerVad(),
                         max_turn_seconds=max_turn_seconds,
                         max_buffer_seconds=max_buffer_seconds)
        self.transcriber = transcriber
        self.served_models = list(served_models)
        self.model = model
        self.to_language = "en"
        self.transcription_model: str | None = None
        self._last_turn: asyncio.Task | None = None
        self._written = {"input": False, "output": False}
        """Whether each transcript has text yet (a later turn is joined with a space)."""

    async def dispatch(self, event: dict[str, Any]) -> None:
        if self.closed:
            raise InvalidRequest("The session is closing.", code="session_closed")
        match event["type"]:
            case "session.update":
                await self.update(event.get("session"))
            case "session.input_audio_buffer.append":
                await self.append(event.get("audio"))
            case "session.close":
                await self.finish()
            case kind:
                raise InvalidRequest(f"Unknown event type '{kind}' for a translation session.",
                                     param="type", code="invalid_event")

    async def update(self, raw: Any) -> None:
        update = check_update(raw, TranslationUpdate)
        audio = update.audio or TranslationAudio()
        if audio.output is not None and audio.output.language is not None:
            if audio.output.language not in TARGETS:
                raise UnsupportedLanguage(
                    f"Granite can't translate into '{audio.output.language}'; it translates "
                    f"into {', '.join(TARGETS)} (into English from fr, de, es, pt, ja; out of "
                    "English into the others).", param="session.audio.output.language")
            self.to_language = audio.output.language
        if audio.input is not None and "transcription" in audio.input.model_fields_set:
            transcription = audio.input.transcription
            if transcription is not None:
                check_model(self.served_models, transcription.model)
            self.transcription_model = transcription.model if transcription else None
        await self.emit("session.updated", session=self.session_object())

    async def finish(self) -> None:
        """``session.close`` (or the server's drain): the turn in progress is translated,
        then the session ends."""
        self.closed = True
        await super().finish()
        await self.emit("session.closed")

    async def take_turn_in_progress(self) -> None:
        if self.detector is not None and self.detector.speaking:
            self.detector.end_turn(self.buffer.end)
            self._translate(self.buffer.committed, self.buffer.end)

    async def on_turn_event(self, event: TurnEvent) -> None:
        match event:
            case SpeechStarted(start=start):
                self.buffer.committed = max(self.buffer.committed, start)
            case TurnCut(at=end) | SpeechStopped(end=end):
                self._translate(self.buffer.committed, end)

    def _translate(self, start: int, end: int) -> None:
        audio = self.buffer.take(start, end)
        self.buffer.committed = end
        ended_at = asyncio.get_running_loop().time()
        self._last_turn = self.start_turn(
            audio.size, self._turn(audio, ms(start), self._last_turn, ended_at))

    async def _turn(self, audio: np.ndarray, start_ms: int, previous: asyncio.Task | None,
                    ended_at: float) -> None:
        try:
            with self.admitted_turn(audio.size, ended_at) as finished:
                await self._translate_turn(audio, start_ms, previous)
                finished(None)
        except Overloaded as exc:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            await self.error(exc)

    async def _translate_turn(self, audio: np.ndarray, start_ms: int,
                              previous: asyncio.Task | None) -> None:
        """Translates (and transcribes, when asked) one turn at once; its deltas are sent
        after the previous turn's, so each transcript reads in the order it was spoken."""
        elapsed_ms = start_ms - start_ms % ELAPSED_STEP_MS
        streams = {"output": TranscriptionOptions(task="translate", to_language=self.to_language)}
        if self.transcription_model is not None:
            streams["input"] = TranscriptionOptions()
        queues = {name: asyncio.Queue() for name in streams}
        producers = [asyncio.create_task(self._produce(audio, options, queues[name]))
                     for name, options in streams.items()]
        try:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            for name, queue in queues.items():
                await self._forward(name, queue, elapsed_ms)
        finally:
            for producer in producers:
                producer.cancel()

    async def _produce(self, audio: np.ndarray, options: TranscriptionOptions,
                       queue: asyncio.Queue) -> None:
        try:
            async for event in self.transcriber.stream(audio, options):
                if isinstance(event, TextDelta) and event.text:
                    queue.put_nowait(event.text)
            queue.put_nowait(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - sent as the session's error event
            queue.put_nowait(exc)

    async def _forward(self, name: str, queue: asyncio.Queue, elapsed_ms: int) -> None:
        first = True
        async for item in _until_done(queue):
            if isinstance(item, BaseException):
                if not isinstance(item, ServerError):
                    log.error("Realtime translation failed: %r", item)
                await self.error(item)
                return
            language = self.to_language if name == "output" else None
            if first and self._written[name] and language not in UNSPACED_LANGUAGES:
                item = " " + item.lstrip()
            first, self._written[name] = False, True
            await self.emit(f"session.{name}_transcript.delta", delta=item,
                            elapsed_ms=elapsed_ms)

    def session_object(self) -> dict[str, Any]:
        transcription = ({"model": self.transcription_model}
                         if self.transcription_model is not None else None)
        return {"id": self.id, "object": "realtime.translation_session", "type": "translation",
                "model": self.model, "expires_at": 0,
                "output_modalities": ["text"],
                "audio": {"input": {"noise_reduction": None, "transcription": transcription},
                          "output": {"language": self.to_language}}}


async def _until_done(queue: asyncio.Queue) -> AsyncIterator[Any]:
    while (item := await queue.get()) is not None:
        yield item
        if isinstance(item, BaseException):
            return
