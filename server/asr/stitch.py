"""Stitching: the segments' results and their places in the audio -> one transcript.

``stitch`` makes the whole transcript once every segment finished; ``DeltaStitcher``
makes a stream's deltas as they come, adding up to exactly the same text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from granite_speech_server.asr.engine import SegmentRequest, SegmentResult
from granite_speech_server.asr.transcript import (
    Segment,
    TextDelta,
    Transcript,
    TranscriptionOptions,
    Usage,
)
from granite_speech_server.audio.features import SAMPLE_RATE
from granite_speech_server.audio.segment import PlannedSegment

UNSPACED_LANGUAGES = frozenset({"ja", "zh"})
"""Scripts written without spaces between words: pieces join directly."""


def separator(language: str | None) -> str:
    return "" if language in UNSPACED_LANGUAGES else " "


def join_texts(texts: Sequence[str], language: str | None) -> str:
    pieces = [text.strip() for text in texts if text.strip()]
    return separator(language).join(pieces)


def stitch(planned: Sequence[PlannedSegment], results: Sequence[SegmentResult],
           options: TranscriptionOptions, usage: Usage, num_samples: int) -> Transcript:
    """The transcript of ``num_samples`` of audio from its segments' final results, each
    timed where the plan put its speech."""
    segments = [
        Segment(
            start=segment.start / SAMPLE_RATE,
            end=segment.end / SAMPLE_RATE,
            text=result.text.strip(),
            token_ids=result.token_ids,
            logprobs=result.logprobs,
            temperature=options.temperature,
            prompt_tokens=result.prompt_tokens,
        )
        for segment, result in zip(planned, results)
    ]
    return Transcript(
        task=options.task,
        text=join_texts([s.text for s in segments], options.output_language),
        language=options.output_language,
        duration=num_samples / SAMPLE_RATE,
        segments=segments,
        usage=usage,
    )


def token_usage(requests: Sequence[SegmentRequest], results: Sequence[SegmentResult],
          audio_tokens: Callable[[int], int], num_samples: int) -> Usage:
    """Tokens as the engine counted them. Where no engine call counted a segment's
    prompt (a CTC draft taken without the LLM), its audio tokens are ``audio_tokens``
    of its samples (``SpeechEngine.audio_tokens``, the checkpoint's own count)."""
    audio = [
        result.prompt_tokens - request.text_tokens if result.prompt_tokens
        else audio_tokens(request.audio.size)
        for request, result in zip(requests, results)
    ]
    return Usage(
        audio_tokens=sum(audio),
        text_tokens=sum(request.text_tokens for request in requests),
        output_tokens=sum(len(result.token_ids) for result in results),
        drafted_tokens=sum(result.drafted_tokens for result in results),
        seconds=num_samples / SAMPLE_RATE,
    )


class DeltaStitcher:
    """Turns cumulative segment texts into deltas whose concatenation is exactly
    the stitched transcript: edges are stripped, trailing whitespace is held back
    until text follows it, and segments are joined as ``join_texts`` joins them."""

    def __init__(self, language: str | None) -> None:
        self._separator = separator(language)
        self._anything_sent = False
        self._sent_chars = 0
        self._sent_tokens = 0

    def advance(self, result: SegmentResult) -> TextDelta | None:
        """The text (and its tokens' logprobs) of ``result`` not sent yet, if any."""
        stable = result.text.strip()
        new_text = stable[self._sent_chars :]
        if not new_text:
            return None
        prefix = self._separator if self._anything_sent and self._sent_chars == 0 else ""
        logprobs = result.logprobs[self._sent_tokens :]
        self._sent_chars = len(stable)
        self._sent_tokens = len(result.logprobs)
        self._anything_sent = True
        return TextDelta(prefix + new_text, logprobs)

    def end_segment(self) -> None:
        self._sent_chars = 0
        self._sent_tokens = 0
