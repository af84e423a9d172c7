"""Hostile uploads: mutated real files of every format, and named nasty cases.

Whatever the bytes, the decoder returns bounded, finite 16 kHz mono audio or
raises one of the server's 4xx errors: never another exception, never a hang,
never memory beyond what the duration limit allows.
"""

from __future__ import annotations

import io
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from granite_speech_server.audio.decode import decode_audio
from granite_speech_server.errors import InvalidRequest
from tests import audio_samples

MAX_SECONDS = 30.0
SR = 16000


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("fuzz")
    wav = audio_samples.synthesize_speech("one two three", out / "src.wav")
    return {fmt: audio_samples.encode(wav, fmt, out / f"a{spec.suffix}").read_bytes()
            for fmt, spec in audio_samples.FORMATS.items()}


def check(data: bytes) -> None:
    """The decoder's contract on arbitrary bytes."""
    try:
        decoded = decode_audio(data, max_duration_s=MAX_SECONDS, min_duration_s=0.1)
    except InvalidRequest as exc:
        assert exc.status_code == 400 and exc.message
        return
    samples = decoded.samples
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert np.isfinite(samples).all()
    assert 0.1 * SR <= samples.size <= (MAX_SECONDS + 1) * SR


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("repeat"), st.integers(0, 10**6), st.integers(1, 4096)),
)


def mutate(data: bytes, steps) -> bytes:
    buf = bytearray(data)
    for kind, position, value in steps:
        at = position % max(1, len(buf))
        if kind == "flip":
            buf[at] ^= value
        elif kind == "truncate":
            del buf[at:]
        elif kind == "insert":
            buf[at:at] = value
        else:
            buf[at:at] = buf[at : at + value]
        if not buf:
            break
    return bytes(buf)


@pytest.mark.parametrize("fmt", list(audio_samples.FORMATS))
@settings(max_examples=40, deadline=5000, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(mutation, min_size=1, max_size=6))
def test_mutated_files_decode_or_get_a_clean_400(originals, fmt, steps):
    check(mutate(originals[fmt], steps))


@settings(max_examples=100, deadline=5000, derandomize=True)
@given(data=st.binary(max_size=4096))
def test_random_bytes_decode_or_get_a_clean_400(data):
    check(data)


def wav_header(data_bytes: int, channels: int = 1, rate: int = SR, bits: int = 16,
               fmt: int = 1) -> bytes:
    block = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", min(36 + data_bytes, 0xFFFFFFFF)) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, fmt, channels, rate, rate * block, block, bits)
            + b"data" + struct.pack("<I", data_bytes))


def wav(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def ffmpeg_bytes(tmp_path: Path, *args: str, suffix: str) -> bytes:
    out = tmp_path / f"out{suffix}"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args, str(out)],
                   check=True)
    return out.read_bytes()


def test_wav_header_declaring_4_gb_decodes_only_what_is_there():
    data = wav_header(0xFFFFFFF0) + np.full(SR, 1000, np.int16).tobytes()
    decoded = decode_audio(data, max_duration_s=MAX_SECONDS)
    assert decoded.samples.size == SR


def test_wav_really_holding_more_than_the_limit_is_refused():
    data = wav_header(2 * 40 * SR) + np.zeros(40 * SR, np.int16).tobytes()
    with pytest.raises(InvalidRequest, match="maximum"):
        decode_audio(data, max_duration_s=MAX_SECONDS)


def test_one_sample_file_is_too_short():
    with pytest.raises(InvalidRequest, match="minimum"):
        decode_audio(wav(np.zeros(1, np.float32), SR))


def test_eight_channels_are_averaged():
    channels = np.zeros((SR, 8), np.float32)
    channels[:, 3] = 0.8
    decoded = decode_audio(wav(channels, SR, "FLOAT"))
    assert decoded.source_channels == 8
    assert np.allclose(decoded.samples, 0.1, atol=1e-3)


def test_192_khz_is_resampled():
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(192000) / 192000)).astype(np.float32)
    decoded = decode_audio(wav(tone, 192000, "FLOAT"))
    assert decoded.source_sample_rate == 192000
    assert decoded.samples.size == pytest.approx(SR, abs=2)


def test_nan_and_inf_samples_become_silence():
    samples = np.full(SR, 0.25, np.float32)
    samples[::3], samples[1::7], samples[2::11] = np.nan, np.inf, -np.inf
    decoded = decode_audio(wav(samples, SR, "FLOAT"))
    assert np.isfinite(decoded.samples).all()


def test_tiny_flac_of_ten_hours_of_silence_is_refused_by_the_limit(tmp_path):
    data = ffmpeg_bytes(tmp_path, "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono",
                        "-t", "36000", "-c:a", "flac", "-frame_size", "65535", "-strict", "-2",
                        suffix=".flac")
    assert len(data) < 200_000, "a small upload"
    with pytest.raises(InvalidRequest, match="maximum"):
        decode_audio(data, max_duration_s=7200)


def test_file_with_only_metadata_is_refused(tmp_path):
    data = ffmpeg_bytes(tmp_path, "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "0",
                        "-metadata", "title=nothing here", "-c:a", "libmp3lame", suffix=".mp3")
    with pytest.raises(InvalidRequest):
        decode_audio(data)


def test_mp4_with_video_and_no_audio_names_the_problem(tmp_path):
    data = audio_samples.video_only_mp4(tmp_path / "v.mp4").read_bytes()
    with pytest.raises(InvalidRequest, match="no audio stream"):
        decode_audio(data)
