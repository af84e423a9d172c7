"""One transcription session of OpenAI's Realtime protocol, apart from its WebSocket.

``handle`` takes each client event (parsed JSON); the session answers through ``send``
with server events in OpenAI's shapes (``openai.types.realtime``). Audio is decoded and
resampled as it arrives, the server VAD (``turns``) finds the turns, and each committed
turn becomes a conversation item transcribed at once by the same ``Transcriber`` as the
file API (its own plan, prompts, keyword biasing and language detection), deltas first,
then ``completed`` or ``failed``. A client's mistake is an ``error`` event; the session
goes on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from granite_speech_server.api.audio_form import collect_keywords
from granite_speech_server.asr.transcriber import Transcriber
from granite_speech_server.asr.transcript import Finished, TextDelta, TranscriptionOptions
from granite_speech_server.audio.features import SAMPLE_RATE
from granite_speech_server.audio.silero import SileroNetwork
from granite_speech_server.errors import InvalidRequest, ServerError, error_body
from granite_speech_server.formats.render import languages_out, logprobs_out, token_usage
from granite_speech_server.realtime.audio_in import InputAudio
from granite_speech_server.realtime.buffer import StreamBuffer
from granite_speech_server.realtime.config import SessionConfig, check_update
from granite_speech_server.realtime.turns import (
    SpeechStarted,
    SpeechStopped,
    TurnCut,
    TurnDetector,
    TurnEvent,
)

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]
MIN_COMMIT_SAMPLES = SAMPLE_RATE // 10
"""OpenAI refuses to commit less than 100 ms of audio."""
UNSUPPORTED_EVENTS = ("response.", "conversation.item.create", "conversation.item.delete",
                      "conversation.item.truncate", "conversation.item.retrieve",
                      "output_audio_buffer.")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def ms(samples: int) -> int:
    return samples * 1000 // SAMPLE_RATE


class RealtimeSession:
    def __init__(self, *, transcriber: Transcriber, network: SileroNetwork, send: Send,
                 served_models: Sequence[str], model: str, max_turn_seconds: float,
                 max_buffer_seconds: float) -> None:
        self.id = new_id("sess")
        self.transcriber = transcriber
        self.network = network
        self.send = send
        self.served_models = list(served_models)
        self.max_turn_samples = int(max_turn_seconds * SAMPLE_RATE)
        self.max_buffer_samples = int(max_buffer_seconds * SAMPLE_RATE)
        self.config = SessionConfig.default(model)
        self.audio = InputAudio(self.config.format_type)
        self.buffer = StreamBuffer()
        self.detector = self._new_detector()
        self.turn_item: str | None = None
        """The item id the turn in progress will have (sent with speech_started)."""
        self.last_item: str | None = None
        self.transcriptions: set[asyncio.Task] = set()

    # ---- client events -------------------------------------------------------------------

    async def start(self) -> None:
        await self.emit("session.created", session=self._session_object())

    async def handle(self, event: Any) -> None:
        client_event_id = event.get("event_id") if isinstance(event, dict) else None
        try:
            await self._dispatch(event)
        except ServerError as exc:
            await self.error(exc, client_event_id)

    async def _dispatch(self, event: Any) -> None:
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise InvalidRequest("An event is a JSON object with a string `type`.",
                                 param="type", code="invalid_event")
        match event["type"]:
            case "session.update":
                await self.update(event.get("session"))
            case "input_audio_buffer.append":
                await self.append(event.get("audio"))
            case "input_audio_buffer.commit":
                await self.commit_buffer()
            case "input_audio_buffer.clear":
                await self.clear()
            case kind if kind.startswith(UNSUPPORTED_EVENTS):
                raise InvalidRequest(f"'{kind}' has no place in a transcription session: "
                                     "Granite transcribes, it doesn't respond.",
                                     param="type", code="unsupported_event")
            case kind:
                raise InvalidRequest(f"Unknown event type '{kind}'.", param="type",
                                     code="invalid_event")

    async def update(self, raw: Any) -> None:
        config = self.config.updated(check_update(raw), self.served_models)
        if config.format_type != self.config.format_type:
            self.audio = InputAudio(config.format_type)
        vad_changed = config.turn_detection != self.config.turn_detection
        self.config = config
        if vad_changed:
            self.detector = self._new_detector()
        await self.emit("session.updated", session=self._session_object())

    async def append(self, audio: Any) -> None:
        if not isinstance(audio, str):
            raise InvalidRequest("`audio` must be a base64 string.", param="audio",
                                 code="invalid_value")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("`audio` is not valid base64.", param="audio",
                                 code="invalid_value") from None
        if self.buffer.uncommitted + self.audio.samples_in(data) > self.max_buffer_samples:
            raise InvalidRequest(
                f"The input audio buffer holds its limit of {self.max_buffer_samples // SAMPLE_RATE}"
                " s of uncommitted audio: commit or clear it (the append was dropped).",
                param="audio", code="input_audio_buffer_full")
        for turn_event in await asyncio.to_thread(self._take_in, data):
            await self._on_turn_event(turn_event)
        self.buffer.committed = self._keep_from()
        self.buffer.forget_before(self.buffer.committed)

    async def commit_buffer(self) -> None:
        end = self.buffer.end
        if end - self.buffer.committed < MIN_COMMIT_SAMPLES:
            raise InvalidRequest(
                f"The input audio buffer holds {ms(end - self.buffer.committed)} ms: at least "
                "100 ms are needed to commit.", code="input_audio_buffer_commit_empty")
        if self.detector is not None:
            self.detector.end_turn(end)
        await self._commit(self.buffer.committed, end, self.turn_item)

    async def clear(self) -> None:
        self.buffer.clear()
        if self.detector is not None:
            self.detector.end_turn(self.buffer.end)
        self.turn_item = None
        await self.emit("input_audio_buffer.cleared")

    # ---- turns and items ------------------------------------------------------------------

    def _take_in(self, data: bytes) -> list[TurnEvent]:
        """Worker thread: decode, resample, and run the VAD over the new audio."""
        samples = self.audio.push(data)
        self.buffer.append(samples)
        return self.detector.detect(samples) if self.detector is not None else []

    async def _on_turn_event(self, event: TurnEvent) -> None:
        match event:
            case SpeechStarted(start=start):
                self.turn_item = new_id("item")
                self.buffer.committed = max(self.buffer.committed, start)
                await self.emit("input_audio_buffer.speech_started",
                                audio_start_ms=ms(start), item_id=self.turn_item)
            case TurnCut(at=at):
                # A monologue: this piece is an item of its own, transcribed now.
                await self._commit(self.buffer.committed, at, self.turn_item)
                self.turn_item = new_id("item")
            case SpeechStopped(end=end):
                await self.emit("input_audio_buffer.speech_stopped", audio_end_ms=ms(end),
                                item_id=self.turn_item)
                await self._commit(self.buffer.committed, end, self.turn_item)

    async def _commit(self, start: int, end: int, item_id: str | None) -> None:
        item_id = item_id or new_id("item")
        audio = self.buffer.take(start, end)
        self.buffer.committed = end
        self.turn_item = None
        previous, self.last_item = self.last_item, item_id
        await self.emit("input_audio_buffer.committed", item_id=item_id,
                        previous_item_id=previous)
        await self.emit("conversation.item.added", item=user_item(item_id, None),
                        previous_item_id=previous)
        task = asyncio.create_task(self._transcribe(item_id, audio, previous))
        self.transcriptions.add(task)
        task.add_done_callback(self.transcriptions.discard)

    async def _transcribe(self, item_id: str, audio: np.ndarray, previous: str | None) -> None:
        config = self.config
        options = TranscriptionOptions(
            language=config.language, languages=config.languages,
            keywords=collect_keywords(config.prompt, config.keywords))
        try:
            async for event in self.transcriber.stream(audio, options):
                match event:
                    case TextDelta(text=text, logprobs=logprobs):
                        await self.emit(
                            "conversation.item.input_audio_transcription.delta",
                            item_id=item_id, content_index=0, delta=text,
                            **self._logprobs(logprobs))
                    case Finished(transcript=transcript):
                        await self.emit(
                            "conversation.item.input_audio_transcription.completed",
                            item_id=item_id, content_index=0, transcript=transcript.text,
                            usage=token_usage(transcript.usage).model_dump(),
                            languages=[lang.model_dump() for lang in languages_out(transcript)],
                            **self._logprobs(transcript.logprobs))
                        await self.emit("conversation.item.done",
                                        item=user_item(item_id, transcript.text),
                                        previous_item_id=previous)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is the item's failed event
            if not isinstance(exc, ServerError):
                log.exception("Transcription of realtime item %s failed", item_id)
            await self.emit("conversation.item.input_audio_transcription.failed",
                            item_id=item_id, content_index=0, **error_body(exc))

    def _logprobs(self, logprobs: list) -> dict[str, Any]:
        if not self.config.include_logprobs:
            return {}
        return {"logprobs": [lp.model_dump() for lp in logprobs_out(logprobs)]}

    def _keep_from(self) -> int:
        """Audio before this can't be part of any turn any more: with the server VAD
        and no one speaking, all but the prefix padding's worth (and a second more)."""
        if self.detector is None or self.detector.speaking:
            return self.buffer.committed
        vad = self.config.turn_detection
        padding = vad.samples(vad.prefix_padding_ms) if vad else 0
        return max(self.buffer.committed, self.buffer.end - padding - SAMPLE_RATE)

    def _new_detector(self) -> TurnDetector | None:
        vad = self.config.turn_detection
        if vad is None:
            return None
        return TurnDetector(self.network, vad, self.max_turn_samples, floor=self.buffer.end)

    # ---- out ------------------------------------------------------------------------------

    def _session_object(self) -> dict[str, Any]:
        return {"id": self.id, **self.config.as_openai()}

    async def emit(self, event_type: str, **fields: Any) -> None:
        await self.send({"type": event_type, "event_id": new_id("event"), **fields})

    async def error(self, exc: BaseException, client_event_id: str | None = None) -> None:
        error = error_body(exc)["error"]
        await self.emit("error", error={**error, "event_id": client_event_id})

    async def close(self, *, wait: bool) -> None:
        """Ends the session: its transcriptions finish first when ``wait`` (a drain),
        or are cancelled, which aborts them in the engine (a client that left)."""
        tasks = list(self.transcriptions)
        if not wait:
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def user_item(item_id: str, transcript: str | None) -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": transcript}]}
