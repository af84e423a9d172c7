"""Runs one request through the flow: plan -> prompts -> engine -> stitch.

Segments go to the engine as soon as they are planned (a window of audio at a time), none
waiting for another, so the engine batches them.
``stream`` yields text deltas in audio order while later segments already run;
``transcribe`` waits for the final texts only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import numpy as np

from granite_speech_server.asr import prompt as prompts
from granite_speech_server.asr.align import NotAlignable, word_timings
from granite_speech_server.asr.ctc import CtcHead
from granite_speech_server.asr.engine import SegmentRequest, SegmentResult, SpeechEngine
from granite_speech_server.asr.speculative import accepted_prefix, ctc_draft
from granite_speech_server.asr.stitch import UNSPACED_LANGUAGES, join_texts
from granite_speech_server.asr.transcript import (
    Finished,
    Segment,
    TextDelta,
    TokenLogprob,
    Transcript,
    TranscriptEvent,
    TranscriptionOptions,
    Usage,
    WordTiming,
)
from granite_speech_server.audio.features import SAMPLE_RATE, audio_token_count
from granite_speech_server.audio.progressive import DecodeCancelled, DecodingAudio
from granite_speech_server.audio.segment import PlannedSegment, Planner, PlanOptions
from granite_speech_server.audio.vad import VadOptions
from granite_speech_server.config import Settings
from granite_speech_server.priority import start_thread


@dataclass
class _Plan:
    segments: list[PlannedSegment]
    requests: list[SegmentRequest]
    request_ids: list[str]


class Transcriber:
    def __init__(self, engine: SpeechEngine, settings: Settings,
                 planner: Planner, ctc: CtcHead | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.planner = planner
        self.ctc = ctc

    async def warm_up(self) -> None:
        """One short request straight to the engine (noise has no speech to plan)."""
        noise = np.random.default_rng(0).normal(0, 0.01, SAMPLE_RATE).astype(np.float32)
        prompt_ids = prompts.render_prompt(self.engine.tokenizer, prompts.TRANSCRIBE_INSTRUCTION)
        request = SegmentRequest(prompt_ids, noise, self.output_budget(noise.size, len(prompt_ids)))
        await self._final(request, f"warm-up-{uuid.uuid4().hex}")

    @property
    def speculative(self) -> bool:
        return self.settings.speculative_ctc and self.ctc is not None

    async def transcribe(self, audio: np.ndarray | DecodingAudio,
                         options: TranscriptionOptions) -> Transcript:
        """The whole transcript. ``audio`` may still be decoding: its plan starts on
        what is there, and decoding stops if the request ends first."""
        source = DecodingAudio.of(audio)
        plan = _Plan([], [], [])
        runs: list[asyncio.Task] = []
        posteriors: list[np.ndarray] | None = [] if self.speculative else None
        try:
            async for batch in self._submissions(source, options, plan, stream=False):
                if posteriors is None:
                    runs += [asyncio.create_task(self._final(request, rid))
                             for request, rid in batch]
                    continue
                batch_posteriors = await self._posteriors([request for request, _ in batch])
                posteriors += batch_posteriors
                runs += [asyncio.create_task(self._speculate(request, rid, log_probs))
                         for (request, rid), log_probs in zip(batch, batch_posteriors)]
            results = await asyncio.gather(*runs)
        finally:
            source.close()
            await _cancel(runs)
        return await self._finish(plan, results, options, source.whole().size, posteriors)

    async def stream(
        self, audio: np.ndarray | DecodingAudio, options: TranscriptionOptions
    ) -> AsyncIterator[TranscriptEvent]:
        """Deltas in audio order, then ``Finished``. Closing the iterator early
        (a client that went away) cancels every segment, which aborts it in vLLM,
        and stops decoding the rest of ``audio``."""
        source = DecodingAudio.of(audio)
        plan = _Plan([], [], [])
        queues: list[asyncio.Queue] = []
        tasks: list[asyncio.Task] = []
        submitted = asyncio.Event()

        async def submit_all() -> None:
            try:
                async for batch in self._submissions(source, options, plan, stream=True):
                    for request, rid in batch:
                        queues.append(asyncio.Queue())
                        tasks.append(asyncio.create_task(self._pump(request, rid, queues[-1])))
                    submitted.set()
            finally:
                submitted.set()

        planning = asyncio.create_task(submit_all())
        try:
            deltas = _DeltaTracker(spaced=options.output_language not in UNSPACED_LANGUAGES)
            results: list[SegmentResult] = []
            while True:
                if len(results) == len(queues):
                    if planning.done():
                        planning.result()  # planning failed: say so
                        break
                    submitted.clear()
                    await submitted.wait()
                    continue
                result = SegmentResult()
                while not result.finished:
                    result = await _latest(queues[len(results)])
                    if delta := deltas.advance(result):
                        yield delta
                deltas.end_segment()
                results.append(result)
            yield Finished(await self._finish(plan, results, options, source.whole().size))
        finally:
            source.close()
            await _cancel([planning, *tasks])

    async def _submissions(self, source: DecodingAudio, options: TranscriptionOptions,
                           plan: _Plan, *, stream: bool,
                           ) -> AsyncIterator[list[tuple[SegmentRequest, str]]]:
        """The plan's segments as engine requests, a window's worth at a time, each batch
        as soon as the VAD has seen its audio (in the plan's own thread: it is CPU work,
        and waits for the decoder)."""
        prompt_ids = prompts.render_prompt(self.engine.tokenizer, options.instruction())
        request_id = uuid.uuid4().hex
        windows = self.planner(source, self.plan_options(options))
        async for segments in planned_ahead(windows, self.settings.preprocessing_niceness):
            # The planner has seen this audio: it is decoded, nothing waits.
            audio = source.until(segments[-1].audio_end)
            batch = []
            for segment in segments:
                request = self._segment_request(audio, segment, prompt_ids, options,
                                                stream=stream, priority=len(plan.requests))
                plan.segments.append(segment)
                plan.requests.append(request)
                plan.request_ids.append(f"{request_id}-{len(plan.requests) - 1}")
                batch.append((request, plan.request_ids[-1]))
            yield batch

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

    def plan_options(self, options: TranscriptionOptions) -> PlanOptions:
        settings = self.settings
        default_vad = VadOptions(threshold=settings.vad_threshold,
                                 min_silence_ms=settings.vad_min_silence_ms)
        return PlanOptions(
            max_segment_s=settings.max_segment_seconds,
            min_segment_s=settings.min_segment_seconds,
            padding_ms=settings.segment_padding_ms if options.padding_ms is None
            else options.padding_ms,
            vad=options.vad or default_vad,
        )

    def _segment_request(self, audio: np.ndarray, segment: PlannedSegment,
                         prompt_ids: list[int], options: TranscriptionOptions, *,
                         stream: bool, priority: int) -> SegmentRequest:
        return SegmentRequest(
            prompt_token_ids=prompt_ids,
            # A view, not a copy: a long file's samples are held once.
            audio=audio[segment.audio_start : segment.audio_end],
            max_tokens=self.output_budget(segment.num_audio_samples, len(prompt_ids)),
            temperature=options.temperature,
            stream=stream,
            priority=priority,
        )

    async def _final(self, request: SegmentRequest, request_id: str) -> SegmentResult:
        result = SegmentResult()
        async for result in self.engine.generate(request, request_id):
            pass
        return result

    async def _pump(self, request: SegmentRequest, request_id: str, queue: asyncio.Queue) -> None:
        try:
            async for result in self.engine.generate(request, request_id):
                queue.put_nowait(result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            queue.put_nowait(exc)

    async def _speculate(self, request: SegmentRequest, request_id: str,
                         log_probs: np.ndarray) -> SegmentResult:
        """The CTC draft when it is sure; else the prefix of it the LLM confirms in one
        scoring pass, and only the rest decoded token by token."""
        tokenizer = self.engine.tokenizer
        draft = ctc_draft(log_probs)
        # The model's answer is " " + text + end-of-text (its chat turn's format).
        draft_ids = tokenizer.encode(" " + draft.text, add_special_tokens=False) if draft.text \
            else []
        draft_ids.append(tokenizer.eos_token_id)
        if len(draft_ids) > request.max_tokens:
            return await self._final(request, request_id)
        if draft.max_entropy <= self.settings.speculative_max_entropy:
            return self._drafted(draft_ids, [])
        scoring = dataclasses.replace(request, max_tokens=1, score_last=len(draft_ids),
                                      prompt_token_ids=request.prompt_token_ids + draft_ids)
        scored = (await self._final(scoring, f"{request_id}-score")).scored
        keep = accepted_prefix(scored, math.log(self.settings.speculative_min_probability))
        if keep == len(draft_ids):
            return self._drafted(draft_ids, scored)
        rest = await self._final(dataclasses.replace(
            request, prompt_token_ids=request.prompt_token_ids + draft_ids[:keep],
            max_tokens=request.max_tokens - keep), f"{request_id}-rest")
        kept = self._drafted(draft_ids[:keep], scored[:keep])
        token_ids = kept.token_ids + rest.token_ids
        return SegmentResult(
            text=tokenizer.decode(token_ids, skip_special_tokens=True),
            token_ids=token_ids, logprobs=kept.logprobs + rest.logprobs, finished=True,
            finish_reason=rest.finish_reason, drafted_tokens=keep)

    def _drafted(self, token_ids: list[int], scored: list[float]) -> SegmentResult:
        tokenizer = self.engine.tokenizer
        return SegmentResult(
            text=tokenizer.decode(token_ids, skip_special_tokens=True), token_ids=token_ids,
            logprobs=[TokenLogprob(tokenizer.decode([t]), lp) for t, lp in zip(token_ids, scored)],
            finished=True, finish_reason="stop", drafted_tokens=len(token_ids))

    async def _posteriors(self, requests: list[SegmentRequest]) -> list[np.ndarray]:
        if self.ctc is None:
            raise RuntimeError("the CTC head is not loaded (checked by the API)")
        return await asyncio.to_thread(self.ctc.log_posteriors,
                                       [request.audio for request in requests])

    async def _finish(self, plan: _Plan, results: list[SegmentResult],
                      options: TranscriptionOptions, num_samples: int,
                      posteriors: list[np.ndarray] | None = None) -> Transcript:
        transcript = self._stitch(plan, results, options, num_samples)
        if not options.word_timestamps:
            return transcript
        posteriors = posteriors or await self._posteriors(plan.requests)
        # The Viterbi passes are CPU work (a Python loop over every frame): off the loop.
        words = await asyncio.to_thread(self._align, plan, transcript, posteriors)
        return dataclasses.replace(transcript, words=words)

    def _align(self, plan: _Plan, transcript: Transcript,
               posteriors: list[np.ndarray]) -> list[WordTiming]:
        """Word times from a CTC forced alignment of each segment's text to its audio."""
        words = []
        for planned, segment, log_probs in zip(plan.segments, transcript.segments, posteriors):
            words += segment_words(log_probs, segment, planned.audio_start / SAMPLE_RATE)
        return words

    def _stitch(self, plan: _Plan, results: list[SegmentResult],
                options: TranscriptionOptions, num_samples: int) -> Transcript:
        segments = [
            Segment(
                start=planned.start / SAMPLE_RATE,
                end=planned.end / SAMPLE_RATE,
                text=result.text.strip(),
                token_ids=result.token_ids,
                logprobs=result.logprobs,
                temperature=options.temperature,
                prompt_tokens=result.prompt_tokens,
            )
            for planned, result in zip(plan.segments, results)
        ]
        usage = Usage(
            audio_tokens=sum(audio_token_count(r.audio.size) for r in plan.requests),
            text_tokens=sum(len(r.prompt_token_ids) - 1 for r in plan.requests),
            output_tokens=sum(len(r.token_ids) for r in results),
            drafted_tokens=sum(r.drafted_tokens for r in results),
            seconds=num_samples / SAMPLE_RATE,
        )
        return Transcript(
            task=options.task,
            text=join_texts([s.text for s in segments], options.output_language),
            language=options.output_language,
            duration=num_samples / SAMPLE_RATE,
            segments=segments,
            usage=usage,
        )


def segment_words(log_probs: np.ndarray, segment: Segment, audio_offset_s: float,
                  ) -> list[WordTiming]:
    try:
        return word_timings(log_probs, segment.text, audio_offset_s)
    except NotAlignable:
        # More characters than frames: no alignment exists; spread the words evenly
        # rather than lose them.
        words = segment.text.split()
        step = (segment.end - segment.start) / max(1, len(words))
        return [WordTiming(word, round(segment.start + i * step, 3),
                           round(segment.start + (i + 1) * step, 3))
                for i, word in enumerate(words)]


async def planned_ahead(windows: Iterator[list[PlannedSegment]], niceness: int = 0,
                        ) -> AsyncIterator[list[PlannedSegment]]:
    """The plan's batches, computed in a thread of the request's own that runs ahead: the
    VAD reads the next window while the event loop hands this one to the engine. The
    thread runs at ``niceness`` (``granite_speech_server.priority``). Once the
    request is gone, closing its audio stops the thread at its next read."""
    loop = asyncio.get_running_loop()
    batches: asyncio.Queue = asyncio.Queue()

    def plan() -> None:
        try:
            for batch in windows:
                loop.call_soon_threadsafe(batches.put_nowait, batch)
            loop.call_soon_threadsafe(batches.put_nowait, None)
        except DecodeCancelled:
            pass  # nobody is waiting any more
        except BaseException as exc:  # noqa: BLE001 - raised to the request below
            loop.call_soon_threadsafe(batches.put_nowait, exc)

    start_thread(plan, name="plan", niceness=niceness)
    while (batch := await batches.get()) is not None:
        if isinstance(batch, BaseException):
            raise batch
        yield batch


async def _latest(queue: asyncio.Queue) -> SegmentResult:
    """The newest of a segment's results waiting in its queue (they are cumulative): a
    segment that finished while an earlier one streamed becomes one delta, not one per
    token. A failure among them is raised."""
    items = [await queue.get()]
    while not queue.empty():
        items.append(queue.get_nowait())
    for item in items:
        if isinstance(item, BaseException):
            raise item
    return items[-1]


async def _cancel(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _DeltaTracker:
    """Turns cumulative segment texts into deltas whose concatenation is exactly
    the stitched transcript: edges are stripped, trailing whitespace is held back
    until text follows it, and segments are joined as ``join_texts`` joins them."""

    def __init__(self, *, spaced: bool) -> None:
        self._separator = " " if spaced else ""
        self._anything_sent = False
        self._sent_chars = 0
        self._sent_tokens = 0

    def advance(self, result: SegmentResult) -> TextDelta | None:
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
