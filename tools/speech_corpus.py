#!/usr/bin/env python
"""Synthesized digit-speech corpus for the tiny Granite speech test model.

Everything is made locally with Debian TTS (espeak-ng and flite), so the corpus needs no
network and is reproducible from a seed.

Design
------
* Words are synthesized one at a time and cached per (voice, speed, pitch, word): an utterance
  is the concatenation of trimmed word clips with random gaps, so the start and end of every
  word in the utterance is known exactly (``Utterance.words``; the CTC word-timestamp work needs
  this). A share of utterances is synthesized in one TTS call instead ("continuous"; more
  natural co-articulation, word timing unknown: ``words`` is None).
* A voice is ``Voice(engine, name, speed, pitch)``: espeak-ng voice+variant with words/minute and
  pitch 0-99, or a flite voice with ``duration_stretch`` and ``int_f0_target_mean`` (Hz; the
  ``rms`` voice ignores it). Training voices come from ``TRAIN_GRID``; held-out voices from
  ``HELDOUT_GRID``, whose speeds and pitches never occur in training and which adds espeak
  variants training never uses: no held-out voice/speed/pitch combination is ever trained on.
* Augmentation: gain (peak 0.03-0.95, a few clipped), additive white/pink/brown noise or mains
  hum at 5-40 dB SNR (10-40 dB held out), random leading/trailing silence; training utterances
  also get a random tempo/pitch change by resampling (x0.9-1.1).
* Empty-target clips: digital silence, dither, coloured noise, hum and beeps, 0.3-8 s.
* Targets: English digit words ("zero" ... "nine"), and their French/German/Spanish words for
  translation (``TRANSLATIONS``).

Cache layout (``.cache/speech/``, gitignored): ``words/<voice key>/<word>.npy`` (trimmed float32
16 kHz clips), and per split ``<split>/meta.jsonl`` + ``features.npy`` (float16 log-mel features
from ``granite_speech_server.audio.features.log_mel_features``, concatenated; ``meta`` holds offsets) +
for held-out splits ``audio.npy`` (float32 waveforms, concatenated).

    python tools/speech_corpus.py build --split train   [--n-speech 12000 --n-empty 1500]
    python tools/speech_corpus.py build --split heldout [--n-speech 200 --n-empty 40]

``small_heldout_set()`` makes a few held-out clips in memory in a few seconds (tests).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SAMPLE_RATE = 16000
CACHE_DIR = ROOT / ".cache" / "speech"

DIGITS = "zero one two three four five six seven eight nine".split()
TRANSLATIONS = {
    "fr": "zéro un deux trois quatre cinq six sept huit neuf".split(),
    "de": "null eins zwei drei vier fünf sechs sieben acht neun".split(),
    "es": "cero uno dos tres cuatro cinco seis siete ocho nueve".split(),
}
TARGET_LANGUAGES = ("en",) + tuple(TRANSLATIONS)

# ----------------------------------------------------------------------------- voices

ESPEAK_BASES = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
    "en-029", "en-us-nyc",
)
# espeak-ng voice variants (``voice+variant``); "" is the base voice.
ESPEAK_TRAIN_VARIANTS = (
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f4", "f5", "klatt", "klatt2",
    "klatt4", "adam", "Alex", "Andy", "Annie", "aunty", "belinda", "benjamin", "caleb", "david",
    "ed", "edward", "grandpa", "iven", "john", "linda", "max", "michel", "paul", "quincy", "rob",
    "robert", "steph", "travis", "victor", "zac", "norbert", "shelby",
)
ESPEAK_HELDOUT_ONLY_VARIANTS = ("f3", "m8", "klatt3", "Alicia", "edward2", "steph2", "iven2")
FLITE_VOICES = {"kal": "m", "kal16": "m", "awb": "m", "rms": "m", "slt": "f"}


@dataclass(frozen=True)
class Voice:
    engine: str  # "espeak" or "flite"
    name: str  # espeak "base+variant" / flite voice name
    speed: float  # espeak words per minute / flite duration_stretch (larger = slower)
    pitch: float  # espeak pitch 0-99 / flite f0 target mean in Hz

    @property
    def key(self) -> str:
        return f"{self.engine}-{self.name.replace('+', '_')}-s{self.speed:g}-p{self.pitch:g}"


@dataclass(frozen=True)
class Grid:
    espeak_variants: tuple[str, ...]
    espeak_speeds: tuple[int, ...]
    espeak_pitches: tuple[int, ...]
    flite_stretches: tuple[float, ...]
    flite_f0: dict  # gender -> tuple of Hz


TRAIN_GRID = Grid(
    espeak_variants=ESPEAK_TRAIN_VARIANTS,
    espeak_speeds=(120, 140, 160, 180, 200, 220),
    espeak_pitches=(20, 35, 50, 65, 80),
    flite_stretches=(0.8, 0.9, 1.0, 1.12, 1.25),
    flite_f0={"m": (85, 105, 125, 145), "f": (140, 165, 190, 215)},
)
HELDOUT_GRID = Grid(
    espeak_variants=ESPEAK_TRAIN_VARIANTS + ESPEAK_HELDOUT_ONLY_VARIANTS,
    espeak_speeds=(130, 150, 170, 190, 210),
    espeak_pitches=(28, 42, 57, 72),
    flite_stretches=(0.85, 0.95, 1.06, 1.18),
    flite_f0={"m": (95, 115, 135), "f": (152, 178, 203)},
)


def sample_voices(grid: Grid, n: int, seed: int, flite_share: float = 0.25) -> list[Voice]:
    """n distinct voices drawn from a grid (deterministic)."""
    rng = np.random.default_rng(seed)
    voices: list[Voice] = []
    seen: set[Voice] = set()
    while len(voices) < n:
        if rng.random() < flite_share:
            name = str(rng.choice(sorted(FLITE_VOICES)))
            f0s = grid.flite_f0[FLITE_VOICES[name]]
            v = Voice("flite", name, float(rng.choice(grid.flite_stretches)), float(rng.choice(f0s)))
        else:
            base = str(rng.choice(ESPEAK_BASES))
            variant = str(rng.choice(grid.espeak_variants))
            name = f"{base}+{variant}" if variant else base
            v = Voice("espeak", name, float(rng.choice(grid.espeak_speeds)),
                      float(rng.choice(grid.espeak_pitches)))
        if v not in seen:
            seen.add(v)
            voices.append(v)
    return voices


def train_voices(n: int = 500, seed: int = 1) -> list[Voice]:
    return sample_voices(TRAIN_GRID, n, seed)


def heldout_voices(n: int = 60, seed: int = 2) -> list[Voice]:
    train = set(train_voices())
    return [v for v in sample_voices(HELDOUT_GRID, n + 20, seed) if v not in train][:n]


# ----------------------------------------------------------------------------- TTS

def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        sr = w.getframerate()
        raw = w.readframes(w.getnframes())
        assert w.getsampwidth() == 2
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
        if w.getnchannels() > 1:
            x = x.reshape(-1, w.getnchannels()).mean(1)
    return x, sr


def _resample(x: np.ndarray, sr_in: float, sr_out: float) -> np.ndarray:
    if sr_in == sr_out:
        return x.astype(np.float32)
    import soxr

    return soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32)


def synthesize(voice: Voice, text: str) -> np.ndarray:
    """Raw TTS output for text, mono float32 at 16 kHz (untrimmed)."""
    if voice.engine == "espeak":
        cmd = ["espeak-ng", "-v", voice.name, "-s", str(int(voice.speed)),
               "-p", str(int(voice.pitch)), "--stdout", text]
        data = subprocess.run(cmd, check=True, capture_output=True).stdout
        # espeak-ng writes a streaming WAV header (sizes 0x7fffffff): fix the sizes.
        data = bytearray(data)
        data[4:8] = (len(data) - 8).to_bytes(4, "little")
        data[40:44] = (len(data) - 44).to_bytes(4, "little")
        x, sr = _read_wav(bytes(data))
    elif voice.engine == "flite":
        with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
            cmd = ["flite", "-voice", voice.name, "-t", text, "-o", tmp.name,
                   "--setf", f"duration_stretch={voice.speed}",
                   "--setf", f"int_f0_target_mean={voice.pitch}"]
            subprocess.run(cmd, check=True, capture_output=True)
            x, sr = _read_wav(Path(tmp.name).read_bytes())
    else:
        raise ValueError(voice.engine)
    return _resample(x, sr, SAMPLE_RATE)


def speech_bounds(x: np.ndarray, threshold_db: float = -40.0) -> tuple[int, int]:
    """[start, end) samples of the region above threshold_db re the loudest 10 ms frame."""
    hop = SAMPLE_RATE // 200  # 5 ms
    win = SAMPLE_RATE // 100  # 10 ms
    if len(x) < win:
        return 0, len(x)
    n = 1 + (len(x) - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    rms = np.sqrt((x[idx] ** 2).mean(1) + 1e-12)
    thr = rms.max() * 10 ** (threshold_db / 20)
    on = np.nonzero(rms > thr)[0]
    if len(on) == 0:
        return 0, 0
    return int(on[0] * hop), int(min(len(x), on[-1] * hop + win))


MARGIN = SAMPLE_RATE // 200  # 5 ms kept on each side of a trimmed word


def trim(x: np.ndarray) -> np.ndarray:
    """Word clip with MARGIN samples around its above-threshold region."""
    s, e = speech_bounds(x)
    return x[max(0, s - MARGIN):min(len(x), e + MARGIN)].copy()


class WordBank:
    """Trimmed single-word clips cached on disk per (voice, word)."""

    def __init__(self, cache_dir: Path | None = CACHE_DIR / "words"):
        self.cache_dir = cache_dir
        self._mem: dict[tuple[str, str], np.ndarray] = {}

    def get(self, voice: Voice, word: str) -> np.ndarray:
        key = (voice.key, word)
        clip = self._mem.get(key)
        if clip is None:
            path = self.cache_dir / voice.key / f"{word}.npy" if self.cache_dir else None
            if path is not None and path.exists():
                clip = np.load(path)
            else:
                clip = trim(synthesize(voice, word))
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
                    np.save(tmp, clip)
                    os.replace(tmp, path)
            if len(self._mem) > 4000:
                self._mem.clear()
            self._mem[key] = clip
        return clip


# ----------------------------------------------------------------------------- utterances

@dataclass
class Utterance:
    audio: np.ndarray  # float32 16 kHz mono
    text: str  # English reference ("" for silence/noise)
    digits: list[int]
    words: list[tuple[str, float, float]] | None  # (word, start s, end s); None if unknown
    kind: str  # "speech" | "silence" | "noise"
    voice: str = ""
    info: dict = field(default_factory=dict)

    def reference(self, language: str = "en") -> str:
        """Expected output text for transcription ("en") or translation to a language."""
        words = DIGITS if language == "en" else TRANSLATIONS[language]
        return " ".join(words[d] for d in self.digits)


def noise(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    """Unit-RMS noise: white, pink, brown or mains hum."""
    if kind == "white":
        y = rng.standard_normal(n)
    elif kind in ("pink", "brown"):
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        spec = spec / (np.sqrt(f) if kind == "pink" else f)
        spec[0] = 0
        y = np.fft.irfft(spec, n)
    elif kind == "hum":
        t = np.arange(n) / SAMPLE_RATE
        f0 = rng.choice([50.0, 60.0])
        y = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3))
                for k in range(1, 8))
        y = y + 0.05 * rng.standard_normal(n)
    else:
        raise ValueError(kind)
    y = np.asarray(y, dtype=np.float64)
    return (y / (np.sqrt((y ** 2).mean()) + 1e-12)).astype(np.float32)


NOISE_KINDS = ("white", "pink", "brown", "hum")
NOISE_P = (0.35, 0.35, 0.2, 0.1)


def _finish(rng: np.random.Generator, audio: np.ndarray, speech_rms: float,
            snr_range: tuple[float, float], clean_p: float) -> tuple[np.ndarray, dict]:
    info: dict = {}
    if rng.random() >= clean_p:
        kind = str(rng.choice(NOISE_KINDS, p=NOISE_P))
        snr = float(rng.uniform(*snr_range))
        audio = audio + noise(rng, kind, len(audio)) * speech_rms * 10 ** (-snr / 20)
        info.update(noise=kind, snr=round(snr, 1))
    peak = float(np.abs(audio).max()) or 1.0
    target = float(np.exp(rng.uniform(np.log(0.03), np.log(0.95))))
    if rng.random() < 0.03:
        target = float(rng.uniform(1.1, 1.6))  # clipped
    audio = np.clip(audio * (target / peak), -1.0, 1.0).astype(np.float32)
    info["peak"] = round(min(target, 1.0), 3)
    return audio, info


def make_speech(rng: np.random.Generator, voice: Voice, digits: list[int], bank: WordBank,
                continuous: bool, train: bool, clean: bool = False) -> Utterance:
    lead = rng.uniform(0.05, 0.6)
    trail = rng.uniform(0.1, 0.6)
    if continuous:
        words_audio = trim(synthesize(voice, " ".join(DIGITS[d] for d in digits)))
        body = words_audio
        timing = None
    else:
        pieces, timing, t = [], [], 0.0
        long_gaps = rng.random() < 0.15
        for i, d in enumerate(digits):
            if i:
                gap = rng.uniform(0.15, 0.6) if long_gaps else rng.uniform(0.0, 0.25)
                pieces.append(np.zeros(int(gap * SAMPLE_RATE), np.float32))
                t += len(pieces[-1]) / SAMPLE_RATE
            clip = bank.get(voice, DIGITS[d])
            pieces.append(clip)
            dur = len(clip) / SAMPLE_RATE
            timing.append([DIGITS[d], t + MARGIN / SAMPLE_RATE, t + dur - MARGIN / SAMPLE_RATE])
            t += dur
        body = np.concatenate(pieces)
    audio = np.concatenate([np.zeros(int(lead * SAMPLE_RATE), np.float32), body,
                            np.zeros(int(trail * SAMPLE_RATE), np.float32)])
    offset = int(lead * SAMPLE_RATE) / SAMPLE_RATE
    info: dict = {}
    rate = 1.0
    if train and rng.random() < 0.4:
        rate = float(rng.uniform(0.9, 1.1))  # >1: faster and higher
        audio = _resample(audio, SAMPLE_RATE, SAMPLE_RATE / rate)
        info["rate"] = round(rate, 3)
    if timing is not None:
        timing = [(w, round((s + offset) / rate, 4), round((e + offset) / rate, 4)) for w, s, e in timing]
    speech_rms = float(np.sqrt((body ** 2).mean()))
    audio, extra = _finish(rng, audio, speech_rms, (5.0, 40.0) if train else (10.0, 40.0),
                           1.0 if clean else 0.2 if train else 0.25)
    info.update(extra)
    text = " ".join(DIGITS[d] for d in digits)
    return Utterance(audio, text, list(digits), timing, "speech", voice.key, info)


def make_empty(rng: np.random.Generator) -> Utterance:
    n = int(rng.uniform(0.3, 8.0) * SAMPLE_RATE)
    r = rng.random()
    if r < 0.12:
        audio, kind, info = np.zeros(n, np.float32), "silence", {"type": "digital"}
    elif r < 0.3:
        amp = float(np.exp(rng.uniform(np.log(1e-5), np.log(3e-3))))
        audio, kind, info = noise(rng, "white", n) * amp, "silence", {"type": "dither", "amp": amp}
    elif r < 0.9:
        nk = str(rng.choice(NOISE_KINDS, p=NOISE_P))
        amp = float(np.exp(rng.uniform(np.log(1e-3), np.log(0.3))))
        audio, kind, info = noise(rng, nk, n) * amp, "noise", {"type": nk, "amp": round(amp, 5)}
        if rng.random() < 0.3:  # a second, different noise on top
            audio = audio + noise(rng, str(rng.choice(NOISE_KINDS)), n) * amp * rng.uniform(0.1, 1)
    else:  # beeps
        t = np.arange(n) / SAMPLE_RATE
        f = rng.uniform(300, 3000)
        on = (np.sin(2 * np.pi * rng.uniform(0.5, 3) * t) > rng.uniform(-0.5, 0.8))
        audio = (0.3 * np.sin(2 * np.pi * f * t) * on + 0.003 * noise(rng, "white", n))
        kind, info = "noise", {"type": "beeps", "freq": round(f)}
    audio = np.clip(audio, -1, 1).astype(np.float32)
    return Utterance(audio, "", [], [], kind, "", info)


def make_item(split_seed: int, idx: int, voices: list[Voice], bank: WordBank, n_speech: int,
              train: bool, continuous_p: float = 0.2) -> Utterance:
    """The idx-th clip of a split: speech for idx < n_speech, silence/noise after."""
    rng = np.random.default_rng([split_seed, idx])
    if idx >= n_speech:
        return make_empty(rng)
    voice = voices[int(rng.integers(len(voices)))]
    n = int(rng.integers(1, 9))
    digits = [int(d) for d in rng.integers(0, 10, size=n)]
    return make_speech(rng, voice, digits, bank, rng.random() < continuous_p, train)


# ----------------------------------------------------------------------------- splits on disk

SPLITS = {
    # name: (seed, voices function, train augmentations, store waveforms)
    "train": (1000, train_voices, True, False),
    "heldout": (2000, heldout_voices, False, True),
}


def _build_chunk(args) -> tuple[list[dict], np.ndarray, np.ndarray | None]:
    split, start, stop, n_speech = args
    import torch

    torch.set_num_threads(1)
    from granite_speech_server.audio.features import log_mel_features

    seed, voices_fn, train, keep_audio = SPLITS[split]
    voices = voices_fn()
    bank = WordBank()
    metas, feats, audios = [], [], []
    for idx in range(start, stop):
        u = make_item(seed, idx, voices, bank, n_speech, train)
        f = log_mel_features(u.audio).numpy().astype(np.float16)
        metas.append({"id": idx, "kind": u.kind, "text": u.text, "digits": u.digits,
                      "words": u.words, "voice": u.voice, "n_samples": int(len(u.audio)),
                      "n_frames": int(f.shape[0]), "info": u.info})
        feats.append(f)
        if keep_audio:
            audios.append(u.audio)
    return (metas, np.concatenate(feats) if feats else np.zeros((0, 160), np.float16),
            np.concatenate(audios) if keep_audio else None)


def build_split(split: str, n_speech: int, n_empty: int, workers: int = 2,
                out_dir: Path | None = None) -> Path:
    from multiprocessing import get_context

    out = out_dir or CACHE_DIR / split
    out.mkdir(parents=True, exist_ok=True)
    total = n_speech + n_empty
    chunk = 250
    jobs = [(split, s, min(total, s + chunk), n_speech) for s in range(0, total, chunk)]
    metas, feats, audios = [], [], []
    with get_context("spawn").Pool(workers) as pool:
        for i, (m, f, a) in enumerate(pool.imap(_build_chunk, jobs)):
            metas += m
            feats.append(f)
            if a is not None:
                audios.append(a)
            print(f"  {split}: {len(metas)}/{total}", flush=True)
    feats_all = np.concatenate(feats)
    off = 0
    aoff = 0
    for m in metas:
        m["offset"] = off
        off += m["n_frames"]
        if audios:
            m["audio_offset"] = aoff
            aoff += m["n_samples"]
    np.save(out / "features.npy", feats_all)
    if audios:
        np.save(out / "audio.npy", np.concatenate(audios))
    with open(out / "meta.jsonl", "w") as fh:
        for m in metas:
            fh.write(json.dumps(m, ensure_ascii=False) + "\n")
    (out / "build.json").write_text(json.dumps(
        {"split": split, "n_speech": n_speech, "n_empty": n_empty, "seed": SPLITS[split][0]}) + "\n")
    return out


def load_split(split: str, out_dir: Path | None = None, audio: bool = False):
    """(meta list, features float16 array (sum T, 160), audio float32 array or None)."""
    d = out_dir or CACHE_DIR / split
    metas = [json.loads(line) for line in open(d / "meta.jsonl")]
    feats = np.load(d / "features.npy", mmap_mode="r")
    wav = np.load(d / "audio.npy", mmap_mode="r") if audio and (d / "audio.npy").exists() else None
    return metas, feats, wav


# ----------------------------------------------------------------------------- small sets for tests

def small_heldout_set(n_speech: int = 10, n_empty: int = 3, seed: int = 0,
                      clean: bool = False) -> list[Utterance]:
    """A few held-out clips made in memory (deterministic; only needs espeak-ng and flite).

    Speech clips use held-out voices (never trained on), 1-8 digits, word-by-word synthesis
    with exact word timing; then ``n_empty`` silence/noise clips with empty references.
    ``clean``: no added noise (a caller that lays its own noise floor under them).
    ``Utterance.reference(lang)`` gives the expected text for "en", "fr", "de" and "es".
    """
    voices = heldout_voices()
    bank = WordBank(cache_dir=None)
    items = []
    for i in range(n_speech + n_empty):
        rng = np.random.default_rng([7000 + seed, i])
        if i >= n_speech:
            items.append(make_empty(rng))
            continue
        voice = voices[int(rng.integers(len(voices)))]
        digits = [int(d) for d in rng.integers(0, 10, size=int(rng.integers(1, 9)))]
        items.append(make_speech(rng, voice, digits, bank, continuous=False, train=False,
                                 clean=clean))
    return items


def small_heldout_cases(n_speech: int = 10, n_empty: int = 3, seed: int = 0,
                        languages: tuple[str, ...] = TARGET_LANGUAGES) -> list[dict]:
    """``small_heldout_set`` as request cases for an end-to-end test.

    One case per (clip, language): ``language`` "en" is a transcription
    (``POST /v1/audio/transcriptions``), others a translation from English
    (``POST /v1/audio/translations`` with ``to_language``). Keys: ``audio`` (float32 16 kHz),
    ``wav`` (16-bit PCM WAV bytes), ``reference`` ("" for silence/noise), ``endpoint``
    ("transcriptions" | "translations"), ``to_language`` (None for transcriptions),
    ``kind`` ("speech" | "silence" | "noise"), ``words`` (exact word timing or []).
    """
    cases = []
    for u in small_heldout_set(n_speech, n_empty, seed):
        wav = wav_bytes(u.audio)
        for lang in languages:
            cases.append({
                "audio": u.audio, "wav": wav, "reference": u.reference(lang), "kind": u.kind,
                "endpoint": "transcriptions" if lang == "en" else "translations",
                "to_language": None if lang == "en" else lang, "words": u.words or [],
            })
    return cases


# ----------------------------------------------------------------------------- scoring

def normalize_words(text: str) -> list[str]:
    """Lowercase words without punctuation (accents kept: "zéro", "fünf")."""
    text = "".join(c if c.isalnum() or c.isspace() else " " for c in text.lower())
    return text.split()


def edit_distance(a: list[str], b: list[str]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def word_error_rate(refs: list[str], hyps: list[str]) -> float:
    """Corpus WER: total word edits / total reference words."""
    errors = sum(edit_distance(normalize_words(r), normalize_words(h)) for r, h in zip(refs, hyps))
    return errors / max(1, sum(len(normalize_words(r)) for r in refs))


def wav_bytes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM mono WAV file bytes."""
    pcm = (np.clip(audio, -1, 1) * 32767).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--split", choices=sorted(SPLITS), required=True)
    b.add_argument("--n-speech", type=int)
    b.add_argument("--n-empty", type=int)
    b.add_argument("--workers", type=int, default=2)
    s = sub.add_parser("sample", help="write a few clips as WAV files")
    s.add_argument("out_dir", type=Path)
    s.add_argument("--n", type=int, default=5)
    args = p.parse_args(argv)
    if args.cmd == "build":
        defaults = {"train": (12000, 1500), "heldout": (200, 40)}[args.split]
        n_speech = args.n_speech if args.n_speech is not None else defaults[0]
        n_empty = args.n_empty if args.n_empty is not None else defaults[1]
        out = build_split(args.split, n_speech, n_empty, args.workers)
        print(f"wrote {out}")
    else:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for i, u in enumerate(small_heldout_set(args.n, 2)):
            (args.out_dir / f"{i:02d}.wav").write_bytes(wav_bytes(u.audio))
            print(i, u.kind, u.voice, repr(u.text), u.words, u.info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
