"""The segment plan: which pieces of the audio go to the model, and where they sit in time.

Cuts fall only in pauses found by the VAD. Every planned segment holds at most
``max_segment_s`` of audio: the model's context must hold its audio tokens
(~10/s), the prompt and the output budget (``output_tokens_per_second``, default
10/s), so with max_model_len 2048 a segment can't exceed ~100 s; the 30 s
default leaves two thirds of the context free. A single speech run longer than
the maximum is cut at its quietest moment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from granite_speech_server.audio.features import SAMPLE_RATE
from granite_speech_server.audio.progressive import DecodingAudio
from granite_speech_server.audio.silero import SileroNetwork
from granite_speech_server.audio.vad import SpeechDetector, VadOptions

QUIET_WINDOW = SAMPLE_RATE // 20
"""Energy is compared over 50 ms windows when looking for the quietest cut."""

FIRST_WINDOW_S = 10.0
"""A long file is planned in windows, the first this long: its segments go to the
engine after the VAD has seen ten seconds, not the whole file."""
MAX_WINDOW_S = 240.0
"""Later windows double up to this, so the overlap re-analysed at each edge stays small."""


@dataclass(frozen=True)
class PlanOptions:
    max_segment_s: float = 30.0
    min_segment_s: float = 1.0
    """Shorter segments are merged into a neighbour (when the result fits)."""
    max_merge_gap_s: float = 1.0
    """...but only across a pause shorter than this: a hesitation inside a sentence, not
    the gap between two (merging those made the test model run utterances together)."""
    padding_ms: int = 300
    """Audio kept around each segment's speech, so onsets and decays aren't clipped."""
    vad: VadOptions = VadOptions()


@dataclass(frozen=True)
class PlannedSegment:
    """Sample offsets into the request's audio."""

    start: int
    """Where the segment's speech starts (its timestamp)."""
    end: int
    audio_start: int
    """The audio sent to the model: the speech plus padding."""
    audio_end: int

    @property
    def num_audio_samples(self) -> int:
        return self.audio_end - self.audio_start


Detector = Callable[[np.ndarray, VadOptions], list[tuple[int, int]]]


Planner = Callable[[DecodingAudio, PlanOptions], Iterator[list["PlannedSegment"]]]
"""A file's plan in batches, in audio order (``SpeechPlanner``)."""


class WindowDetector(Protocol):
    def regions(self, start: int, end: int) -> list[tuple[int, int]]:
        """Speech in ``audio[start:end]``, as file offsets."""


@dataclass(frozen=True)
class SpeechPlanner:
    """The server's ``Planner``: ``plan_in_windows``, with Silero VAD finding the speech.
    ``network`` is loaded once, by the app, and shared by every request."""

    network: SileroNetwork

    def __call__(self, audio: np.ndarray | DecodingAudio,
                 options: PlanOptions) -> Iterator[list[PlannedSegment]]:
        source = DecodingAudio.of(audio)
        yield from plan_in_windows(source, options,
                                   SpeechDetector(source, options.vad, self.network))


def plan_segments(audio: np.ndarray, options: PlanOptions,
                  detect: Detector) -> list[PlannedSegment]:
    """The whole file's plan at once. CPU-bound (runs the VAD): call from a worker thread."""
    return plan_regions(audio, detect(audio, options.vad), options)


def plan_regions(audio: np.ndarray, regions: Sequence[tuple[int, int]],
                 options: PlanOptions) -> list[PlannedSegment]:
    """Segments from the speech regions found in ``audio``."""
    max_len = int(options.max_segment_s * SAMPLE_RATE)
    regions = [piece for region in regions for piece in split_long(audio, region, max_len)]
    regions = merge_short(regions, options, max_len)
    return pad(regions, len(audio), int(options.padding_ms * SAMPLE_RATE / 1000), max_len)


def split_long(audio: np.ndarray, region: tuple[int, int], max_len: int) -> list[tuple[int, int]]:
    """Cut a speech run longer than ``max_len`` at its quietest 50 ms in the back half
    of each allowed stretch, so pieces stay long and a cut rarely lands in a word."""
    start, end = region
    pieces = []
    while end - start > max_len:
        cut = quietest_point(audio, start + max_len // 2, start + max_len)
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def quietest_point(audio: np.ndarray, lo: int, hi: int) -> int:
    windows = (hi - lo) // QUIET_WINDOW
    if windows < 1:
        return hi
    frames = audio[lo : lo + windows * QUIET_WINDOW].reshape(windows, QUIET_WINDOW)
    energy = np.square(frames, dtype=np.float64).mean(axis=1)
    return lo + int(np.argmin(energy)) * QUIET_WINDOW + QUIET_WINDOW // 2


def merge_short(regions: Sequence[tuple[int, int]], options: PlanOptions,
                max_len: int) -> list[tuple[int, int]]:
    min_len = options.min_segment_s * SAMPLE_RATE
    max_gap = options.max_merge_gap_s * SAMPLE_RATE
    merged = list(regions)
    i = 0
    while i < len(merged):
        start, end = merged[i]
        if end - start >= min_len:
            i += 1
            continue
        target = _merge_target(merged, i, max_gap, max_len)
        if target is None:
            i += 1
            continue
        lo, hi = sorted((i, target))
        merged[lo : hi + 1] = [(merged[lo][0], merged[hi][1])]
        i = lo
    return merged


def _merge_target(regions: list[tuple[int, int]], i: int, max_gap: float,
                  max_len: int) -> int | None:
    """The neighbour across the shorter pause, if the pause and the result are small enough."""
    best: tuple[int, int] | None = None
    for j in (i - 1, i + 1):
        if not 0 <= j < len(regions):
            continue
        lo, hi = min(i, j), max(i, j)
        gap = regions[hi][0] - regions[lo][1]
        fits = gap <= max_gap and regions[hi][1] - regions[lo][0] <= max_len
        if fits and (best is None or gap < best[0]):
            best = (gap, j)
    return None if best is None else best[1]


def pad(regions: Sequence[tuple[int, int]], total: int, padding: int,
        max_len: int) -> list[PlannedSegment]:
    """Widen each segment's audio into the pauses around it, never past the middle of
    a pause (the neighbour's share) nor beyond the maximum length."""
    planned = []
    for k, (start, end) in enumerate(regions):
        prev_end = regions[k - 1][1] if k else 0
        next_start = regions[k + 1][0] if k + 1 < len(regions) else total
        room = max(0, max_len - (end - start)) // 2
        before = min(padding, room, (start - prev_end) // 2 if k else start)
        after = min(padding, room, (next_start - end) // 2 if k + 1 < len(regions) else total - end)
        planned.append(PlannedSegment(start, end, start - before, end + after))
    return planned


def plan_in_windows(audio: np.ndarray | DecodingAudio, options: PlanOptions,
                    detector: WindowDetector) -> Iterator[list[PlannedSegment]]:
    """The plan of a file in batches, in audio order, each ready as soon as its window of
    audio is decoded and analysed. Every request plans this way, so a stream and a plain
    request cut a file identically. CPU-bound (and waits for the decoder): iterate from
    a worker thread.

    Each window is planned alone and only the segments ending at least ``edge_margin``
    before its edge are kept: audio past the edge can't change them (a merge, padding or
    a still-running speech run reaches less far). The next window starts where the last
    kept segment's audio ends, in a pause or at a cut the plan made."""
    source = DecodingAudio.of(audio)
    margin = edge_margin(options)
    start, window = 0, max(int(FIRST_WINDOW_S * SAMPLE_RATE), 2 * margin)
    while start < (decoded := len(audio := source.until(start + window))):
        end = min(decoded, start + window)
        regions = [(a - start, b - start) for a, b in detector.regions(start, end)]
        segments = plan_regions(audio[start:end], regions, options)
        if decoded < start + window:  # less than asked for: the end of the file
            if segments:
                yield _shifted(segments, start)
            return
        settled = [s for s in segments if s.audio_end <= end - start - margin]
        if settled:
            yield _shifted(settled, start)
            start += settled[-1].audio_end
            window = max(window, min(2 * window, int(MAX_WINDOW_S * SAMPLE_RATE)))
        elif segments and segments[0].audio_start > 0:
            start += segments[0].audio_start  # speech begins near the edge: start there
        elif segments:
            window *= 2  # one speech run fills the window: look further
        else:
            start = end - margin  # no speech; the edge is looked at again


def edge_margin(options: PlanOptions) -> int:
    """How far past a segment's audio the plan may still look: the VAD's closing pause,
    a merge across a short pause, both paddings, and a second for Silero's own padding."""
    reach_s = (options.vad.min_silence_ms / 1000 + options.max_merge_gap_s
               + 2 * options.padding_ms / 1000 + 1.0)
    return int(reach_s * SAMPLE_RATE)


def _shifted(segments: list[PlannedSegment], offset: int) -> list[PlannedSegment]:
    return [dataclasses.replace(s, start=s.start + offset, end=s.end + offset,
                                audio_start=s.audio_start + offset,
                                audio_end=s.audio_end + offset) for s in segments]
