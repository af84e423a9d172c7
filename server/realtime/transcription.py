"""A transcription session of OpenAI's Realtime protocol (``intent=transcription``).

Each turn the server VAD finds, or the client commits, becomes a conversation item,
transcribed at once by the same ``Transcriber`` as the file API (its own plan, prompts,
keyword biasing and language detection): deltas first, then ``completed`` or ``failed``.
Event shapes are ``openai.types.realtime``'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from granite_speech_server.asr.transcriber import Transcriber
from granite_speech_server.asr.transcript import (
    Finished,
    TextDelta,
    Transcript,
    TranscriptionOptions,
)
from granite_speech_server.audio.features import SAMPLE_RATE
from granite_speech_server.audio.silero import SileroNetwork
from granite_speech_server.errors import InvalidRequest, ServerError, error_body
from granite_speech_server.formats.render import languages_out, logprobs_out, token_usage
from granite_speech_server.realtime.config import SessionConfig, check_update
from granite_speech_server.realtime.live import Accounting, LiveSession, Send, ms, new_id
from granite_speech_server.realtime.turns import (
    SpeechStarted,
    SpeechStopped,
    TurnCut,
    TurnEvent,
)

log = logging.getLogger(__name__)

MIN_COMMIT_SAMPLES = SAMPLE_RATE // 10
"""OpenAI refuses to commit less than 100 ms of audio."""
UNSUPPORTED_EVENTS = ("response.", "conversation.item.create", "conversation.item.delete",
                      "conversation.item.truncate", "conversation.item.retrieve",
                      "output_audio_buffer.")


class TranscriptionSession(LiveSession):
    kind = "transcription"

    def __init__(self, *, transcriber: Transcriber, network: SileroNetwork, send: Send,
                 accounting: Accounting, served_models: Sequence[str], model: str,
                 max_turn_seconds: float, max_buffer_seconds: float) -> None:
        self.config = SessionConfig.default(model)
        super().__init__(network=network, send=send, accounting=accounting,
                         format_type=self.config.format_type,
                         vad=self.config.turn_detection, max_turn_seconds=max_turn_seconds,
                         max_buffer_seconds=max_buffer_seconds)
        self.transcriber = transcriber
        self.served_models = list(served_models)
        self.turn_item: str | None = None
        """The item id the turn in progress will have (sent with speech_started)."""
        self.last_item: str | None = None

    # ---- client events -------------------------------------------------------------------

    async def dispatch(self, event: dict[str, Any]) -> None:
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
        self.config = self.config.updated(check_update(raw), self.served_models)
        self.set_format(self.config.format_type)
        self.set_vad(self.config.turn_detection)
        await self.emit("session.updated", session=self.session_object())

    async def commit_buffer(self) -> None:
        end = self.buffer.end
        if end - self.buffer.committed < MIN_COMMIT_SAMPLES:
            raise InvalidRequest(
                f"The input audio buffer holds {ms(end - self.buffer.committed)} ms: at least "
                "100 ms are needed to commit.", code="input_audio_buffer_commit_empty")
        if self.detector is not None:
            self.detector.end_turn(end)
        await self._commit(self.buffer.committed, end, self.turn_item)

    async def take_turn_in_progress(self) -> None:
        end = self.buffer.end
        if self.detector is not None and self.detector.speaking \
                and end - self.buffer.committed >= MIN_COMMIT_SAMPLES:
            self.detector.end_turn(end)
            await self._commit(self.buffer.committed, end, self.turn_item)

    async def clear(self) -> None:
        self.buffer.clear()
        if self.detector is not None:
            self.detector.end_turn(self.buffer.end)
        self.turn_item = None
        await self.emit("input_audio_buffer.cleared")

    # ---- turns and items ------------------------------------------------------------------

    async def on_turn_event(self, event: TurnEvent) -> None:
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
        ended_at = asyncio.get_running_loop().time()
        self.start_turn(audio.size, self._transcribe(item_id, audio, previous, ended_at))

    async def _transcribe(self, item_id: str, audio: np.ndarray, previous: str | None,
                          ended_at: float) -> None:
        config = self.config
        options = TranscriptionOptions(language=config.language, languages=config.languages,
                                       keywords=config.bias)
        try:
            with self.admitted_turn(audio.size, ended_at) as finished:
                await self._stream_item(item_id, audio, options, previous, finished)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is the item's failed event
            if not isinstance(exc, ServerError):
                log.exception("Transcription of realtime item %s failed", item_id)
            await self.emit("conversation.item.input_audio_transcription.failed",
                            item_id=item_id, content_index=0, **error_body(exc))

    async def _stream_item(self, item_id: str, audio: np.ndarray, options: TranscriptionOptions,
                           previous: str | None, finished: Callable[[Transcript], None]) -> None:
        async for event in self.transcriber.stream(audio, options):
            match event:
                case TextDelta(text=text, logprobs=logprobs):
                    await self.emit("conversation.item.input_audio_transcription.delta",
                                    item_id=item_id, content_index=0, delta=text,
                                    **self._logprobs(logprobs))
                case Finished(transcript=transcript):
                    await self.emit(
                        "conversation.item.input_audio_transcription.completed",
                        item_id=item_id, content_index=0, transcript=transcript.text,
                        usage=token_usage(transcript.usage).model_dump(),
                        languages=[lang.model_dump() for lang in languages_out(transcript)],
                        **self._logprobs(transcript.logprobs))
                    finished(transcript)
                    await self.emit("conversation.item.done",
                                    item=user_item(item_id, transcript.text),
                                    previous_item_id=previous)

    def _logprobs(self, logprobs: list) -> dict[str, Any]:
        if not self.config.include_logprobs:
            return {}
        return {"logprobs": [lp.model_dump() for lp in logprobs_out(logprobs)]}

    def session_object(self) -> dict[str, Any]:
        return {"id": self.id, **self.config.as_openai()}


def user_item(item_id: str, transcript: str | None) -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": transcript}]}
