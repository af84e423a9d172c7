"""server.audio.features against golden features from transformers' real extractor.

The fixture comes from tools/make_feature_reference.py (torchaudio in a throwaway venv);
this test runs without torchaudio.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from granite_speech_server.audio.features import (
    FEATURE_DIM,
    HOP_LENGTH,
    SAMPLE_RATE,
    audio_token_count,
    log_mel_features,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "feature_reference.npz"
TOLERANCE = 1e-4
WINDOW_SIZE = 15  # encoder frames per projector window
QUERIES_PER_WINDOW = 3


def _load_reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURE, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


REFERENCE = _load_reference()
CLIPS = [str(name) for name in REFERENCE["clips"]]


def test_fixture_records_versions_and_clips() -> None:
    versions = " ".join(str(v) for v in REFERENCE["versions"])
    assert "transformers==" in versions and "torchaudio==" in versions
    assert len(CLIPS) >= 6


@pytest.mark.parametrize("name", CLIPS)
def test_features_match_reference(name: str) -> None:
    waveform = REFERENCE[f"{name}__waveform"]
    expected = torch.from_numpy(REFERENCE[f"{name}__features"])
    got = log_mel_features(waveform)
    assert got.dtype == torch.float32
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("name", CLIPS)
def test_token_count_matches_reference(name: str) -> None:
    num_samples = REFERENCE[f"{name}__waveform"].shape[0]
    assert audio_token_count(num_samples) == int(REFERENCE[f"{name}__tokens"])


@pytest.mark.parametrize("name", CLIPS)
def test_frames_fill_the_projector_windows(name: str) -> None:
    waveform = REFERENCE[f"{name}__waveform"]
    frames = log_mel_features(waveform).shape[0]
    assert frames == (waveform.shape[0] // HOP_LENGTH + 1) // 2
    assert math.ceil(frames / WINDOW_SIZE) * QUERIES_PER_WINDOW == audio_token_count(
        waveform.shape[0]
    )


@pytest.mark.parametrize(
    ("seconds", "tokens"), [(0.1, 3), (1, 12), (30, 300), (60, 600), (120, 1200)]
)
def test_token_count_known_values(seconds: float, tokens: int) -> None:
    assert audio_token_count(int(seconds * SAMPLE_RATE)) == tokens


def test_torch_and_float64_inputs_match_numpy_float32() -> None:
    waveform = REFERENCE["speech_1s__waveform"]
    expected = log_mel_features(waveform)
    assert torch.equal(log_mel_features(torch.from_numpy(waveform)), expected)
    assert torch.equal(log_mel_features(waveform.astype(np.float64)), expected)


@pytest.mark.parametrize("num_samples", [0, 1, 159, 160, 256])
def test_clips_too_short_for_reflect_padding(num_samples: int) -> None:
    waveform = np.random.default_rng(0).standard_normal(num_samples).astype(np.float32)
    features = log_mel_features(0.1 * waveform)
    assert features.shape == ((num_samples // HOP_LENGTH + 1) // 2, FEATURE_DIM)
    assert torch.isfinite(features).all()


def test_short_clip_is_zero_padded_at_the_end() -> None:
    # 256 samples cannot be reflect-padded by 256; they are zero-padded to 257, which is
    # exactly a 257-sample clip ending in a zero (same frame count: 256 // 160 + 1 == 2).
    waveform = REFERENCE["speech_257__waveform"].copy()
    waveform[-1] = 0.0
    assert torch.equal(log_mel_features(waveform[:-1]), log_mel_features(waveform))


@pytest.mark.parametrize("bad", [np.zeros((2, 1600), np.float32), np.zeros(1600, np.int16)])
def test_rejects_non_mono_or_integer_audio(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        log_mel_features(bad)
