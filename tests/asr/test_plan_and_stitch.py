"""Pure logic: stitching, usage, stream deltas, plan options and the output budget."""

from __future__ import annotations


import numpy as np
import pytest

from granite_speech_server.asr.engine import SegmentRequest, SegmentResult
from granite_speech_server.asr.planning import plan_options
from granite_speech_server.asr.stitch import DeltaStitcher, join_texts, stitch, token_usage
from granite_speech_server.asr.transcriber import output_budget
from granite_speech_server.asr.transcript import TranscriptionOptions, Usage
from granite_speech_server.audio.segment import PlannedSegment
from granite_speech_server.audio.vad import VadOptions
from granite_speech_server.audio.features import audio_token_count
from granite_speech_server.config import Settings


def test_join_uses_spaces_except_for_unspaced_scripts():
    assert join_texts([" one two", "", "three "], "en") == "one two three"
    assert join_texts(["こんにちは", "世界"], "ja") == "こんにちは世界"
    assert join_texts([], None) == ""


def budget(num_samples: int, prompt_tokens: int) -> int:
    return output_budget(Settings(model="m"), num_samples, prompt_tokens,
                         audio_token_count(num_samples))


def test_budget_grows_with_duration_from_a_floor():
    assert budget(16000, 17) == 24 + 10
    assert budget(16000 * 30, 17) == 24 + 300


def test_budget_never_exceeds_the_context():
    # 150 s of audio = 1500 audio tokens + 17 prompt tokens: only ~530 left of 2048.
    assert budget(150 * 16000, 17) == 2048 - (16 + 1500)


def _request(prompt_tokens: int, seconds: float) -> SegmentRequest:
    return SegmentRequest(list(range(prompt_tokens)), np.zeros(int(seconds * 16000), np.float32),
                          max_tokens=10)


def test_usage_counts_what_the_engine_counted_and_the_formula_only_where_it_did_not():
    requests = [_request(18, 10), _request(18, 5)]
    results = [SegmentResult(token_ids=[1, 2, 3], prompt_tokens=17 + 99),
               SegmentResult(token_ids=[4, 5], drafted_tokens=2)]  # drafted: no engine count
    usage = token_usage(requests, results, audio_tokens=lambda n: n // 1000,
                        num_samples=16000 * 16)
    assert usage.audio_tokens == 99 + 80
    assert usage.text_tokens == 2 * 17  # the prompt's audio placeholder is not text
    assert (usage.output_tokens, usage.drafted_tokens, usage.seconds) == (5, 2, 16.0)


def test_stitched_segments_are_timed_by_the_plan_and_joined_by_language():
    planned = [PlannedSegment(16000, 48000, 8000, 56000),
               PlannedSegment(80000, 96000, 72000, 104000)]
    results = [SegmentResult(text=" hello ", token_ids=[1], prompt_tokens=30),
               SegmentResult(text="world", token_ids=[2, 3])]
    usage = Usage(audio_tokens=1, text_tokens=2, output_tokens=3, seconds=7.0)
    for language, text in [("en", "hello world"), ("ja", "helloworld")]:
        options = TranscriptionOptions(language=language, temperature=0.2)
        transcript = stitch(planned, results, options, usage, num_samples=7 * 16000)
        assert transcript.text == text and transcript.language == language
        assert [(s.start, s.end, s.text) for s in transcript.segments] == \
            [(1.0, 3.0, "hello"), (5.0, 6.0, "world")]
        assert [s.prompt_tokens for s in transcript.segments] == [30, 0]
        assert transcript.segments[0].temperature == 0.2
        assert transcript.duration == 7.0 and transcript.usage is usage


def test_a_translation_is_stitched_in_its_target_language():
    options = TranscriptionOptions(task="translate", language="en", to_language="ja")
    transcript = stitch([PlannedSegment(0, 1, 0, 1)] * 2,
                        [SegmentResult(text="a"), SegmentResult(text="b")], options,
                        Usage(0, 0, 0, 0.0), num_samples=2)
    assert (transcript.task, transcript.language, transcript.text) == ("translate", "ja", "ab")


def test_deltas_hold_back_trailing_space_and_join_segments_as_the_transcript_does():
    deltas = DeltaStitcher("en")
    cumulative = [" one", " one ", " one two"]
    sent = [deltas.advance(SegmentResult(text=t)) for t in cumulative]
    deltas.end_segment()
    sent.append(deltas.advance(SegmentResult(text="three")))
    assert [d.text if d else None for d in sent] == ["one", None, " two", " three"]
    unspaced = DeltaStitcher("ja")
    unspaced.advance(SegmentResult(text="一"))
    unspaced.end_segment()
    assert unspaced.advance(SegmentResult(text="二")).text == "二"


def test_plan_options_take_the_clients_vad_and_padding_over_the_servers():
    settings = Settings(model="m", max_segment_seconds=20, segment_padding_ms=300,
                        vad_threshold=0.4)
    server = plan_options(settings, TranscriptionOptions())
    assert (server.max_segment_s, server.padding_ms, server.vad.threshold) == (20, 300, 0.4)
    client_vad = VadOptions(threshold=0.7, min_silence_ms=900)
    client = plan_options(settings, TranscriptionOptions(vad=client_vad, padding_ms=0))
    assert (client.padding_ms, client.vad) == (0, client_vad)
