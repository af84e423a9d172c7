"""Runs one request through the flow: plan -> prompts -> engine -> stitch."""

from __future__ import annotations

import asyncio
import math
import uuid
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from server.asr import prompt as prompts
from server.asr.engine import SegmentRequest, SegmentResult, SpeechEngine
from server.asr.stitch import join_texts
from server.audio.features import SAMPLE_RATE, audio_token_count
from server.audio.segment import Span, plan_segments
from server.config import Settings

Task = Literal["transcribe", "translate"]


@dataclass(frozen=True)
class TranscriptionOptions:
    task: Task = "transcribe"
    language: str | None = None
    """Language spoken in the audio, when the client knows it."""
    to_language: str | None = None
    """Target language of a translation."""
    keywords: tuple[str, ...] = ()
    temperature: float = 0.0
    logprobs: bool = False

    def instruction(self) -> str:
        if self.task == "translate":
            return prompts.translate_instruction(self.to_language or "en", self.keywords)
        return prompts.transcribe_instruction(self.keywords)


@dataclass(frozen=True)
class Segment:
    id: int
    start: float
    end: float
    text: str
    token_ids: list[int]
    logprobs: list[float]

    @property
    def avg_logprob(self) -> float:
        return float(np.mean(self.logprobs)) if self.logprobs else 0.0


@dataclass(frozen=True)
class Usage:
    audio_tokens: int
    text_tokens: int
    output_tokens: int
    seconds: float

    @property
    def input_tokens(self) -> int:
        return self.audio_tokens + self.text_tokens


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str | None
    duration: float
    segments: list[Segment] = field(default_factory=list)
    usage: Usage | None = None


class Transcriber:
    def __init__(self, engine: SpeechEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    async def transcribe(self, audio: np.ndarray, options: TranscriptionOptions) -> Transcript:
        spans = plan_segments(len(audio), SAMPLE_RATE, self.settings.max_segment_seconds)
        prompt_ids = prompts.render_prompt(self.engine.tokenizer, options.instruction())
        request_id = uuid.uuid4().hex
        results = await asyncio.gather(
            *(
                self._run_segment(self._segment_request(audio[s.start : s.end], prompt_ids, options),
                                  f"{request_id}-{i}")
                for i, s in enumerate(spans)
            )
        )
        return self._stitch(spans, results, prompt_ids, options, len(audio))

    def _segment_request(self, audio: np.ndarray, prompt_ids: list[int],
                         options: TranscriptionOptions) -> SegmentRequest:
        return SegmentRequest(
            prompt_token_ids=prompt_ids,
            audio=audio,
            max_tokens=self.output_budget(len(audio), len(prompt_ids)),
            temperature=options.temperature,
            logprobs=options.logprobs,
        )

    def output_budget(self, num_samples: int, prompt_tokens: int) -> int:
        """Room for fast speech, far below the context: a model that never says
        end-of-text stops after a few seconds' worth of tokens, not at 2048."""
        duration = num_samples / SAMPLE_RATE
        wanted = self.settings.output_tokens_floor + math.ceil(
            duration * self.settings.output_tokens_per_second
        )
        # The placeholder token in the prompt becomes the audio tokens.
        used = prompt_tokens - 1 + audio_token_count(num_samples)
        return max(1, min(wanted, self.settings.max_model_len - used))

    async def _run_segment(self, request: SegmentRequest, request_id: str) -> SegmentResult:
        result = SegmentResult()
        async for result in self.engine.generate(request, request_id):
            pass
        return result

    def _stitch(self, spans: list[Span], results: list[SegmentResult], prompt_ids: list[int],
                options: TranscriptionOptions, num_samples: int) -> Transcript:
        language = options.to_language if options.task == "translate" else options.language
        segments = [
            Segment(
                id=i,
                start=span.start / SAMPLE_RATE,
                end=span.end / SAMPLE_RATE,
                text=result.text.strip(),
                token_ids=result.token_ids,
                logprobs=result.logprobs,
            )
            for i, (span, result) in enumerate(zip(spans, results))
        ]
        audio_tokens = sum(audio_token_count(s.end - s.start) for s in spans)
        usage = Usage(
            audio_tokens=audio_tokens,
            text_tokens=(len(prompt_ids) - 1) * len(spans),
            output_tokens=sum(len(r.token_ids) for r in results),
            seconds=num_samples / SAMPLE_RATE,
        )
        return Transcript(
            text=join_texts([s.text for s in segments], language),
            language=language,
            duration=num_samples / SAMPLE_RATE,
            segments=segments,
            usage=usage,
        )
