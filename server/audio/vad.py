"""Speech detection with Silero VAD (the model bundled in the silero-vad package).

The network runs a block of frames per call (``granite_speech_server.audio.silero``, ~2200x real
time on one core, where the package's frame-by-frame loop manages ~100x and its
ONNX sequence model ~560x), inside GIL-releasing torch kernels. CPU-bound: call
from a worker thread, never the event loop.

The network is loaded once by whoever runs the detector (the app at start-up, like
the CTC head) and handed in; its weights are shared by every file and thread, each
file's recurrent state is its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from granite_speech_server.audio.features import SAMPLE_RATE
from granite_speech_server.audio.progressive import DecodingAudio
from granite_speech_server.audio.silero import CONTEXT, FRAME, SileroNetwork

BLOCK_FRAMES = 256
"""Frames per network call (~8 s): few calls, and a first window is ready soon."""

LEVEL_HOP = SAMPLE_RATE // 4
"""The level is measured as the RMS of 250 ms hops..."""
LEVEL_REACH = 6
"""...and taken as the loudest within 1.5 s either side."""
TARGET_LEVEL = 0.1
MAX_GAIN = 30.0
"""Quiet stretches are raised towards ``TARGET_LEVEL`` by at most this much (30 dB)."""
LEVEL_LOOKAHEAD = (LEVEL_REACH + 2) * LEVEL_HOP
"""Audio past a stretch that its gains depend on."""


@dataclass(frozen=True)
class VadOptions:
    threshold: float = 0.5
    """Speech probability above which a frame counts as speech."""
    min_silence_ms: int = 500
    """A pause at least this long separates two speech regions."""
    speech_pad_ms: int = 30
    """Silero widens each region by this much on both sides (its default). The regions
    are the segments' timestamps, so kept tight; the plan pads the audio itself."""
    min_speech_ms: int = 150
    """Shorter blips are not speech (clicks, breaths)."""


class SpeechDetector:
    """Speech regions of one file, window by window, as the plan asks for them.

    The probabilities are computed once, a block at a time and only as far as asked,
    with Silero's recurrent state carried through the whole file: started afresh in
    the middle of a file, it hears the same audio differently for tens of seconds
    (a word's probability 0.9 in the file's flow can read 0.2).

    That state also adapts to loudness: after loud speech, a quiet speaker reads as
    background (0.1 where the same clip alone reads 0.5) and a whole utterance goes
    missing. So Silero hears the audio levelled: each stretch raised towards a common
    level (``level_gains``); noise alone, raised, still reads as noise."""

    def __init__(self, audio: np.ndarray | DecodingAudio, options: VadOptions,
                 network: SileroNetwork) -> None:
        self.audio = DecodingAudio.of(audio)
        self.options = options
        self.network = network
        # A function of the audio alone: a generator method would hold the detector, which
        # holds the generator, and that cycle (with the whole recording) would wait for
        # the garbage collector's rare full pass instead of going with the request.
        self._blocks = levelled_blocks(self.audio)
        self._probs: list[np.ndarray] = []
        self._state = network.initial_state()
        self._num_frames = 0

    def regions(self, start: int, end: int) -> list[tuple[int, int]]:
        """[(start, end)] sample ranges of speech in ``audio[start:end]`` (file offsets)."""
        from silero_vad.utils_vad import get_speech_timestamps_from_probs

        first, last = start // FRAME, -(-end // FRAME)
        if last <= first:
            return []
        probs = self._probabilities(last)[first:last]
        origin = first * FRAME
        options = self.options
        found = get_speech_timestamps_from_probs(
            probs,
            sampling_rate=SAMPLE_RATE,
            threshold=options.threshold,
            min_speech_duration_ms=options.min_speech_ms,
            min_silence_duration_ms=options.min_silence_ms,
            speech_pad_ms=options.speech_pad_ms,
            audio_length_samples=end - origin,
        )
        regions = [(max(start, origin + int(r["start"])), origin + int(r["end"])) for r in found]
        regions = [(a, b) for a, b in regions if b > a]
        return self._end_at_last_speech(regions, probs, origin, end)

    def _probabilities(self, frames: int) -> np.ndarray:
        while self._num_frames < frames:
            block = next(self._blocks, None)
            if block is None:
                break
            values, self._state = self.network(block, self._state)
            self._probs.append(values)
            self._num_frames += len(self._probs[-1])
        if len(self._probs) > 1:
            self._probs = [np.concatenate(self._probs)]
        return self._probs[0] if self._probs else np.zeros(0, np.float32)

    def _end_at_last_speech(self, regions: list[tuple[int, int]], probs: np.ndarray,
                            origin: int, end: int) -> list[tuple[int, int]]:
        """Silero ends a region still open at the end of the audio there, even when the
        speech stopped earlier and the pause was just shorter than min_silence: end it
        at its last speech frame instead, so its timestamp is true."""
        if not regions or regions[-1][1] < end:
            return regions
        start, _ = regions[-1]
        speech = np.flatnonzero(probs >= self.options.threshold)
        pad = self.options.speech_pad_ms * SAMPLE_RATE // 1000
        last = min(end, origin + int(speech[-1] + 1) * FRAME + pad) if speech.size else end
        return [*regions[:-1], (start, max(last, start + 1))]


def levelled_blocks(audio: DecodingAudio) -> Iterator[np.ndarray]:
    """Silero's input, a block at a time: (frames, CONTEXT + FRAME) arrays of the
    levelled audio, each frame led by the previous frame's tail (zeros at first).
    A block waits for its audio and the level's look-ahead to be decoded."""
    first = 0
    while True:
        wanted = (first + BLOCK_FRAMES) * FRAME + LEVEL_LOOKAHEAD
        decoded = audio.until(wanted)
        num_frames = -(-decoded.size // FRAME)
        if first >= num_frames:
            return
        count = min(BLOCK_FRAMES, num_frames - first)
        lo, hi = first * FRAME - CONTEXT, min(decoded.size, (first + count) * FRAME)
        samples = np.zeros(count * FRAME + CONTEXT, np.float32)
        skip = max(0, -lo)
        samples[skip : skip + hi - max(lo, 0)] = decoded[max(lo, 0) : hi]
        samples[skip : skip + hi - max(lo, 0)] *= level_gains(decoded, max(lo, 0), hi)
        windows = np.lib.stride_tricks.sliding_window_view(samples, CONTEXT + FRAME)
        yield np.ascontiguousarray(windows[::FRAME])
        first += count


def level_gains(audio: np.ndarray, start: int, end: int) -> np.ndarray:
    """The gain for each sample of ``audio[start:end]``: ``TARGET_LEVEL`` over the local
    level, between 1 and ``MAX_GAIN``, changing smoothly from hop to hop. A function of
    the position alone, so any two blocks agree where they overlap."""
    hops = -(-audio.size // LEVEL_HOP)
    first = max(0, start // LEVEL_HOP - 1)
    last = min(hops, -(-end // LEVEL_HOP) + 1)
    lo, hi = max(0, first - LEVEL_REACH), min(hops, last + LEVEL_REACH)
    stretch = audio[lo * LEVEL_HOP : hi * LEVEL_HOP]
    padded = np.zeros((hi - lo) * LEVEL_HOP, np.float32)  # the last hop may be short
    padded[: stretch.size] = stretch
    sizes = np.full(hi - lo, LEVEL_HOP)
    sizes[-1] -= padded.size - stretch.size
    rms = np.sqrt(np.einsum("ij,ij->i", *2 * [padded.reshape(-1, LEVEL_HOP)]) / sizes)
    level = np.lib.stride_tricks.sliding_window_view(
        np.pad(rms, LEVEL_REACH, mode="edge"), 2 * LEVEL_REACH + 1).max(axis=1)
    gains = np.clip(TARGET_LEVEL / np.maximum(level, 1e-9), 1.0, MAX_GAIN).astype(np.float32)
    # Linear from hop centre to hop centre (np.interp would search for every sample).
    ramp = np.arange(LEVEL_HOP, dtype=np.float32) / LEVEL_HOP
    between = (gains[:-1, None] + ramp * np.diff(gains)[:, None]).reshape(-1)
    half = LEVEL_HOP // 2
    curve = np.concatenate([np.full(half, gains[0]), between,
                            np.full(LEVEL_HOP - half, gains[-1])])
    return curve[start - lo * LEVEL_HOP : end - lo * LEVEL_HOP]


def speech_regions(audio: np.ndarray, options: VadOptions,
                   network: SileroNetwork) -> list[tuple[int, int]]:
    """[(start, end)] sample ranges of speech in 16 kHz mono audio."""
    return SpeechDetector(audio, options, network).regions(0, audio.size)
