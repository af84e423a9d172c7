"""One spoken clip per session, encoded on demand into each upload format."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from tests.audio_samples import FORMATS, MissingTool, encode, synthesize_speech

SPEECH_TEXT = "one two three four five six seven"

Encoder = Callable[..., Path]


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """espeak-ng's 22.05 kHz mono 16-bit WAV of SPEECH_TEXT (about 2.7 s)."""
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    return _or_fail(synthesize_speech, SPEECH_TEXT, path)


@pytest.fixture(scope="session")
def speech(speech_wav: Path) -> tuple[np.ndarray, int]:
    """The clip as float32 samples and its sample rate."""
    samples, rate = sf.read(speech_wav, dtype="float32")
    return samples, rate


@pytest.fixture(scope="session")
def encoded(speech_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> Encoder:
    """encoded(fmt, sample_rate=None, channels=None, extra_args=(), src=None) -> Path.

    Each distinct request is encoded once per session.
    """
    out_dir = tmp_path_factory.mktemp("encoded")
    cache: dict[tuple, Path] = {}

    def make(
        fmt: str,
        *,
        sample_rate: int | None = None,
        channels: int | None = None,
        extra_args: tuple[str, ...] = (),
        src: Path | None = None,
    ) -> Path:
        src = src or speech_wav
        key = (fmt, sample_rate, channels, extra_args, src)
        if key not in cache:
            name = f"{src.stem}-{fmt}-{sample_rate}-{channels}-{len(cache)}"
            dst = out_dir / (name + FORMATS[fmt].suffix)
            cache[key] = _or_fail(
                encode, src, fmt, dst, sample_rate=sample_rate, channels=channels,
                extra_args=extra_args,
            )  # fmt: skip
        return cache[key]

    return make


def _or_fail(make: Callable[..., Path], *args, **kwargs) -> Path:
    """A missing espeak-ng/ffmpeg fails the test with the install hint: CI has them,
    so a skip would only hide a broken image."""
    try:
        return make(*args, **kwargs)
    except MissingTool as exc:
        missing = str(exc)
    pytest.fail(missing, pytrace=False)


@pytest.fixture(scope="session")
def stereo_wav(speech, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """Speech on the left, the same speech reversed and quieter on the right; and the
    mean of the two at 16 kHz, what decoding should give."""
    original, rate = speech
    left, right = original, -0.5 * original[::-1]
    path = tmp_path_factory.mktemp("stereo") / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), rate, subtype="FLOAT")
    return path, soxr.resample((left + right) / 2, rate, 16000, quality="HQ")
