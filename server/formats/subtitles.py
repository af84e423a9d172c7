"""Subtitle documents (SRT, WebVTT) from timed text.

The input is "timed pieces": text with the stretch of audio it covers. Each
segment of a transcript is cut into word pieces; without word timings yet, a
segment's time is shared among its words by character count. Words are then
packed into cues of at most ``MAX_LINES`` lines of ``MAX_LINE_CHARS`` characters,
and a cue lasts from its first word's start to its last word's end. Real word
timings (when alignment exists) replace ``interpolate_words`` as the source of
pieces, within the segment's own edges; ``pack_cues`` and the document writers take
them unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

MAX_LINE_CHARS = 42
"""Common subtitle practice (Netflix's guideline for Latin scripts): a line readable at a glance."""
MAX_LINES = 2


class TimedText(Protocol):
    """What a transcript segment offers: times in seconds and its text."""

    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def text(self) -> str: ...


@dataclass(frozen=True)
class TimedPiece:
    start: float
    end: float
    text: str
    """A word with one space before it when the text had whitespace there (`` world``),
    so pieces concatenate back into the text; a piece of an unspaced script has none."""


@dataclass(frozen=True)
class Cue:
    start_ms: int
    end_ms: int
    lines: tuple[str, ...]


class TimedWord(Protocol):
    """A word timing from forced alignment."""

    @property
    def word(self) -> str: ...
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...


def to_srt(segments: Sequence[TimedText], words: Sequence[TimedWord] | None = None) -> str:
    return srt_document(cues_from_segments(segments, words))


def to_vtt(segments: Sequence[TimedText], words: Sequence[TimedWord] | None = None) -> str:
    return vtt_document(cues_from_segments(segments, words))


def cues_from_segments(segments: Sequence[TimedText],
                       words: Sequence[TimedWord] | None = None) -> list[Cue]:
    """One or more cues per segment with text; a segment never shares a cue.

    ``words`` are the transcript's aligned words in order, as many per segment as its
    text has whitespace-separated words; without them, time is shared by length."""
    return timed_cues(pack_cues(pieces) for pieces in _segment_pieces(segments, words))


def _segment_pieces(segments: Sequence[TimedText],
                    words: Sequence[TimedWord] | None) -> Iterable[list[TimedPiece]]:
    cursor = 0
    for segment in segments:
        if words is None:
            yield interpolate_words(segment.start, segment.end, segment.text)
            continue
        count = len(segment.text.split())
        pieces = [TimedPiece(w.start, w.end, (" " if i else "") + w.word)
                  for i, w in enumerate(words[cursor : cursor + count])]
        cursor += count
        yield _spanning(segment, pieces)


def _spanning(segment: TimedText, pieces: list[TimedPiece]) -> list[TimedPiece]:
    """The segment's aligned words, its first starting and its last ending with the segment:
    the speech detector's edges of a speech run are the truer ones (a CTC alignment
    starts a word at its first spike, tens of ms late, and may end it well before its
    decay); the alignment places the breaks inside the run."""
    if not pieces:
        return pieces
    first = pieces[0]
    pieces[0] = TimedPiece(min(segment.start, first.end), first.end, first.text)
    last = pieces[-1]
    pieces[-1] = TimedPiece(last.start, max(segment.end, last.start), last.text)
    return pieces


def interpolate_words(start: float, end: float, text: str) -> list[TimedPiece]:
    """The words of ``text``, each given the share of [start, end] that its characters
    (with the space before it) take of the whole text: a stand-in for word timings."""
    words = [(" " if space else "") + word
             for space, word in re.findall(r"(\s*)(\S+)", text.strip())]
    return _share_time(start, end, words)


def _share_time(start: float, end: float, texts: list[str]) -> list[TimedPiece]:
    """Consecutive pieces covering [start, end], each lasting in proportion to its length."""
    total = sum(len(text) for text in texts)
    pieces, offset = [], 0
    for text in texts:
        piece_start = start + (end - start) * offset / total
        offset += len(text)
        # The last piece ends exactly at ``end``, free of rounding.
        piece_end = end if offset == total else start + (end - start) * offset / total
        pieces.append(TimedPiece(piece_start, piece_end, text))
    return pieces


@dataclass(frozen=True)
class TimedCue:
    """A cue before rounding to milliseconds: times in seconds."""

    start: float
    end: float
    lines: tuple[str, ...]


def pack_cues(pieces: Sequence[TimedPiece], max_chars: int = MAX_LINE_CHARS,
              max_lines: int = MAX_LINES) -> list[TimedCue]:
    """Greedy wrapping: a word goes on the current line if it fits, else on the next
    line, else into the next cue. Words are never split, except one longer than a
    whole line (a long unspaced run of Japanese or Chinese), which is cut to fit."""
    cues: list[TimedCue] = []
    lines: list[str] = []
    first: TimedPiece | None = None
    last: TimedPiece | None = None
    for piece in _fit_pieces(pieces, max_chars):
        word = piece.text.lstrip()
        if lines and len(lines[-1] + piece.text) <= max_chars:
            lines[-1] += piece.text
        elif lines and len(lines) < max_lines:
            lines.append(word)
        else:
            if lines:
                cues.append(TimedCue(first.start, last.end, tuple(lines)))
            lines, first = [word], piece
        last = piece
    if lines:
        cues.append(TimedCue(first.start, last.end, tuple(lines)))
    return cues


def _fit_pieces(pieces: Iterable[TimedPiece], max_chars: int) -> Iterable[TimedPiece]:
    for piece in pieces:
        word = piece.text.lstrip()
        if len(word) <= max_chars:
            yield piece
            continue
        # Cut into line-sized runs; the first keeps the space before the word.
        runs = [word[i : i + max_chars] for i in range(0, len(word), max_chars)]
        runs[0] = piece.text[: len(piece.text) - len(word)] + runs[0]
        yield from _share_time(piece.start, piece.end, runs)


def timed_cues(groups: Iterable[list[TimedCue]]) -> list[Cue]:
    """Milliseconds, in order, never overlapping, each lasting at least 1 ms.

    Players drop or misorder cues whose end is not after their start, and stack
    overlapping cues on screen; segment plans should never produce either, but
    rounding and zero-length segments could.
    """
    cues: list[Cue] = []
    previous_end = 0
    for group in groups:
        for cue in group:
            start = max(round(cue.start * 1000), previous_end)
            end = max(round(cue.end * 1000), start + 1)
            cues.append(Cue(start, end, cue.lines))
            previous_end = end
    return cues


def srt_document(cues: Sequence[Cue]) -> str:
    blocks = [
        f"{index}\n{_timestamp(cue.start_ms, ',')} --> {_timestamp(cue.end_ms, ',')}\n"
        + "\n".join(_srt_line(line) for line in cue.lines)
        for index, cue in enumerate(cues, start=1)
    ]
    return "".join(block + "\n\n" for block in blocks)


def vtt_document(cues: Sequence[Cue]) -> str:
    blocks = [
        f"{_timestamp(cue.start_ms, '.')} --> {_timestamp(cue.end_ms, '.')}\n"
        + "\n".join(_vtt_line(line) for line in cue.lines)
        for cue in cues
    ]
    return "WEBVTT\n\n" + "".join(block + "\n\n" for block in blocks)


def _timestamp(ms: int, decimal_mark: str) -> str:
    # Hours keep growing past 99: both formats allow two or more hour digits.
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{decimal_mark}{millis:03d}"


def _srt_line(line: str) -> str:
    # SRT has no escaping; an arrow in the text would read as a timing line.
    return line.replace("-->", "->")


def _vtt_line(line: str) -> str:
    # WebVTT cue text is markup: escape it (this also keeps "-->" out of the text).
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
