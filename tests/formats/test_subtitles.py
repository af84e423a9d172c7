"""SRT and WebVTT documents, read back with real subtitle parsers."""

from __future__ import annotations

from datetime import timedelta

import pytest
import srt
import webvtt

from granite_speech_server.asr.transcript import Segment
from granite_speech_server.formats.subtitles import (
    MAX_LINE_CHARS,
    MAX_LINES,
    TimedPiece,
    cues_from_segments,
    pack_cues,
    to_srt,
    to_vtt,
)

LONG = (
    "The quick brown fox jumps over the lazy dog while the committee deliberates "
    "at length about the extraordinarily complicated arrangements for next year's "
    "conference, which nobody seems able to agree on."
)
JAPANESE = "今日はとても良い天気ですね。明日も晴れるといいのですが、天気予報によると雨が降るそうです。" * 2


def seg(start: float, end: float, text: str) -> Segment:
    return Segment(start=start, end=end, text=text, token_ids=[], logprobs=[],
                   temperature=0.0)


def parse_srt(document: str) -> list[srt.Subtitle]:
    return list(srt.parse(document, ignore_errors=False))


def parse_vtt(document: str) -> list[webvtt.Caption]:
    return webvtt.from_string(document).captions


def ms(value: timedelta | webvtt.models.Timestamp) -> int:
    if isinstance(value, timedelta):
        return round(value.total_seconds() * 1000)
    hours, minutes, seconds, millis = value.to_tuple()
    return ((hours * 60 + minutes) * 60 + seconds) * 1000 + millis


def assert_well_formed(times: list[tuple[int, int]]) -> None:
    assert all(end > start for start, end in times)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(times, times[1:]))


def test_srt_one_cue_per_segment():
    document = to_srt([seg(0, 2.5, "Hello there."), seg(2.5, 4.25, "General Kenobi.")])
    assert document == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n"
        "2\n00:00:02,500 --> 00:00:04,250\nGeneral Kenobi.\n\n"
    )
    subs = parse_srt(document)
    assert [(s.index, ms(s.start), ms(s.end), s.content) for s in subs] == [
        (1, 0, 2500, "Hello there."), (2, 2500, 4250, "General Kenobi.")]


def test_vtt_one_cue_per_segment():
    document = to_vtt([seg(0, 2.5, "Hello there."), seg(2.5, 4.25, "General Kenobi.")])
    assert document == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:02.500\nHello there.\n\n"
        "00:00:02.500 --> 00:00:04.250\nGeneral Kenobi.\n\n"
    )
    captions = parse_vtt(document)
    assert [(ms(c.start_time), ms(c.end_time), c.text) for c in captions] == [
        (0, 2500, "Hello there."), (2500, 4250, "General Kenobi.")]


@pytest.mark.parametrize(("start", "stamp"), [
    (3723.456, "01:02:03"),          # past one hour
    (100 * 3600 + 61.5, "100:01:01"),  # past 99 hours: the hours field grows
])
def test_long_timestamps(start, stamp):
    segments = [seg(start, start + 2, "Still talking.")]
    subs, captions = parse_srt(to_srt(segments)), parse_vtt(to_vtt(segments))
    assert f"{stamp}," in to_srt(segments) and f"{stamp}." in to_vtt(segments)
    expected = (round(start * 1000), round((start + 2) * 1000))
    assert (ms(subs[0].start), ms(subs[0].end)) == expected
    assert (ms(captions[0].start_time), ms(captions[0].end_time)) == expected


def test_empty_segments_are_skipped():
    segments = [seg(0, 1, "One."), seg(1, 2, ""), seg(2, 3, "  \n "), seg(3, 4, "Two.")]
    subs = parse_srt(to_srt(segments))
    assert [(s.index, s.content) for s in subs] == [(1, "One."), (2, "Two.")]
    assert [c.text for c in parse_vtt(to_vtt(segments))] == ["One.", "Two."]
    assert to_srt([seg(0, 1, "")]) == ""
    assert parse_vtt(to_vtt([])) == []


def test_long_text_splits_into_cues_with_proportional_times():
    start, end = 10.0, 40.0
    captions = parse_vtt(to_vtt([seg(start, end, LONG)]))
    assert len(captions) > 1
    for caption in captions:
        assert 1 <= len(caption.lines) <= MAX_LINES
        assert all(len(line) <= MAX_LINE_CHARS for line in caption.lines)
    # No word is split or lost: the cues read back as the text.
    assert " ".join(" ".join(c.lines) for c in captions) == LONG
    times = [(ms(c.start_time), ms(c.end_time)) for c in captions]
    assert_well_formed(times)
    # Contiguous from the segment's start to its end...
    assert times[0][0] == start * 1000 and times[-1][1] == end * 1000
    assert all(a_end == b_start for (_, a_end), (b_start, _) in zip(times, times[1:]))
    # ...each cue lasting its share of the characters (the space before a cue's
    # first word counts towards it; rounding to ms adds at most 1 ms).
    per_char = (end - start) * 1000 / len(LONG)
    for i, (caption, (t0, t1)) in enumerate(zip(captions, times)):
        chars = len(" ".join(caption.lines)) + (1 if i else 0)
        assert abs((t1 - t0) - chars * per_char) <= 1


def test_srt_splits_the_same_way():
    segments = [seg(0, 5, "Short."), seg(5, 30, LONG)]
    subs = parse_srt(to_srt(segments))
    vtt = parse_vtt(to_vtt(segments))
    assert [s.index for s in subs] == list(range(1, len(subs) + 1))
    assert [(ms(s.start), ms(s.end), s.content) for s in subs] == [
        (ms(c.start_time), ms(c.end_time), c.text) for c in vtt]


def test_lines_are_filled_greedily_without_splitting_words():
    text = "a" * 40 + " bb " + "c" * 42 + " d"
    (cue, *rest) = cues_from_segments([seg(0, 1, text)])
    assert cue.lines == ("a" * 40, "bb")
    assert [c.lines for c in rest] == [("c" * 42, "d")]


def test_japanese_without_spaces_is_cut_at_the_line_length():
    captions = parse_vtt(to_vtt([seg(0, 12, JAPANESE)]))
    lines = [line for c in captions for line in c.lines]
    assert "".join(lines) == JAPANESE
    assert all(len(line) <= MAX_LINE_CHARS for line in lines)
    assert len(lines[0]) == MAX_LINE_CHARS
    assert_well_formed([(ms(c.start_time), ms(c.end_time)) for c in captions])
    subs = parse_srt(to_srt([seg(0, 12, JAPANESE)]))
    assert "".join(s.content.replace("\n", "") for s in subs) == JAPANESE


def test_short_japanese_stays_whole():
    subs = parse_srt(to_srt([seg(1, 3, "こんにちは、世界。")]))
    assert [(ms(s.start), ms(s.end), s.content) for s in subs] == [(1000, 3000, "こんにちは、世界。")]


def test_cues_never_overlap_or_vanish():
    # Overlapping, zero-length and backwards segments still give a valid document.
    segments = [seg(0, 2, "one"), seg(1.5, 3, "two"), seg(3, 3, "three"),
                seg(5, 4, "four"), seg(-1, 0.5, "five")]
    for times in (
        [(ms(s.start), ms(s.end)) for s in parse_srt(to_srt(segments))],
        [(ms(c.start_time), ms(c.end_time)) for c in parse_vtt(to_vtt(segments))],
    ):
        assert len(times) == 5
        assert_well_formed(times)


def test_vtt_escapes_markup_and_srt_defuses_arrows():
    text = "if a < b && c > d --> go"
    vtt = to_vtt([seg(0, 1, text)])
    assert "if a &lt; b &amp;&amp; c &gt; d --&gt; go" in vtt
    assert parse_vtt(vtt)[0].text == "if a &lt; b &amp;&amp; c &gt; d --&gt; go"
    assert parse_srt(to_srt([seg(0, 1, text)]))[0].content == "if a < b && c > d -> go"


def test_pieces_with_their_own_times_set_cue_times():
    # The shape word timings will take: a cue spans its first word's start to its last's end.
    words = ["Alpha", " bravo", " charlie", " delta", " echo"]
    pieces = [TimedPiece(i * 1.0, i * 1.0 + 0.5, w) for i, w in enumerate(words)]
    cues = pack_cues(pieces, max_chars=12, max_lines=1)
    assert [(c.start, c.end, c.lines) for c in cues] == [
        (0.0, 1.5, ("Alpha bravo",)), (2.0, 2.5, ("charlie",)), (3.0, 4.5, ("delta echo",))]


def test_aligned_words_break_cues_inside_the_segment_edges():
    from granite_speech_server.asr.transcript import WordTiming

    # The alignment starts the first word late and ends the last one early, as CTC does.
    segment = seg(10.0, 26.0, " ".join(["seventeen twenty-three"] * 8))
    words = [WordTiming(w, 10.2 + i, 10.6 + i)
             for i, w in enumerate(segment.text.split())]
    cues = cues_from_segments([segment], words)
    assert len(cues) >= 2
    assert cues[0].start_ms == 10_000 and cues[-1].end_ms == 26_000
    words_in_first = len(" ".join(cues[0].lines).split())
    assert cues[1].start_ms == round(1000 * words[words_in_first].start)
