"""The segment plan: cuts only in pauses, bounded length, merged short neighbours."""

from __future__ import annotations

import functools
import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import soxr

from granite_speech_server.audio.progressive import DecodingAudio
from granite_speech_server.audio.segment import (
    PlanOptions,
    SpeechPlanner,
    edge_margin,
    plan_in_windows,
    plan_segments,
)
from granite_speech_server.audio.vad import (
    MAX_GAIN,
    SpeechDetector,
    VadOptions,
    level_gains,
    speech_regions,
)
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


def test_silero_finds_each_phrase_within_a_fifth_of_a_second(utterances, vad_network):
    audio, truth = utterances
    found = speech_regions(audio, VadOptions(), vad_network)
    assert len(found) == len(truth)
    for (start, end), (true_start, true_end) in zip(found, truth):
        assert abs(start / SR - true_start) < 0.2
        assert abs(end / SR - true_end) < 0.2


def test_real_plan_keeps_phrases_apart_and_merges_the_short_one(utterances, vad_network):
    audio, truth = utterances
    segments = plan_segments(audio, PlanOptions(min_segment_s=1.0, max_merge_gap_s=2.0),
                             detect=functools.partial(speech_regions, network=vad_network))
    starts = [s.start / SR for s in segments]
    assert len(segments) == 2, seconds(segments)
    assert abs(starts[0] - truth[0][0]) < 0.3
    assert abs(segments[-1].end / SR - truth[-1][1]) < 0.3


def loudness_detector(audio, options=None):
    """Speech wherever a sample isn't silent."""
    loud = (audio != 0).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], loud, [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


class LoudnessWindows:
    """``loudness_detector`` window by window, recording the windows asked for."""

    def __init__(self, audio):
        self.audio, self.windows = audio, []

    def regions(self, start, end):
        self.windows.append((start, end))
        return [(a + start, b + start) for a, b in loudness_detector(self.audio[start:end])]


def speech_and_pauses(seconds: float, seed: int) -> np.ndarray:
    """Bursts of noise (0.3-12 s, a few of them over 30 s) between 0.2-3 s silences."""
    rng = np.random.default_rng(seed)
    pieces, total = [], 0
    while total < seconds * SR:
        speech = int(rng.choice([rng.uniform(0.3, 12), rng.uniform(30, 50)], p=[0.95, 0.05]) * SR)
        pause = int(rng.uniform(0.2, 3.0) * SR) // 2 * 2
        pieces += [np.zeros(pause, np.float32), rng.uniform(0.1, 1, speech).astype(np.float32)]
        total += pause + speech
    return np.concatenate(pieces)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planning_in_windows_cuts_as_the_whole_file_plan(seed):
    audio = speech_and_pauses(900, seed)
    options = PlanOptions(max_segment_s=30)
    whole = plan_segments(audio, options, detect=loudness_detector)
    batches = list(plan_in_windows(audio, options, LoudnessWindows(audio)))
    windowed = [s for batch in batches for s in batch]
    assert len(batches) > 5, "a quarter hour is planned a window at a time"
    assert [(s.start, s.end) for s in windowed] == [(s.start, s.end) for s in whole]
    # A pause split between two windows may round its middle the other way.
    for a, b in zip(windowed, whole):
        assert abs(a.audio_start - b.audio_start) <= 1 and abs(a.audio_end - b.audio_end) <= 1


def test_the_first_window_is_planned_from_the_first_ten_seconds():
    burst = np.concatenate([np.zeros(SR, np.float32), np.full(SR, 0.5, np.float32)])
    audio = np.tile(burst, 300)  # ten minutes: a second of speech every two
    detector = LoudnessWindows(audio)
    first = next(plan_in_windows(audio, PlanOptions(), detector))
    assert detector.windows == [(0, 10 * SR)] and first
    assert first[-1].audio_end <= 10 * SR - edge_margin(PlanOptions())


def test_silence_plans_no_window_with_segments():
    silence = np.zeros(300 * SR, np.float32)
    detector = LoudnessWindows(silence)
    assert list(plan_in_windows(silence, PlanOptions(), detector)) == []
    assert len(detector.windows) > 10


@pytest.fixture(scope="module")
def loud_and_quiet(tmp_path_factory) -> tuple[np.ndarray, list[tuple[float, bool]]]:
    """Twelve phrases 1.5 s apart, every third one 33 dB quieter (peak 0.02, not 0.9),
    over a faint noise floor; with each phrase's start and whether it is quiet."""
    out: Path = tmp_path_factory.mktemp("levels")
    import soundfile as sf

    phrases = []
    for i, text in enumerate(["seven three one four", "nine nine two eight five", "six zero one"]):
        wav, rate = sf.read(synthesize_speech(text, out / f"{i}.wav"), dtype="float32")
        wav = soxr.resample(wav, rate, SR)
        loud = np.flatnonzero(np.abs(wav) > 0.02)
        phrases.append(wav[loud[0] : loud[-1] + 1] / np.abs(wav).max())
    pieces, truth, t = [], [], 0
    for k in range(12):
        quiet = k % 3 == 0
        phrase = (phrases[k % 3] * (0.02 if quiet else 0.9)).astype(np.float32)
        pieces += [np.zeros(int(1.5 * SR), np.float32), phrase]
        t += int(1.5 * SR)
        truth.append((t / SR, quiet))
        t += phrase.size
    noise = np.random.default_rng(0).normal(0, 1e-4, t).astype(np.float32)
    return np.concatenate(pieces) + noise, truth


def test_a_quiet_speaker_after_loud_ones_is_still_speech(loud_and_quiet, vad_network):
    """Silero's state, left to itself, takes the quiet phrases for background here."""
    audio, truth = loud_and_quiet
    found = [start / SR for start, _ in speech_regions(audio, VadOptions(), vad_network)]
    for start, quiet in truth:
        assert min(abs(start - f) for f in found) < 0.3, (start, quiet)
    assert len(found) == len(truth)


def test_levelling_leaves_loud_audio_alone_and_caps_the_gain():
    rng = np.random.default_rng(0)
    loud = rng.normal(0, 0.3, 20 * SR).astype(np.float32)
    assert np.all(level_gains(loud, 0, loud.size) == 1.0)
    faint = rng.normal(0, 1e-4, 20 * SR).astype(np.float32)
    assert np.allclose(level_gains(faint, 0, faint.size), MAX_GAIN)
    mixed = np.concatenate([loud, faint])
    whole = level_gains(mixed, 0, mixed.size)
    for start, end in [(0, 12345), (5 * SR, 27 * SR + 17), (30 * SR, mixed.size)]:
        assert np.array_equal(level_gains(mixed, start, end), whole[start:end])


def test_silero_windows_hear_the_file_as_a_whole(utterances, vad_network):
    """Its state runs through the file: a window sees what the whole-file pass sees."""
    audio, _ = utterances
    long_audio = np.tile(audio, 4)
    whole = speech_regions(long_audio, VadOptions(), vad_network)
    detector = SpeechDetector(long_audio, VadOptions(), vad_network)
    half = long_audio.size // 2
    windowed = detector.regions(0, half) + detector.regions(half, long_audio.size)
    inner = [r for r in whole if r[1] < half - SR or r[0] > half + SR]
    assert all(r in windowed for r in inner)


def test_noise_and_silence_have_no_speech(vad_network):
    noise = np.random.default_rng(2).normal(0, 0.01, 10 * SR).astype(np.float32)
    assert speech_regions(noise, VadOptions(), vad_network) == []
    assert speech_regions(np.zeros(5 * SR, np.float32), VadOptions(), vad_network) == []


def test_a_planned_recording_is_freed_without_the_garbage_collector(utterances, vad_network):
    """No reference cycle holds a request's audio: one would wait for the collector's full
    pass, minutes apart under load, and each kept a whole recording (the server's memory
    climbed ~1.5 GB between passes, when the VAD's block generator held its detector)."""
    audio = DecodingAudio.of(np.tile(utterances[0], 4))  # ~40 s: several windows
    freed = weakref.ref(audio)
    gc.disable()
    try:
        batches = list(SpeechPlanner(vad_network)(audio, PlanOptions()))
        assert len(batches) > 1, "the real detector planned several windows of speech"
        del audio, batches
        assert freed() is None
    finally:
        gc.enable()


def test_files_sharing_the_network_keep_their_own_state(utterances, vad_network):
    """One network serves every request at once: a file's recurrent state is its own, so
    another file detected in between changes nothing."""
    audio, _ = utterances
    other = np.random.default_rng(3).normal(0, 0.3, audio.size).astype(np.float32)
    half = audio.size // 2
    alone = SpeechDetector(audio, VadOptions(), vad_network)
    expected = alone.regions(0, half) + alone.regions(half, audio.size)
    interleaved = SpeechDetector(audio, VadOptions(), vad_network)
    found = interleaved.regions(0, half)
    SpeechDetector(other, VadOptions(), vad_network).regions(0, other.size)
    found += interleaved.regions(half, audio.size)
    assert found == expected and len(found) >= 2
