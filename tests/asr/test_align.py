"""CTC forced alignment on posteriors whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from granite_speech_server.asr.align import (
    FRAME_SECONDS,
    NotAlignable,
    segment_words,
    transcript_words,
    viterbi_path,
    word_timings,
)
from granite_speech_server.asr.transcript import Segment


def posteriors(frames: list[str], vocab: int = 348, sharpness: float = 8.0) -> np.ndarray:
    """Log-probabilities that favour each frame's label ('' = blank)."""
    logits = np.zeros((len(frames), vocab))
    for t, char in enumerate(frames):
        logits[t, ord(char) if char else 0] = sharpness
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def spoken(*pieces: tuple[str, int]) -> list[str]:
    """('a', 3) = three frames of 'a'; ('', 5) = five blank frames."""
    return [char for char, count in pieces for _ in range(count)]


def test_words_get_the_frames_of_their_characters():
    frames = spoken(("", 10), ("o", 3), ("n", 2), ("e", 4), ("", 2), (" ", 3), ("", 5),
                    ("t", 2), ("w", 2), ("o", 3), ("", 8))
    timings = word_timings(posteriors(frames), "one two", offset_s=1.0)
    assert [t.word for t in timings] == ["one", "two"]
    assert timings[0].start == pytest.approx(1.0 + 10 * FRAME_SECONDS)
    assert timings[0].end == pytest.approx(1.0 + 19 * FRAME_SECONDS)
    assert timings[1].start == pytest.approx(1.0 + 29 * FRAME_SECONDS)
    assert timings[1].end == pytest.approx(1.0 + 36 * FRAME_SECONDS)


def test_repeated_letters_need_a_blank_between_them():
    frames = spoken(("", 2), ("e", 2), ("", 1), ("e", 2), ("", 2))
    path = viterbi_path(posteriors(frames), [ord("e"), ord("e")])
    assert list(path) == [-1, -1, 0, 0, -1, 1, 1, -1, -1]


def test_alignment_follows_the_text_even_where_the_head_disagrees():
    """A weak head: the path still visits every character once, in order."""
    rng = np.random.default_rng(0)
    log_probs = np.log(rng.dirichlet(np.ones(348), size=60))
    path = viterbi_path(log_probs, [ord(c) for c in "nine"])
    emitted = [int(i) for i in path if i >= 0]
    assert sorted(set(emitted)) == [0, 1, 2, 3]
    assert emitted == sorted(emitted)


def test_characters_without_a_label_borrow_their_neighbours_time():
    frames = spoken(("", 4), ("a", 3), ("", 3), (" ", 2), ("", 3), ("b", 3), ("", 4))
    timings = word_timings(posteriors(frames), "a€ 日本 b")
    assert [t.word for t in timings] == ["a€", "日本", "b"]
    assert timings[0].start == pytest.approx(4 * FRAME_SECONDS)
    assert timings[1].start == timings[1].end == timings[0].end
    assert timings[2].start == pytest.approx(15 * FRAME_SECONDS)


def test_text_longer_than_the_audio_is_reported():
    with pytest.raises(NotAlignable):
        word_timings(posteriors(spoken(("", 3))), "seven")


def test_empty_text_has_no_words():
    assert word_timings(posteriors(spoken(("", 5))), "  ") == []


def test_long_transcripts_align():
    """More than 127 trellis states (a regression: int8 arithmetic overflowed)."""
    text = " ".join(["seven"] * 30)
    frames = [char for word in text.split() for char in ("", *word, "", " ")]
    timings = word_timings(posteriors(frames), text)
    assert len(timings) == 30
    assert all(a.end <= b.start for a, b in zip(timings, timings[1:]))


def test_a_transcripts_words_are_aligned_segment_by_segment_at_their_audio_offsets():
    first = posteriors(spoken(("", 5), ("h", 2), ("i", 2), ("", 5)))
    second = posteriors(spoken(("", 10), ("y", 2), ("o", 2), ("", 2)))
    segments = [Segment(1.0, 1.3, "hi", [], [], 0.0), Segment(4.0, 4.3, "yo", [], [], 0.0)]
    words = transcript_words(segments, [first, second], audio_starts_s=[0.9, 3.8])
    assert [w.word for w in words] == ["hi", "yo"]
    assert words[0].start == pytest.approx(0.9 + 5 * FRAME_SECONDS)
    assert words[1].start == pytest.approx(3.8 + 10 * FRAME_SECONDS)
    assert words[1].end == pytest.approx(3.8 + 14 * FRAME_SECONDS)


def test_words_that_cannot_be_aligned_are_spread_over_their_segment():
    too_short = posteriors(spoken(("a", 3)))
    segment = Segment(2.0, 3.0, "four words right here", [], [], 0.0)
    words = segment_words(too_short, segment, audio_offset_s=1.8)
    assert [(w.word, w.start, w.end) for w in words] == [
        ("four", 2.0, 2.25), ("words", 2.25, 2.5), ("right", 2.5, 2.75), ("here", 2.75, 3.0)]
