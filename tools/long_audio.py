"""Long recordings with known content: held-out digit utterances separated by pauses.

Used by the long-audio tests and benchmarks: each utterance's text and its true
start/end in the file (first word onset, last word offset) are known exactly.

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

from tools.speech_corpus import SAMPLE_RATE, small_heldout_set, wav_bytes  # noqa: E402


@dataclass(frozen=True)
class PlacedUtterance:
    text: str
    start: float
    """First word onset in the long file, seconds."""
    end: float
    """Last word offset, seconds."""


def long_recording(seconds: float, *, seed: int = 0, distinct: int = 40,
                   pause_s: tuple[float, float] = (0.8, 2.5),
                   ) -> tuple[np.ndarray, list[PlacedUtterance]]:
    """About ``seconds`` of audio: ``distinct`` held-out utterances, repeated in turn,
    each followed by a pause of faint noise (real rooms are never digitally silent)."""
    clips = small_heldout_set(n_speech=distinct, n_empty=0, seed=seed)
    rng = np.random.default_rng(seed)
    pieces: list[np.ndarray] = []
    placed: list[PlacedUtterance] = []
    offset = 0
    while offset < seconds * SAMPLE_RATE:
        clip = clips[len(placed) % len(clips)]
        pause = rng.normal(0, 3e-4, int(rng.uniform(*pause_s) * SAMPLE_RATE)).astype(np.float32)
        pieces += [pause, clip.audio]
        offset += pause.size
        t = offset / SAMPLE_RATE
        placed.append(PlacedUtterance(clip.text, t + clip.words[0][1], t + clip.words[-1][2]))
        offset += clip.audio.size
    return np.concatenate(pieces), placed


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
