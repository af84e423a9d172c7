"""The segment plan: cuts only in pauses, bounded length, merged short neighbours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soxr

from server.audio.segment import PlanOptions, plan_segments
from server.audio.vad import VadOptions, speech_regions
from tests.audio_samples import synthesize_speech

SR = 16000


def fixed(regions_s):
    """A detector that reports the given (start_s, end_s) regions."""
    return lambda audio, options: [(int(a * SR), int(b * SR)) for a, b in regions_s]


def plan(regions_s, seconds, **options):
    audio = np.random.default_rng(0).normal(0, 0.1, int(seconds * SR)).astype(np.float32)
    return plan_segments(audio, PlanOptions(**options), detect=fixed(regions_s))


def seconds(segments):
    return [(s.start / SR, s.end / SR) for s in segments]


def test_no_speech_no_segments():
    assert plan([], 60) == []


def test_segments_are_the_speech_regions_with_padding_inside_the_pauses():
    segments = plan([(1.0, 4.0), (5.0, 9.0)], 10, padding_ms=300)
    assert seconds(segments) == [(1.0, 4.0), (5.0, 9.0)]
    first, second = segments
    assert (first.audio_start, first.audio_end) == (int(0.7 * SR), int(4.3 * SR))
    assert (second.audio_start, second.audio_end) == (int(4.7 * SR), int(9.3 * SR))


def test_padding_never_takes_more_than_half_a_pause():
    first, second = plan([(1.0, 4.0), (4.2, 6.0)], 10, padding_ms=300)
    assert first.audio_end <= second.audio_start
    assert first.audio_end == int(4.1 * SR)


def test_a_short_segment_joins_the_neighbour_across_the_shorter_pause():
    merged = plan([(0.0, 5.0), (6.5, 7.0), (7.5, 12.0)], 20, min_segment_s=1.0)
    assert seconds(merged) == [(0.0, 5.0), (6.5, 12.0)]


def test_no_merge_across_a_long_pause_or_past_the_maximum():
    assert len(plan([(0.0, 5.0), (9.0, 9.5)], 20, max_merge_gap_s=2.0)) == 2
    assert len(plan([(0.0, 29.8), (30.0, 30.5)], 40, max_segment_s=30)) == 2


def test_a_long_speech_run_is_cut_at_its_quietest_moment():
    audio = np.random.default_rng(1).normal(0, 0.3, 70 * SR).astype(np.float32)
    quiet = [(22.0, 22.2), (47.0, 47.2)]
    for a, b in quiet:
        audio[int(a * SR) : int(b * SR)] *= 0.01
    segments = plan_segments(audio, PlanOptions(max_segment_s=30), detect=fixed([(0, 70)]))
    cuts = [s.start / SR for s in segments[1:]]
    assert len(cuts) == 2
    for cut, (a, b) in zip(cuts, quiet):
        assert a <= cut <= b
    assert all(s.num_audio_samples <= 30 * SR for s in segments)


@pytest.mark.parametrize("total", [1, 45, 200, 3600])
def test_every_plan_is_ordered_bounded_and_covers_all_speech(total):
    rng = np.random.default_rng(total)
    edges = np.sort(rng.uniform(0, total, 2 * max(1, total // 5)))
    regions = [(a, b) for a, b in zip(edges[::2], edges[1::2]) if b - a > 0.05]
    segments = plan(regions, total, max_segment_s=30)
    assert all(s.num_audio_samples <= 30 * SR for s in segments)
    assert all(a.audio_end <= b.audio_start for a, b in zip(segments, segments[1:]))
    assert mask(regions, total) <= mask(seconds(segments), total)


def mask(spans_s, total_s) -> set[int]:
    """The 10 ms steps the spans cover (their inner part, so rounding doesn't count)."""
    return {t for a, b in spans_s for t in range(int(a * 100) + 1, int(b * 100) - 1)}


@pytest.fixture(scope="module")
def utterances(tmp_path_factory) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Three spoken phrases separated by 1.5 s pauses, with their true extents."""
    out: Path = tmp_path_factory.mktemp("vad")
    pieces, truth, t = [], [], 1.0
    pieces.append(np.zeros(SR, np.float32))
    for i, text in enumerate(["seven three one", "four", "nine nine two eight"]):
        import soundfile as sf

        wav, rate = sf.read(synthesize_speech(text, out / f"{i}.wav"), dtype="float32")
        wav = soxr.resample(wav, rate, SR)
        loud = np.flatnonzero(np.abs(wav) > 0.02)
        wav = wav[loud[0] : loud[-1] + 1]
        pieces += [wav, np.zeros(int(1.5 * SR), np.float32)]
        truth.append((t, t + len(wav) / SR))
        t += len(wav) / SR + 1.5
    return np.concatenate(pieces), truth


def test_silero_finds_each_phrase_within_a_fifth_of_a_second(utterances):
    audio, truth = utterances
    found = speech_regions(audio, VadOptions())
    assert len(found) == len(truth)
    for (start, end), (true_start, true_end) in zip(found, truth):
        assert abs(start / SR - true_start) < 0.2
        assert abs(end / SR - true_end) < 0.2


def test_real_plan_keeps_phrases_apart_and_merges_the_short_one(utterances):
    audio, truth = utterances
    segments = plan_segments(audio, PlanOptions(min_segment_s=1.0, max_merge_gap_s=2.0))
    starts = [s.start / SR for s in segments]
    assert len(segments) == 2, seconds(segments)
    assert abs(starts[0] - truth[0][0]) < 0.3
    assert abs(segments[-1].end / SR - truth[-1][1]) < 0.3


def test_noise_and_silence_have_no_speech():
    noise = np.random.default_rng(2).normal(0, 0.01, 10 * SR).astype(np.float32)
    assert speech_regions(noise, VadOptions()) == []
    assert speech_regions(np.zeros(5 * SR, np.float32), VadOptions()) == []
