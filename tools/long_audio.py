"""Long recordings with known content: held-out digit utterances separated by pauses.

Used by the long-audio tests and benchmarks: each utterance's text, where its clip sits
in the file, and each word's true onset and offset in the file are known exactly.

The clips are synthesised clean and the whole file gets one continuous noise floor, as
in a room: noise that switched on and off with each utterance would itself be an event
a speech detector (rightly) notices, and no real recording sounds like that.

    python tools/long_audio.py OUT.wav --seconds 600    # also writes OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.speech_corpus import SAMPLE_RATE, noise, small_heldout_set, wav_bytes  # noqa: E402

Word = tuple[str, float, float]


@dataclass(frozen=True)
class PlacedUtterance:
    text: str
    words: tuple[Word, ...]
    """(word, onset, offset) in the long file, seconds."""
    clip: tuple[float, float]
    """Where the utterance's clip, with its own short lead and tail, sits in the file."""

    @property
    def start(self) -> float:
        """First word onset in the long file, seconds."""
        return self.words[0][1]

    @property
    def end(self) -> float:
        """Last word offset, seconds."""
        return self.words[-1][2]

    def excerpt(self, audio: np.ndarray) -> np.ndarray:
        """The clip cut back out of the long file (noise floor included)."""
        return audio[round(self.clip[0] * SAMPLE_RATE) : round(self.clip[1] * SAMPLE_RATE)]


def long_recording(seconds: float, *, seed: int = 0, distinct: int = 40,
                   pause_s: tuple[float, float] = (0.8, 2.5), noise_floor_dbfs: float = -60.0,
                   ) -> tuple[np.ndarray, list[PlacedUtterance]]:
    """About ``seconds`` of audio: ``distinct`` held-out utterances, repeated in turn,
    each after a pause, over pink noise at ``noise_floor_dbfs`` RMS."""
    clips = small_heldout_set(n_speech=distinct, n_empty=0, seed=seed, clean=True)
    rng = np.random.default_rng(seed)
    pauses = []
    placed: list[PlacedUtterance] = []
    offset = 0
    while offset < seconds * SAMPLE_RATE:
        clip = clips[len(placed) % len(clips)]
        pauses.append(int(rng.uniform(*pause_s) * SAMPLE_RATE))
        offset += pauses[-1]
        t = offset / SAMPLE_RATE
        placed.append(PlacedUtterance(
            clip.text, tuple((w, t + on, t + off) for w, on, off in clip.words),
            (t, t + clip.audio.size / SAMPLE_RATE)))
        offset += clip.audio.size
    audio = noise_floor(rng, offset, noise_floor_dbfs)
    for k, utterance in enumerate(placed):
        clip = clips[k % len(clips)].audio
        at = round(utterance.clip[0] * SAMPLE_RATE)
        audio[at : at + clip.size] += clip
    return audio, placed


def noise_floor(rng: np.random.Generator, n: int, dbfs: float) -> np.ndarray:
    """Pink noise made ten seconds at a time (one FFT over hours would need gigabytes)."""
    block = 10 * SAMPLE_RATE
    out = np.empty(n, np.float32)
    for at in range(0, n, block):
        size = min(block, n - at)
        out[at : at + size] = noise(rng, "pink", max(size, 2))[:size]
    out *= np.float32(10 ** (dbfs / 20))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="WAV file to write (and a .json beside it)")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    audio, placed = long_recording(args.seconds, seed=args.seed)
    args.out.write_bytes(wav_bytes(audio))
    args.out.with_suffix(".json").write_text(json.dumps([asdict(p) for p in placed], indent=1))
    print(f"wrote {args.out}: {audio.size / SAMPLE_RATE:.1f} s, {len(placed)} utterances")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
