"""server.audio.decode on real files: every upload format, channel mixing, limits, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from granite_speech_server.audio import decode as decode_module
from granite_speech_server.audio.decode import TARGET_SAMPLE_RATE, DecodedAudio, decode_audio
from granite_speech_server.errors import AudioDecodeError, AudioTooLong, AudioTooShort, EmptyAudio
from tests.audio_samples import FORMATS, ffmpeg, flac_declaring, video_only_mp4, with_video

DURATION_TOLERANCE_S = 0.030


def to_16k(x: np.ndarray, rate: int) -> np.ndarray:
    return soxr.resample(x, rate, TARGET_SAMPLE_RATE, quality="HQ")


def best_lag(ref: np.ndarray, x: np.ndarray) -> int:
    """Lag (samples) maximising the cross-correlation: x[n + lag] ~ ref[n]."""
    n = 1 << int(np.ceil(np.log2(len(ref) + len(x))))
    xcorr = np.fft.irfft(np.fft.rfft(x, n) * np.conj(np.fft.rfft(ref, n)), n)
    lag = int(np.argmax(xcorr))
    return lag - n if lag > n // 2 else lag


def aligned_correlation(ref: np.ndarray, x: np.ndarray) -> tuple[float, int]:
    """Pearson correlation after removing the codec's delay (priming), and that delay."""
    lag = best_lag(ref, x)
    a, b = (ref, x[lag:]) if lag >= 0 else (ref[-lag:], x)
    m = min(len(a), len(b))
    return float(np.corrcoef(a[:m], b[:m])[0, 1]), lag


# (id, format, encode options, expected source_format, codec, source rate, channels)
FORMAT_CASES = [
    ("wav", "wav", {}, "wav", "pcm_s16le", 22050, 1),
    ("flac", "flac", {}, "flac", "flac", 22050, 1),
    ("mp3", "mp3", {}, "mp3", "mp3float", 22050, 1),
    ("ogg_vorbis", "ogg_vorbis", {}, "ogg", "vorbis", 22050, 1),
    ("ogg_opus", "ogg_opus", {}, "ogg", "opus", 48000, 1),
    ("m4a", "m4a", {}, "mp4", "aac", 22050, 1),
    ("webm", "webm", {}, "webm", "opus", 48000, 1),
    ("mp4", "mp4", {}, "mp4", "aac", 22050, 1),
    ("wav_48k", "wav", {"sample_rate": 48000}, "wav", "pcm_s16le", 48000, 1),
    ("wav_16k", "wav", {"sample_rate": 16000}, "wav", "pcm_s16le", 16000, 1),
    ("flac_44k_stereo", "flac", {"sample_rate": 44100, "channels": 2}, "flac", "flac", 44100, 2),
    ("mp3_44k_stereo", "mp3", {"sample_rate": 44100, "channels": 2}, "mp3", "mp3float", 44100, 2),
    ("m4a_48k_stereo", "m4a", {"sample_rate": 48000, "channels": 2}, "mp4", "aac", 48000, 2),
    ("ogg_vorbis_48k", "ogg_vorbis", {"sample_rate": 48000}, "ogg", "vorbis", 48000, 1),
    ("webm_stereo", "webm", {"channels": 2}, "webm", "opus", 48000, 2),
]


@pytest.mark.parametrize(
    "fmt, options, source_format, codec, rate, channels",
    [case[1:] for case in FORMAT_CASES],
    ids=[case[0] for case in FORMAT_CASES],
)
def test_decodes_each_format_to_16k_mono(
    encoded, speech, fmt, options, source_format, codec, rate, channels
):
    original, original_rate = speech
    decoded = decode_audio(encoded(fmt, **options).read_bytes())

    assert isinstance(decoded, DecodedAudio)
    assert (decoded.source_format, decoded.codec) == (source_format, codec)
    assert (decoded.source_sample_rate, decoded.source_channels) == (rate, channels)
    assert decoded.samples.dtype == np.float32 and decoded.samples.ndim == 1
    assert np.isfinite(decoded.samples).all()
    assert decoded.duration_s == len(decoded.samples) / 16000
    assert abs(decoded.duration_s - len(original) / original_rate) <= DURATION_TOLERANCE_S

    correlation, _ = aligned_correlation(to_16k(original, original_rate), decoded.samples)
    # Lossless at the clip's own rate is near exact; ffmpeg's resampling costs a little.
    threshold = 0.9 if FORMATS[fmt].lossy else 0.99 if options else 0.9999
    assert correlation > threshold


def test_wav_at_the_source_rate_matches_soxr_exactly(encoded, speech):
    original, rate = speech
    decoded = decode_audio(encoded("wav").read_bytes())
    np.testing.assert_allclose(decoded.samples, to_16k(original, rate), atol=1e-6)


def test_16k_wav_passes_through_unchanged(tmp_path, speech):
    pcm = (np.sin(np.arange(8000) / 5) * 20000).astype(np.int16)
    path = tmp_path / "16k.wav"
    sf.write(path, pcm, 16000, subtype="PCM_16")
    decoded = decode_audio(path.read_bytes())
    np.testing.assert_array_equal(decoded.samples, pcm / np.float32(32768))


def test_mp4_with_a_video_stream_decodes_its_audio(encoded, speech, tmp_path):
    original, rate = speech
    decoded = decode_audio(with_video(encoded("wav"), tmp_path / "av.mp4").read_bytes())
    assert (decoded.source_format, decoded.codec) == ("mp4", "aac")
    assert abs(decoded.duration_s - len(original) / rate) <= DURATION_TOLERANCE_S
    assert aligned_correlation(to_16k(original, rate), decoded.samples)[0] > 0.9


def test_sample_rate_change_mid_stream(encoded, speech):
    """Two mp3s back to back (22.05 then 44.1 kHz), as naive concatenation makes:
    the resampler restarts at the switch and the packet in between is skipped."""
    original, rate = speech
    data = encoded("mp3").read_bytes() + encoded("mp3", sample_rate=44100).read_bytes()
    decoded = decode_audio(data)
    assert abs(decoded.duration_s - 2 * len(original) / rate) < 0.15
    half = len(decoded.samples) // 2
    reference = to_16k(original, rate)
    for part in (decoded.samples[:half], decoded.samples[half:]):
        assert aligned_correlation(reference, part)[0] > 0.9


# --- channels ------------------------------------------------------------------


def test_stereo_wav_is_the_mean_of_its_channels(stereo_wav):
    path, expected_mean = stereo_wav
    decoded = decode_audio(path.read_bytes())
    assert decoded.source_channels == 2
    np.testing.assert_allclose(decoded.samples, expected_mean, atol=1e-5)


def test_stereo_flac_is_the_mean_of_its_channels(stereo_wav, encoded):
    path, expected_mean = stereo_wav
    decoded = decode_audio(encoded("flac", src=path).read_bytes())  # the FFmpeg path
    assert decoded.source_channels == 2
    np.testing.assert_allclose(decoded.samples, expected_mean, atol=2e-4)


def test_stereo_mp3_is_the_mean_of_its_channels(stereo_wav, encoded):
    path, expected_mean = stereo_wav
    decoded = decode_audio(encoded("mp3", src=path).read_bytes())
    correlation, _ = aligned_correlation(expected_mean, decoded.samples)
    assert correlation > 0.9


@pytest.mark.parametrize("codec", ["pcm_u8", "pcm_s24le", "pcm_s32le", "pcm_f64le"])
def test_sample_formats_scale_to_the_same_float_range(encoded, speech, codec, tmp_path):
    original, rate = speech
    path = tmp_path / f"{codec}.wav"
    ffmpeg("-i", str(encoded("wav")), "-c:a", codec, str(path))
    decoded = decode_audio(path.read_bytes())
    tolerance = 2 / 128 if codec == "pcm_u8" else 1e-4
    np.testing.assert_allclose(decoded.samples, to_16k(original, rate), atol=tolerance)


@pytest.mark.parametrize("container", ["WAV", "W64"])  # soundfile path, FFmpeg path
def test_nan_and_inf_become_zero_and_loud_floats_are_not_clipped(tmp_path, container):
    x = np.full(16000, 0.25, np.float32)
    x[100], x[200], x[300], x[400] = np.nan, np.inf, -np.inf, 1.5
    path = tmp_path / f"bad.{container.lower()}"
    sf.write(path, x, 16000, format=container, subtype="FLOAT")
    decoded = decode_audio(path.read_bytes())
    expected = np.where(np.isfinite(x), x, 0).astype(np.float32)
    np.testing.assert_array_equal(decoded.samples, expected)


# --- bad input -------------------------------------------------------------------


def test_empty_upload():
    with pytest.raises(EmptyAudio, match="The uploaded file is empty."):
        decode_audio(b"")


@pytest.mark.parametrize(
    "data",
    [np.random.default_rng(0).bytes(20_000), b"hello, this is not audio\n" * 50],
    ids=["random", "text"],
)
def test_bytes_that_are_not_audio(data):
    with pytest.raises(AudioDecodeError, match="Could not decode the uploaded file as audio: "):
        decode_audio(data)


def test_m4a_cut_before_its_index(encoded):
    data = encoded("m4a").read_bytes()
    assert data.find(b"moov") > len(data) // 2  # ffmpeg wrote the index last
    with pytest.raises(AudioDecodeError, match="Could not decode the uploaded file as audio: .+"):
        decode_audio(data[: len(data) // 2])


def test_truncated_m4a_with_its_index_first_decodes_what_is_there(encoded, speech):
    """A cut in the media data is like a recording stopped early: the audio present
    is decoded (as FFmpeg's CLI does), the corrupt last packet skipped."""
    data = encoded("m4a", extra_args=("-movflags", "+faststart")).read_bytes()
    decoded = decode_audio(data[: len(data) // 2])
    original, rate = speech
    assert 0.5 < decoded.duration_s < len(original) / rate - 0.5


def test_mp4_without_an_audio_stream(tmp_path):
    data = video_only_mp4(tmp_path / "video.mp4").read_bytes()
    with pytest.raises(AudioDecodeError, match="no audio stream"):
        decode_audio(data)


def test_wav_with_zero_samples(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, np.int16), 22050, subtype="PCM_16")
    with pytest.raises(EmptyAudio, match="The audio contains no samples."):
        decode_audio(path.read_bytes())


def test_ogg_with_zero_samples(encoded, tmp_path):
    path = tmp_path / "zero.ogg"
    ffmpeg("-i", str(encoded("wav")), "-t", "0", "-c:a", "libvorbis", str(path))
    with pytest.raises((EmptyAudio, AudioDecodeError)):
        decode_audio(path.read_bytes())


# --- duration limits --------------------------------------------------------------


def test_too_short(encoded, tmp_path):
    path = tmp_path / "short.wav"
    ffmpeg("-i", str(encoded("wav")), "-t", "0.05", str(path))
    with pytest.raises(AudioTooShort, match=r"^Audio is 0.05 s long; the minimum is 0.1 s.$"):
        decode_audio(path.read_bytes())
    assert decode_audio(path.read_bytes(), min_duration_s=0.0).duration_s == 0.05


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "m4a", "ogg_opus", "webm"])
def test_too_long_by_declared_duration(encoded, fmt):
    with pytest.raises(AudioTooLong, match=r"^Audio is 2.7\d s long; the maximum is 1 s.$"):
        decode_audio(encoded(fmt).read_bytes(), max_duration_s=1.0)


def test_too_long_by_a_little_is_caught_after_decoding(encoded):
    """Declared lengths get 10 % slack (they can be estimates); the decoded length decides."""
    with pytest.raises(AudioTooLong, match=r"^Audio is longer than the maximum of 2.6 s.$"):
        decode_audio(encoded("mp3").read_bytes(), max_duration_s=2.6)
    assert decode_audio(encoded("mp3").read_bytes(), max_duration_s=2.75).duration_s < 2.75


@pytest.mark.parametrize("declared_samples", [22050, 0], ids=["understated", "unknown"])
def test_too_long_when_the_header_understates_or_omits_the_duration(encoded, declared_samples):
    data = flac_declaring(encoded("flac").read_bytes(), declared_samples)
    with pytest.raises(AudioTooLong, match=r"^Audio is longer than the maximum of 2 s.$"):
        decode_audio(data, max_duration_s=2.0)
    assert decode_audio(data).duration_s > 2.7  # the header's lie loses no audio


def test_mp3_without_xing_header(encoded):
    """No Xing/LAME header: FFmpeg estimates the duration from the bitrate."""
    data = encoded("mp3", extra_args=("-write_xing", "0")).read_bytes()
    assert 2.6 < decode_audio(data).duration_s < 2.9  # no gapless info: priming stays
    with pytest.raises(AudioTooLong):
        decode_audio(data, max_duration_s=1.0)


def test_decoding_stops_at_the_limit(encoded, monkeypatch):
    """With no declared duration, memory is bounded: decoding stops one frame past it."""
    data = flac_declaring(encoded("flac").read_bytes(), 0)
    kept = []
    original = decode_module._StreamResampler.feed

    def counting(self, samples, rate):
        kept.append(len(samples))
        return original(self, samples, rate)

    monkeypatch.setattr(decode_module._StreamResampler, "feed", counting)
    with pytest.raises(AudioTooLong):
        decode_audio(data, max_duration_s=1.0)
    assert 1.0 < sum(kept) / 22050 <= 1.0 + max(kept) / 22050


def test_errors_carry_the_file_param():
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(b"\x00" * 1000)
    assert (info.value.status_code, info.value.param) == (400, "file")
