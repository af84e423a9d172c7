"""Streaming logic with a scripted engine: deltas come in audio order while all
segments run at once, and they add up exactly to the stitched transcript."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import numpy as np
import pytest

from granite_speech_server.asr.engine import SegmentResult
from granite_speech_server.asr.transcript import (
    Finished,
    TextDelta,
    TokenLogprob,
    TranscriptionOptions,
)
from granite_speech_server.audio.features import audio_token_count
from granite_speech_server.audio.segment import PlannedSegment, PlanOptions, SpeechPlanner
from granite_speech_server.asr.transcriber import Transcriber
from granite_speech_server.config import Settings
from granite_speech_server.errors import EngineError
from tools import tiny_model

pytestmark = pytest.mark.asyncio(loop_scope="session")


class ScriptedEngine:
    """Emits each segment's text word by word, with per-segment delays, recording
    which requests started and which were cancelled."""

    def __init__(self, texts: list[str], delay_s: list[float], fail_at: int | None = None,
                 counted_audio_tokens: int | None = None):
        self.tokenizer = tiny_model.build_tokenizer()
        self.texts, self.delay_s, self.fail_at = texts, delay_s, fail_at
        self.counted_audio_tokens = counted_audio_tokens
        """Audio tokens the engine reports in each result's prompt count (None: no count)."""
        self.started: list[str] = []
        self.requests: list = []
        self.cancelled: list[str] = []

    def audio_tokens(self, num_samples: int) -> int:
        return audio_token_count(num_samples)

    async def generate(self, request, request_id):
        index = len(self.started)
        self.started.append(request_id)
        self.requests.append(request)
        words = self.texts[index].split(" ")
        try:
            for n in range(1, len(words) + 1):
                await asyncio.sleep(self.delay_s[index])
                if index == self.fail_at:
                    raise EngineError("engine died")
                text = " ".join(words[:n])
                yield SegmentResult(text=text, token_ids=list(range(n)),
                                    logprobs=[TokenLogprob(w, -0.1) for w in words[:n]],
                                    prompt_tokens=self._prompt_tokens(request),
                                    finished=n == len(words))
        except asyncio.CancelledError:
            self.cancelled.append(request_id)
            raise

    def _prompt_tokens(self, request) -> int:
        if self.counted_audio_tokens is None:
            return 0
        return request.text_tokens + self.counted_audio_tokens


def fixed_length_plan(audio, options: PlanOptions) -> Iterator[list[PlannedSegment]]:
    """Every max_segment_s of audio is a segment, two to a batch: no VAD, so zeros work
    as audio."""
    step, size = int(options.max_segment_s * 16000), audio.whole().size
    segments = [PlannedSegment(lo, min(lo + step, size), lo, min(lo + step, size))
                for lo in range(0, size, step)]
    for first in range(0, len(segments), 2):
        yield segments[first : first + 2]


def transcriber(engine, seconds: float) -> tuple[Transcriber, np.ndarray]:
    settings = Settings(model="m", max_segment_seconds=10)
    run = Transcriber(engine, settings, planner=fixed_length_plan)
    return run, np.zeros(int(seconds * 16000), np.float32)


async def collect(events):
    return [event async for event in events]


@pytest.mark.parametrize(("language", "joined"), [("en", "one two three four five"),
                                                  ("ja", "one twothree fourfive")])
async def test_deltas_add_up_to_the_stitched_text(language, joined):
    engine = ScriptedEngine([" one two ", "three four", "", "five"], [0.01, 0.001, 0.001, 0.001])
    run, audio = transcriber(engine, 35)
    events = await collect(run.stream(audio, TranscriptionOptions(language=language)))
    *deltas, done = events
    assert isinstance(done, Finished)
    assert "".join(d.text for d in deltas) == done.transcript.text == joined
    assert [s.text for s in done.transcript.segments] == ["one two", "three four", "", "five"]


async def test_a_segment_that_finished_while_an_earlier_one_streamed_is_one_delta():
    engine = ScriptedEngine(["a b c", "d e f g"], [0.05, 0.001])
    run, audio = transcriber(engine, 15)
    *deltas, done = await collect(run.stream(audio, TranscriptionOptions()))
    assert [d.text for d in deltas] == ["a", " b", " c", " d e f g"]
    assert [lp.token for lp in deltas[-1].logprobs] == ["d", "e", "f", "g"]
    assert done.transcript.text == "a b c d e f g"


async def test_all_segments_start_before_the_first_finishes():
    engine = ScriptedEngine(["a b c", "d e", "f"], [0.05, 0.001, 0.001])
    run, audio = transcriber(engine, 25)
    events = run.stream(audio, TranscriptionOptions())
    first = await anext(events)
    assert isinstance(first, TextDelta) and first.text == "a"
    assert len(engine.started) == 3
    await events.aclose()


async def test_closing_the_stream_cancels_every_running_segment():
    engine = ScriptedEngine(["a b c d e f", "g h i j k", "l m n"], [0.05, 0.05, 0.05])
    run, audio = transcriber(engine, 25)
    events = run.stream(audio, TranscriptionOptions())
    await anext(events)
    await events.aclose()
    assert sorted(engine.cancelled) == sorted(engine.started)


async def test_an_engine_failure_surfaces_in_audio_order_and_cancels_the_rest():
    engine = ScriptedEngine(["a b", "c d", "e f g h"], [0.001, 0.001, 0.05], fail_at=1)
    run, audio = transcriber(engine, 25)
    received = []
    with pytest.raises(EngineError):
        async for event in run.stream(audio, TranscriptionOptions()):
            received.append(event)
    assert "".join(e.text for e in received) == "a b"
    assert engine.started[2] in engine.cancelled


async def test_usage_counts_audio_tokens_once_per_segment():
    engine = ScriptedEngine(["a", "b"], [0.001, 0.001])
    run, audio = transcriber(engine, 20)
    transcript = await run.transcribe(audio, TranscriptionOptions())
    assert transcript.usage.audio_tokens == 2 * audio_token_count(10 * 16000)
    assert transcript.usage.output_tokens == 2
    assert transcript.usage.seconds == 20


@pytest.mark.parametrize("stream", [False, True])
async def test_usage_takes_the_engines_own_prompt_counts(stream):
    """Where the engine counted a segment's prompt, usage reports that count, not the
    formula's (here they differ on purpose)."""
    engine = ScriptedEngine(["a", "b"], [0.001, 0.001], counted_audio_tokens=7)
    run, audio = transcriber(engine, 20)
    if stream:
        *_, done = await collect(run.stream(audio, TranscriptionOptions()))
        transcript = done.transcript
    else:
        transcript = await run.transcribe(audio, TranscriptionOptions())
    text_tokens = len(engine.requests[0].prompt_token_ids) - 1  # the placeholder is audio
    assert transcript.usage.audio_tokens == 2 * 7
    assert transcript.usage.text_tokens == 2 * text_tokens
    assert [s.prompt_tokens for s in transcript.segments] == [text_tokens + 7] * 2


async def test_the_output_budget_reserves_the_engines_audio_tokens():
    class CountsDouble(ScriptedEngine):
        def audio_tokens(self, num_samples: int) -> int:
            return 2 * audio_token_count(num_samples)

    # One 20 s segment in a 430-token context: the context, not speech, bounds both.
    settings = Settings(model="m", max_model_len=430, max_segment_seconds=20)
    engines = [ScriptedEngine(["a"], [0.001]), CountsDouble(["a"], [0.001])]
    for engine in engines:
        run = Transcriber(engine, settings, planner=fixed_length_plan)
        await run.transcribe(np.zeros(20 * 16000, np.float32), TranscriptionOptions())
    formula, doubled = (engine.requests[0].max_tokens for engine in engines)
    text_tokens = engines[0].requests[0].text_tokens
    assert formula == 430 - text_tokens - audio_token_count(20 * 16000)
    assert doubled == formula - audio_token_count(20 * 16000)


async def test_a_failed_plan_ends_the_stream_after_the_segments_before_it():
    engine = ScriptedEngine(["a b", "c d"], [0.001, 0.001])

    def planner(audio, options):
        yield [PlannedSegment(0, 16000, 0, 16000), PlannedSegment(16000, 32000, 16000, 32000)]
        raise RuntimeError("the VAD broke")

    run = Transcriber(engine, Settings(model="m"), planner=planner)
    received = []
    with pytest.raises(RuntimeError, match="the VAD broke"):
        async for event in run.stream(np.zeros(5 * 16000, np.float32), TranscriptionOptions()):
            received.append(event)
    assert "".join(e.text for e in received) == "a b c d"


async def test_audio_without_speech_makes_no_engine_call(vad_network):
    engine = ScriptedEngine([], [])
    run = Transcriber(engine, Settings(model="m"), SpeechPlanner(vad_network))
    silence = np.zeros(16000 * 5, np.float32)
    transcript = await run.transcribe(silence, TranscriptionOptions())
    events = await collect(run.stream(silence, TranscriptionOptions()))
    assert transcript.text == "" and transcript.segments == [] and engine.started == []
    assert len(events) == 1 and events[0].transcript.text == ""
    assert transcript.usage.audio_tokens == 0 and transcript.usage.seconds == 5


async def test_a_long_stream_is_planned_in_windows_and_loses_nothing():
    texts = [f"w{i}a w{i}b" for i in range(10)]
    engine = ScriptedEngine(texts, [0.001] * 10)
    run, audio = transcriber(engine, 100)
    *deltas, done = await collect(run.stream(audio, TranscriptionOptions()))
    assert "".join(d.text for d in deltas) == done.transcript.text == " ".join(texts)
    assert [s.start for s in done.transcript.segments] == [10.0 * i for i in range(10)]


async def test_a_plain_request_submits_each_batch_before_planning_the_next():
    engine = ScriptedEngine([f"w{i}" for i in range(10)], [0.001] * 10)
    started_before_rest = []

    def planner(audio, options):
        first, *rest = fixed_length_plan(audio, options)
        yield first
        deadline = time.monotonic() + 5  # the planning thread waits for the engine
        while len(engine.started) < len(first) and time.monotonic() < deadline:
            time.sleep(0.001)
        started_before_rest.append(len(engine.started))
        for batch in rest:
            yield batch

    run = Transcriber(engine, Settings(model="m", max_segment_seconds=10), planner=planner)
    transcript = await run.transcribe(np.zeros(100 * 16000, np.float32), TranscriptionOptions())
    assert started_before_rest == [2]
    assert transcript.text == " ".join(f"w{i}" for i in range(10))


async def test_the_planning_thread_stops_when_the_request_is_gone():
    """The plan runs ahead in a thread of its own; a request that ends early (a client
    gone) stops it instead of leaving it reading on through the file."""
    engine = ScriptedEngine([f"w{i}" for i in range(100)], [10.0] * 100)  # never finishes
    planned: list[int] = []

    def planner(audio, options):
        for k in range(100):
            audio.until(k * 16000)  # reads the audio, as the VAD does
            planned.append(k)
            yield [PlannedSegment(k * 16000, (k + 1) * 16000, k * 16000, (k + 1) * 16000)]
            time.sleep(0.01)

    run = Transcriber(engine, Settings(model="m"), planner=planner)
    task = asyncio.create_task(run.transcribe(np.zeros(100 * 16000, np.float32),
                                              TranscriptionOptions()))
    while len(planned) < 5:
        await asyncio.sleep(0.005)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    stopped_at = len(planned)
    await asyncio.sleep(0.2)
    assert len(planned) <= stopped_at + 1 < 100
