"""What a transcription is asked for and what it produces: options in; transcript,
segments, usage and stream events out.

Plain data, importable without the engine: the formats, the metrics and the API read
these, and only ``granite_speech_server.asr.transcriber`` makes them.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from granite_speech_server.asr import prompt as prompts

if TYPE_CHECKING:
    from granite_speech_server.audio.vad import VadOptions

Task = Literal["transcribe", "translate"]


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float


@dataclass(frozen=True)
class WordTiming:
    word: str
    start: float
    end: float


@dataclass(frozen=True)
class TranscriptionOptions:
    task: Task = "transcribe"
    language: str | None = None
    """Language spoken in the audio, when the client knows it."""
    languages: tuple[str, ...] = ()
    """The languages the client says the audio may be in: what detection may answer."""
    to_language: str | None = None
    """Target language of a translation."""
    keywords: tuple[str, ...] = ()
    temperature: float = 0.0
    vad: VadOptions | None = None
    """The client's own speech-detection settings (chunking_strategy=server_vad)."""
    padding_ms: int | None = None
    """The client's prefix_padding_ms (chunking_strategy=server_vad)."""
    word_timestamps: bool = False
    """Align the transcript's words to the audio with the encoder's CTC head."""

    @property
    def output_language(self) -> str | None:
        return self.to_language if self.task == "translate" else self.language

    def instruction(self) -> str:
        if self.task == "translate":
            return prompts.translate_instruction(self.to_language or "en", self.keywords)
        return prompts.transcribe_instruction(self.keywords)


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    temperature: float
    prompt_tokens: int = 0
    """Tokens of the segment's prompt as the engine counted them (audio and text)."""

    @property
    def avg_logprob(self) -> float:
        return statistics.fmean(lp.logprob for lp in self.logprobs) if self.logprobs else 0.0


@dataclass(frozen=True)
class Usage:
    audio_tokens: int
    text_tokens: int
    output_tokens: int
    seconds: float
    drafted_tokens: int = 0
    """Output tokens taken from verified CTC drafts instead of decoded one by one."""

    @property
    def input_tokens(self) -> int:
        return self.audio_tokens + self.text_tokens


@dataclass(frozen=True)
class Transcript:
    task: Task
    text: str
    language: str | None
    duration: float
    segments: list[Segment]
    usage: Usage
    words: list[WordTiming] | None = None
    detected_languages: tuple[str, ...] = ()
    """The languages the transcript is written in, as far as they could be told (ISO-639-1);
    empty when unsure or not looked for (translations)."""

    @property
    def spoken_language(self) -> str | None:
        """The language the client named, or else the one detected."""
        return self.language or next(iter(self.detected_languages), None)

    @property
    def logprobs(self) -> list[TokenLogprob]:
        return [lp for segment in self.segments for lp in segment.logprobs]


@dataclass(frozen=True)
class TextDelta:
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class Finished:
    transcript: Transcript


TranscriptEvent = TextDelta | Finished
