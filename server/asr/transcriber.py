"""Runs one request through the flow: plan -> prompts -> engine -> stitch.

Segments go to the engine as soon as they are planned (a window of audio at a time), none
waiting for another, so the engine batches them.
``stream`` yields text deltas in audio order while later segments already run;
``transcribe`` waits for the final texts only. The steps are modules of their own:
``planning``, ``prompt``, the ``SpeechEngine`` (or ``speculation`` from CTC drafts),
``stitch``, and ``align`` for word times.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from granite_speech_server.asr import prompt as prompts
from granite_speech_server.asr.align import transcript_words
from granite_speech_server.asr.ctc import CtcHead
from granite_speech_server.asr.engine import (
    SegmentRequest,
    SegmentResult,
    SpeechEngine,
    final_result,
)
from granite_speech_server.asr.language_id import LanguageIdentifier
from granite_speech_server.asr.planning import plan_options, planned_ahead
from granite_speech_server.asr.speculation import Speculator
from granite_speech_server.asr.stitch import DeltaStitcher, stitch, token_usage
from granite_speech_server.asr.transcript import (
    Finished,
    Transcript,
    TranscriptEvent,
    TranscriptionOptions,
)
from granite_speech_server.audio.features import SAMPLE_RATE
from granite_speech_server.audio.progressive import DecodingAudio
from granite_speech_server.audio.segment import PlannedSegment, Planner
from granite_speech_server.config import Settings


Plan = AsyncIterator[list[PlannedSegment]]
"""A segment plan arriving batch by batch, in audio order."""


@dataclass
class _Plan:
    """The segments planned so far, in audio order, and the request sent for each."""

    segments: list[PlannedSegment] = field(default_factory=list)
    requests: list[SegmentRequest] = field(default_factory=list)


class Transcriber:
    def __init__(self, engine: SpeechEngine, settings: Settings, planner: Planner,
                 ctc: CtcHead | None = None,
                 language_id: LanguageIdentifier | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.planner = planner
        self.ctc = ctc
        self.language_id = language_id
        self.speculator = Speculator(
            engine, max_entropy=settings.speculative_max_entropy,
            min_probability=settings.speculative_min_probability,
        ) if settings.speculative_ctc and ctc is not None else None

    async def warm_up(self) -> None:
        """One short request straight to the engine (noise has no speech to plan)."""
        noise = np.random.default_rng(0).normal(0, 0.01, SAMPLE_RATE).astype(np.float32)
        prompt_ids = prompts.render_prompt(self.engine.tokenizer, prompts.TRANSCRIBE_INSTRUCTION)
        request = SegmentRequest(prompt_ids, noise, self._budget(noise.size, len(prompt_ids)))
        await final_result(self.engine, request, f"warm-up-{uuid.uuid4().hex}")

    async def transcribe(self, audio: np.ndarray | DecodingAudio, options: TranscriptionOptions,
                         plan: Plan | None = None) -> Transcript:
        """The whole transcript. ``audio`` may still be decoding: its plan starts on
        what is there, and decoding stops if the request ends first. ``plan``: the
        audio's plan where it is made elsewhere (``DecodedAudio.plan``)."""
        source = DecodingAudio.of(audio)
        planned = _Plan()
        runs: list[asyncio.Task] = []
        posteriors: list[np.ndarray] | None = [] if self.speculator else None
        try:
            async for batch in self._submissions(source, options, planned, plan,
                                                 stream=False):
                if self.speculator is None:
                    runs += [asyncio.create_task(final_result(self.engine, request, rid))
                             for request, rid in batch]
                    continue
                batch_posteriors = await self._posteriors([request for request, _ in batch])
                posteriors += batch_posteriors
                runs += [asyncio.create_task(self.speculator.decode(request, rid, log_probs))
                         for (request, rid), log_probs in zip(batch, batch_posteriors)]
            results = await asyncio.gather(*runs)
        finally:
            source.close()
            await _cancel(runs)
        return await self._finish(planned, results, options, source.whole().size, posteriors)

    async def stream(
        self, audio: np.ndarray | DecodingAudio, options: TranscriptionOptions,
        plan: Plan | None = None,
    ) -> AsyncIterator[TranscriptEvent]:
        """Deltas in audio order, then ``Finished``. Closing the iterator early
        (a client that went away) cancels every segment, which aborts it in vLLM,
        and stops decoding the rest of ``audio``."""
        source = DecodingAudio.of(audio)
        planned = _Plan()
        # Two sides meet at ``submitted``: the planning task submits each segment as
        # the plan reaches it and puts the queue its results arrive on into
        # ``submitted``, in audio order, then None (or the plan's failure). This side
        # reads those queues one after the other: every segment runs at once, and
        # their deltas come out in audio order.
        submitted: asyncio.Queue[asyncio.Queue | BaseException | None] = asyncio.Queue()
        runs: list[asyncio.Task] = []

        async def submit_all() -> None:
            try:
                async for batch in self._submissions(source, options, planned, plan,
                                                     stream=True):
                    for request, rid in batch:
                        results: asyncio.Queue = asyncio.Queue()
                        runs.append(asyncio.create_task(self._pump(request, rid, results)))
                        submitted.put_nowait(results)
                submitted.put_nowait(None)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - raised below, in audio order
                submitted.put_nowait(exc)

        planning = asyncio.create_task(submit_all())
        try:
            deltas = DeltaStitcher(options.output_language)
            finals: list[SegmentResult] = []
            while (results := await submitted.get()) is not None:
                if isinstance(results, BaseException):
                    raise results
                result = SegmentResult()
                while not result.finished:
                    result = await _latest(results)
                    if delta := deltas.advance(result):
                        yield delta
                deltas.end_segment()
                finals.append(result)
            yield Finished(await self._finish(planned, finals, options, source.whole().size))
        finally:
            source.close()
            await _cancel([planning, *runs])

    async def _submissions(self, source: DecodingAudio, options: TranscriptionOptions,
                           plan: _Plan, made: Plan | None, *, stream: bool,
                           ) -> AsyncIterator[list[tuple[SegmentRequest, str]]]:
        """The plan's segments as engine requests with their ids, a window's worth at a
        time, each batch as soon as the VAD has seen its audio (in the plan's own thread:
        it is CPU work, and waits for the decoder), or as ``made`` brings it."""
        prompt_ids = prompts.render_prompt(self.engine.tokenizer, options.instruction())
        request_id = uuid.uuid4().hex
        if made is None:
            windows = self.planner(source, plan_options(self.settings, options))
            made = planned_ahead(windows, self.settings.preprocessing_niceness)
        async for segments in made:
            # The planner has seen this audio: it is decoded, nothing waits.
            audio = source.until(segments[-1].audio_end)
            batch = []
            for segment in segments:
                index = len(plan.requests)
                request = SegmentRequest(
                    prompt_token_ids=prompt_ids,
                    # A view, not a copy: a long file's samples are held once.
                    audio=audio[segment.audio_start : segment.audio_end],
                    max_tokens=self._budget(segment.num_audio_samples, len(prompt_ids)),
                    temperature=options.temperature,
                    stream=stream,
                    priority=index,
                )
                plan.segments.append(segment)
                plan.requests.append(request)
                batch.append((request, f"{request_id}-{index}"))
            yield batch

    def _budget(self, num_samples: int, prompt_tokens: int) -> int:
        return output_budget(self.settings, num_samples, prompt_tokens,
                             self.engine.audio_tokens(num_samples))

    async def _pump(self, request: SegmentRequest, request_id: str, queue: asyncio.Queue) -> None:
        try:
            async for result in self.engine.generate(request, request_id):
                queue.put_nowait(result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            queue.put_nowait(exc)

    async def _posteriors(self, requests: list[SegmentRequest]) -> list[np.ndarray]:
        if self.ctc is None:
            raise RuntimeError("the CTC head is not loaded (checked by the API)")
        return await asyncio.to_thread(self.ctc.log_posteriors,
                                       [request.audio for request in requests])

    async def _finish(self, plan: _Plan, results: list[SegmentResult],
                      options: TranscriptionOptions, num_samples: int,
                      posteriors: list[np.ndarray] | None = None) -> Transcript:
        usage = token_usage(plan.requests, results, self.engine.audio_tokens, num_samples)
        transcript = stitch(plan.segments, results, options, usage, num_samples)
        if self.language_id is not None and options.task == "transcribe":
            detected = await asyncio.to_thread(self.language_id.identify, transcript.text,
                                               options.languages)
            transcript = dataclasses.replace(transcript,
                                             detected_languages=(detected,) if detected else ())
        if not options.word_timestamps:
            return transcript
        posteriors = posteriors or await self._posteriors(plan.requests)
        audio_starts = [segment.audio_start / SAMPLE_RATE for segment in plan.segments]
        # The Viterbi passes are CPU work (a Python loop over every frame): off the loop.
        words = await asyncio.to_thread(transcript_words, transcript.segments, posteriors,
                                        audio_starts)
        return dataclasses.replace(transcript, words=words)


def output_budget(settings: Settings, num_samples: int, prompt_tokens: int,
                  audio_tokens: int) -> int:
    """A segment's output tokens: room for fast speech, far below the context, so a
    model that never says end-of-text stops after a few seconds' worth of tokens, not at
    2048. ``audio_tokens``: what the engine makes of the segment's ``num_samples``."""
    duration = num_samples / SAMPLE_RATE
    wanted = settings.output_tokens_floor + math.ceil(duration * settings.output_tokens_per_second)
    # The placeholder token in the prompt becomes the audio tokens.
    used = prompt_tokens - 1 + audio_tokens
    return max(1, min(wanted, settings.max_model_len - used))


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
