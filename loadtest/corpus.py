"""The benchmark workload: recordings like real ones, in the formats clients send.

A mix of short clips, medium recordings and long ones with long pauses (meetings,
voicemail), encoded as wav, mp3 and ogg/opus, each request either plain or
streamed, some translations. Deterministic for a seed.
"""

from __future__ import annotations

import random
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tools.long_audio import long_recording
from tools.speech_corpus import SAMPLE_RATE, wav_bytes


@dataclass(frozen=True)
class Recording:
    name: str
    seconds: float
    data: bytes
    suffix: str
    reference: str
    kind: str = ""
    """A key of ``KINDS``."""


@dataclass(frozen=True)
class Request:
    recording: Recording
    endpoint: str  # "transcriptions" | "translations"
    stream: bool
    response_format: str
    to_language: str | None = None


# (seconds, pause range between utterances) per kind of recording.
KINDS = {
    "short": (6.0, (0.3, 0.8)),
    "medium": (45.0, (0.6, 2.0)),
    "long_pauses": (150.0, (3.0, 12.0)),
}


def encode(samples: np.ndarray, suffix: str) -> bytes:
    wav = wav_bytes(samples)
    if suffix == ".wav":
        return wav
    codec = {".mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
             ".ogg": ["-c:a", "libopus", "-b:a", "32k", "-f", "ogg"]}[suffix]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.wav", Path(tmp) / f"out{suffix}"
        src.write_bytes(wav)
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src),
                        *codec, str(dst)], check=True)
        return dst.read_bytes()


def recordings(seed: int = 0, per_kind: int = 2) -> list[Recording]:
    made = []
    for k, (kind, (seconds, pauses)) in enumerate(KINDS.items()):
        for i in range(per_kind):
            samples, placed = long_recording(seconds, seed=seed * 100 + k * 10 + i,
                                             distinct=12, pause_s=pauses)
            suffix = (".wav", ".mp3", ".ogg")[(k + i) % 3]
            made.append(Recording(f"{kind}-{i}{suffix}", samples.size / SAMPLE_RATE,
                                  encode(samples, suffix), suffix,
                                  " ".join(p.text for p in placed), kind))
    return made


def requests(recs: list[Recording], count: int, *, seed: int = 0,
             comparable: bool = False) -> list[Request]:
    """``count`` requests over the recordings: 40% streamed, 15% translations, the rest
    in assorted formats. ``comparable`` keeps to what vLLM's own endpoint serves for
    Granite (json transcriptions, plain or streamed), for side-by-side runs.

    Recordings are used in a shuffled round: with at least ``count`` of them, no request
    repeats another's audio (vLLM caches encoder outputs and KV by audio content, so a
    repeat costs the engine almost nothing and would flatter whoever repeats most)."""
    rng = random.Random(seed)
    order = rng.sample(recs, len(recs))
    made = []
    for i in range(count):
        rec = order[i % len(order)]
        roll = rng.random()
        if not comparable and roll < 0.15:
            made.append(Request(rec, "translations", False, "json",
                                to_language=rng.choice(["fr", "de", "es"])))
        elif roll < 0.55:
            made.append(Request(rec, "transcriptions", True, "json"))
        else:
            formats = ["json"] if comparable else ["json", "json", "text", "verbose_json", "srt"]
            made.append(Request(rec, "transcriptions", False, rng.choice(formats)))
    return made
