"""Realtime input audio: G.711 expanded as the standard says, PCM split anywhere."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soxr

from granite_speech_server.realtime.audio_in import G711, InputAudio

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # CPython's own G.711 (3.11-3.12): the reference


@pytest.mark.parametrize(("fmt", "expand"), [("audio/pcmu", audioop.ulaw2lin),
                                             ("audio/pcma", audioop.alaw2lin)])
def test_g711_bytes_expand_as_cpython_does(fmt, expand):
    every_byte = bytes(range(256))
    reference = np.frombuffer(expand(every_byte, 2), dtype="<i2") / 32768
    assert np.array_equal(G711[fmt], reference.astype(np.float32))


def test_pcm_split_mid_sample_is_the_same_audio():
    rng = np.random.default_rng(0)
    samples = (rng.normal(0, 3000, 24_000)).astype("<i2")
    data = samples.tobytes()
    whole = InputAudio("audio/pcm").push(data)
    audio = InputAudio("audio/pcm")
    pieces = [audio.push(data[i:i + 4801]) for i in range(0, len(data), 4801)]  # odd sizes
    assert np.allclose(np.concatenate(pieces), whole, atol=1e-6)
    assert np.allclose(whole, soxr.resample(samples / 32768, 24_000, 16_000)[:whole.size],
                       atol=0.02)


@pytest.mark.parametrize("fmt", ["audio/pcmu", "audio/pcma"])
def test_g711_comes_out_at_16_khz(fmt):
    audio = InputAudio(fmt)
    first, second = audio.push(bytes(8000)), audio.push(bytes(8000))
    # The streaming resampler holds back ~70 ms of the first second until more arrives.
    assert 14_500 < first.size < 16_000 and first.size + second.size > 31_000
