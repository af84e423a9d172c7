"""Write golden Granite Speech features computed by transformers' own extractor.

``server/audio/features.py`` reimplements ``GraniteSpeechFeatureExtractor`` without
torchaudio; this script records what the real extractor outputs, so the test
``tests/audio/test_features.py`` can compare the two without torchaudio installed.

The extractor needs torchaudio, whose PyPI wheels are CUDA builds that do not load with
the CPU torch. Its ``MelSpectrogram`` is pure torch, though, so a throwaway venv with
torchaudio's compiled libraries deleted is enough. Never do this in the server's venv.

Recipe (from the repository root; torch 2.13.0+cpu, as the server's venv has)::

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 transformers==5.19.0 numpy soundfile
    # (this machine's pip finds torch-2.13.0+cpu in its local wheel dir; elsewhere add
    #  --index-url https://download.pytorch.org/whl/cpu so pip does not fetch CUDA torch)
    /tmp/refvenv/bin/pip install --no-deps torchaudio==2.11.0
    rm -f /tmp/refvenv/lib/python3.*/site-packages/torchaudio/lib/*.so
    /tmp/refvenv/bin/python tools/make_feature_reference.py
    rm -rf /tmp/refvenv

Output ``tests/fixtures/feature_reference.npz`` (np.savez_compressed, no pickles):
``clips`` (names), ``versions`` (strings), and per clip ``<name>__waveform`` (float32,
16 kHz, values on the 16-bit PCM grid), ``<name>__features`` (float32, (T, 160)) and
``<name>__tokens`` (int64 scalar, the extractor's ``audio_embed_sizes``).
Clips are generated from fixed seeds, so reruns give the same waveforms.
"""

from __future__ import annotations

import argparse
import importlib.metadata
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests/fixtures/feature_reference.npz"


def speech_like(num_samples: int, seed: int) -> np.ndarray:
    """Voiced-sounding signal: gliding harmonics, syllable-rate envelope, breath noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / SAMPLE_RATE
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = np.zeros(num_samples)
    for k in range(1, 30):  # top harmonic stays under 5.4 kHz, below Nyquist
        formant = np.exp(-(((k * 150 - 700) / 600) ** 2)) + 0.4 * np.exp(
            -(((k * 150 - 2200) / 500) ** 2)
        )
        voiced += (formant + 0.02) * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 2 * np.pi))) ** 2
    signal = 0.3 * voiced / np.abs(voiced).max() * envelope
    return signal + 0.01 * rng.standard_normal(num_samples)


def with_silence(num_samples: int, seed: int) -> np.ndarray:
    """Speech, then exact digital silence, then speech: exercises the 1e-10 log floor."""
    signal = speech_like(num_samples, seed)
    signal[num_samples // 3 : 2 * num_samples // 3] = 0.0
    return signal


def noise(num_samples: int, seed: int) -> np.ndarray:
    return 0.05 * np.random.default_rng(seed).standard_normal(num_samples)


def to_pcm_grid(signal: np.ndarray) -> np.ndarray:
    """float32 on the int16 grid: what decoded 16-bit audio looks like, and compresses well."""
    pcm = np.clip(np.round(signal * 32768), -32768, 32767)
    return (pcm / 32768).astype(np.float32)


# name -> (generator, number of samples, seed); about 43 s of audio in all.
CLIPS = {
    "speech_0p1s": (speech_like, 1600, 1),
    "speech_1s": (speech_like, 16000, 2),
    "speech_7p3s": (speech_like, 116800, 3),
    "speech_30s": (speech_like, 480000, 4),
    "speech_16001": (speech_like, 16001, 5),
    "speech_4799": (speech_like, 4799, 6),
    "speech_257": (speech_like, 257, 7),
    "silence_gap_3s": (with_silence, 48000, 8),
    "noise_0p5s": (noise, 8000, 9),
}


def versions() -> np.ndarray:
    names = ["torch", "torchaudio", "transformers", "numpy"]
    return np.array([f"{n}=={importlib.metadata.version(n)}" for n in names])


def main() -> None:
    import torch
    from transformers import GraniteSpeechFeatureExtractor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    torch.set_num_threads(1)
    extractor = GraniteSpeechFeatureExtractor()
    arrays = {"clips": np.array(list(CLIPS)), "versions": versions()}
    for name, (generate, num_samples, seed) in CLIPS.items():
        waveform = to_pcm_grid(generate(num_samples, seed))
        out = extractor(waveform)
        arrays[f"{name}__waveform"] = waveform
        arrays[f"{name}__features"] = out["input_features"][0].numpy().astype(np.float32)
        arrays[f"{name}__tokens"] = np.array(out["audio_embed_sizes"][0], dtype=np.int64)
        print(name, waveform.shape, arrays[f"{name}__features"].shape, out["audio_embed_sizes"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes); {', '.join(arrays['versions'])}")


if __name__ == "__main__":
    main()
