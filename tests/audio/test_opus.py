"""server.audio.opus: Opus decoded by libopus at 16 kHz, on real files from ffmpeg's encoder."""

from __future__ import annotations

import av
import numpy as np
import pytest
import soundfile as sf

from granite_speech_server.audio import decode as decode_module
from granite_speech_server.audio.decode import decode_audio
from granite_speech_server.audio.opus import OpusDecodeError, OpusDecoder
from tests.audio.test_decode import aligned_correlation, to_16k


def opus_head(path) -> bytes:
    with av.open(str(path)) as container:
        return bytes(container.streams.audio[0].codec_context.extradata)


def decoded_packets(path, head: bytes) -> list[np.ndarray]:
    decoder = OpusDecoder.for_stream(head)
    with av.open(str(path)) as container:
        return [decoder.decode(packet) for packet in container.demux(audio=0)]


@pytest.fixture(scope="module")
def speech_16k(speech, tmp_path_factory) -> tuple[np.ndarray, object]:
    """The clip at 16 kHz as a WAV, so an exact length can be asked of the Opus round trip."""
    original, rate = speech
    samples = to_16k(original, rate)
    path = tmp_path_factory.mktemp("opus") / "speech-16k.wav"
    sf.write(path, samples, 16000, subtype="FLOAT")
    return samples, path


@pytest.mark.parametrize("fmt, channels", [("ogg_opus", None), ("webm", None),
                                           ("ogg_opus", 2), ("webm", 2)])
def test_opus_reaches_16k_without_resampling(encoded, speech, monkeypatch, fmt, channels):
    """The decoder's own 16 kHz: soxr's streaming resampler, which took FFmpeg's 48 kHz
    down, is never called (soxr.resample, the reference here, is another function)."""
    def no_resampling(*args, **kwargs):
        raise AssertionError("Opus was resampled")

    monkeypatch.setattr(decode_module.soxr, "ResampleStream", no_resampling)
    original, rate = speech
    decoded = decode_audio(encoded(fmt, channels=channels).read_bytes())
    assert decoded.codec == "opus" and decoded.source_sample_rate == 48000
    correlation, _ = aligned_correlation(to_16k(original, rate), decoded.samples)
    assert correlation > 0.95


@pytest.mark.parametrize("extra", [(), ("-frame_duration", "60"), ("-b:a", "12k")])
def test_ogg_opus_comes_back_exactly_as_long_as_it_went_in(encoded, speech_16k, extra):
    """The header's pre-skip and the last page's end trim, at 16 kHz."""
    samples, path = speech_16k
    decoded = decode_audio(encoded("ogg_opus", extra_args=extra, src=path).read_bytes())
    assert len(decoded.samples) == len(samples)
    correlation, lag = aligned_correlation(samples, decoded.samples)
    assert correlation > 0.95 and lag == 0


def test_the_header_output_gain_is_applied(encoded):
    path = encoded("ogg_opus")
    head = bytearray(opus_head(path))
    plain = np.concatenate(decoded_packets(path, bytes(head)))
    head[16:18] = (round(20 * np.log10(2) * 256)).to_bytes(2, "little", signed=True)  # +6 dB
    louder = np.concatenate(decoded_packets(path, bytes(head)))
    np.testing.assert_allclose(louder, 2 * plain, rtol=1e-3, atol=1e-6)


def test_a_stereo_stream_is_the_mean_of_its_channels(stereo_wav, encoded):
    path, expected_mean = stereo_wav
    decoded = decode_audio(encoded("ogg_opus", src=path).read_bytes())
    assert decoded.source_channels == 2
    correlation, _ = aligned_correlation(expected_mean, decoded.samples)
    assert correlation > 0.95


def test_surround_opus_is_left_to_ffmpeg(encoded, speech):
    """Channel mapping family 1 (more than two channels) isn't ours: FFmpeg decodes it."""
    path = encoded("ogg_opus", channels=6)
    assert OpusDecoder.for_stream(opus_head(path)) is None
    original, rate = speech
    decoded = decode_audio(path.read_bytes())
    assert decoded.source_channels == 6
    correlation, _ = aligned_correlation(to_16k(original, rate), decoded.samples)
    assert correlation > 0.9


@pytest.mark.parametrize("head", [b"", b"OpusHead", b"NotOpus!" + bytes(11)])
def test_a_missing_or_foreign_header_is_left_to_ffmpeg(head):
    assert OpusDecoder.for_stream(head) is None


def test_a_packet_libopus_refuses_raises_with_its_reason(encoded):
    decoder = OpusDecoder.for_stream(opus_head(encoded("ogg_opus")))
    # Code 3 (many frames), 63 frames of 20 ms: past Opus's 120 ms limit.
    with pytest.raises(OpusDecodeError) as refused:
        decoder.decode(av.Packet(b"\xfb\xbf" + bytes(8)))
    assert refused.value.strerror
