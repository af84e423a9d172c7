"""Granite Speech log-mel front end in plain torch.

transformers' ``GraniteSpeechFeatureExtractor`` needs torchaudio, whose PyPI builds do
not load with the CPU torch that vLLM's CPU build ships. This module reproduces the
extractor's math (torchaudio ``MelSpectrogram`` defaults, then Granite's log scaling and
frame stacking) with torch alone, so the server never imports torchaudio.
``tests/audio/test_features.py`` checks it against golden features produced by the real
extractor (``tools/make_feature_reference.py``).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

SAMPLE_RATE = 16000
HOP_LENGTH = 160
N_FFT = 512
WIN_LENGTH = 400
N_MELS = 80
F_MIN = 0.0
F_MAX = SAMPLE_RATE / 2
FEATURE_DIM = 2 * N_MELS  # two 10 ms mel frames stacked per 20 ms encoder frame
LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # decades of log10 power kept below the utterance's loudest bin

# torch.stft's reflect padding needs more samples than the pad it adds on each side.
MIN_STFT_SAMPLES = N_FFT // 2 + 1


WINDOW_SIZE = 15
DOWNSAMPLE_RATE = 5
"""The projector's ``window_size`` (encoder frames per window) and ``downsample_rate``
(frames per audio token within it) when a checkpoint's config.json doesn't say: the
4.0-1b's values, and transformers' defaults for ``GraniteSpeechConfig``."""


def audio_token_count(
    num_samples: int, window_size: int = WINDOW_SIZE, downsample_rate: int = DOWNSAMPLE_RATE
) -> int:
    """Audio tokens the projector emits for ``num_samples`` of 16 kHz audio, so prompts
    can reserve them before encoding. The one formula: the plugin expands the prompt's
    audio placeholder to this many, and the server plans with it through
    ``SpeechEngine.audio_tokens`` (both with the checkpoint's own window and rate)."""
    mel_frames = num_samples // HOP_LENGTH + 1
    encoder_frames = mel_frames // 2
    windows = math.ceil(encoder_frames / window_size)
    return windows * (window_size // downsample_rate)


def longest_audio_samples(
    max_tokens: int, window_size: int = WINDOW_SIZE, downsample_rate: int = DOWNSAMPLE_RATE
) -> int:
    """The most samples whose audio tokens (``audio_token_count``) fit in ``max_tokens``."""
    windows = max(0, max_tokens) // (window_size // downsample_rate)
    # n // HOP_LENGTH + 1 mel frames, halved, fill at most this many encoder frames.
    encoder_frames = windows * window_size
    return HOP_LENGTH * 2 * encoder_frames + HOP_LENGTH - 1


def _hz_to_mel(freq: float) -> float:
    return 2595.0 * math.log10(1.0 + freq / 700.0)


def _mel_to_hz(mels: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)


@functools.lru_cache(maxsize=None)
def _reference_filterbank() -> torch.Tensor:
    """HTK triangles, unnormalised, op for op as torchaudio's ``melscale_fbanks``.

    Built in float32 on the CPU like torchaudio's, so rounding matches the reference.
    """
    all_freqs = torch.linspace(0, SAMPLE_RATE // 2, N_FFT // 2 + 1)
    m_pts = torch.linspace(_hz_to_mel(F_MIN), _hz_to_mel(F_MAX), N_MELS + 2)
    f_pts = _mel_to_hz(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down_slopes = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up_slopes = slopes[:, 2:] / f_diff[1:]
    return torch.max(torch.zeros(1), torch.min(down_slopes, up_slopes))


@functools.lru_cache(maxsize=None)
def _mel_filterbank(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) matrix, cached per dtype/device for the hot path."""
    return _reference_filterbank().to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=None)
def _window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Periodic Hann of win_length, centred in n_fft as torch.stft and torchaudio do."""
    window = torch.hann_window(WIN_LENGTH, periodic=True, dtype=dtype, device=device)
    side = (N_FFT - WIN_LENGTH) // 2
    return torch.nn.functional.pad(window, (side, N_FFT - WIN_LENGTH - side))


def _as_float_tensor(waveform) -> torch.Tensor:
    """float32 1-D tensor; float32 is what the reference computes in (``audio.float()``)."""
    if isinstance(waveform, np.ndarray):
        waveform = torch.from_numpy(np.ascontiguousarray(waveform))
    if not isinstance(waveform, torch.Tensor):
        raise TypeError("waveform must be a numpy array or a torch tensor")
    if waveform.ndim != 1:
        raise ValueError(f"expected a mono 1-D waveform, got shape {tuple(waveform.shape)}")
    if not torch.is_floating_point(waveform):
        raise ValueError("waveform must be floating point (PCM scaled to [-1, 1])")
    return waveform.float()


STFT_BLOCK = 512
"""Frames (5 s) transformed at a time: a block's spectrum stays in the core's cache.
torch.stft over a whole 30 s segment, then the complex abs(), took twice as long
(3.6 against 7.2 ms; 19 against 73 ms for 150 s), the same powers to 4e-7."""


def _power_mel(waveform: torch.Tensor) -> torch.Tensor:
    """(frames, n_mels) power mel spectrogram, frames = n // hop + 1, as torch.stft's
    centred frames (reflect-padded by n_fft / 2 at both ends) give.

    Clips shorter than ``MIN_STFT_SAMPLES`` cannot be reflect-padded; they are zero-padded
    at the end to that length and the extra frames dropped, so the frame count (and hence
    ``audio_token_count``) still follows n // hop + 1. The reference extractor raises on
    such clips; the server rejects anything under 0.1 s (1600 samples) before this.
    """
    num_frames = waveform.shape[0] // HOP_LENGTH + 1
    if waveform.shape[0] < MIN_STFT_SAMPLES:
        waveform = torch.nn.functional.pad(waveform, (0, MIN_STFT_SAMPLES - waveform.shape[0]))
    half = N_FFT // 2
    padded = torch.cat([waveform[1 : half + 1].flip(0), waveform,
                        waveform[-half - 1 : -1].flip(0)])
    frames = padded.unfold(0, N_FFT, HOP_LENGTH)[:num_frames]
    window = _window(waveform.dtype, waveform.device)
    filterbank = _mel_filterbank(waveform.dtype, waveform.device)
    mel = torch.empty(num_frames, N_MELS, dtype=waveform.dtype, device=waveform.device)
    for first in range(0, num_frames, STFT_BLOCK):
        spectrum = torch.fft.rfft(frames[first : first + STFT_BLOCK] * window)
        # The power from its parts: complex abs() then squaring took 3.5x as long.
        power = spectrum.real.square() + spectrum.imag.square()
        torch.matmul(power, filterbank, out=mel[first : first + STFT_BLOCK])
    return mel


def log_mel_features(waveform) -> torch.Tensor:
    """(T, 160) float32 encoder input for one mono 16 kHz clip, as the model was trained on.

    Same numbers as ``GraniteSpeechFeatureExtractor`` on a single unpadded clip: log10
    power with an 8-decade floor relative to the clip's peak, scaled to about [-1, 1],
    then frame pairs stacked (an odd last frame is dropped) to 50 Hz.
    """
    with torch.no_grad():
        logmel = _power_mel(_as_float_tensor(waveform)).clamp_(min=LOG_FLOOR).log10_()
        peak = logmel.amax(dim=(-2, -1), keepdim=True)
        logmel = torch.maximum(logmel, peak - DYNAMIC_RANGE).div_(4).add_(1)
        if logmel.shape[0] % 2 == 1:
            logmel = logmel[:-1]
        return logmel.reshape(-1, FEATURE_DIM)
