"""Opus decoded by libopus straight to 16 kHz, the model's rate.

Speech Opus is mostly SILK, coded at 8-16 kHz. FFmpeg's decoders (its own and its libopus
wrapper) always put out 48 kHz, which the server then resampled back down: on the bench
corpus's 32 kb/s speech, libopus at 16 kHz takes 0.6 ms per audio second where libopus at
48 kHz took 0.95, plus soxr's 48 to 16 kHz. libopus decodes to 8, 12, 16, 24 or 48 kHz on
request, but FFmpeg's wrapper never asks, so PyAV still demuxes (Ogg, WebM, MP4) and the
packets go to libopus here, through ctypes: the libopus PyAV's wheel bundles for its
FFmpeg, or the system's.

Mono and stereo streams (channel mapping family 0, all that browsers and encoders make
for speech); other layouts, or no libopus to load, keep FFmpeg's decoder.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import struct
import weakref
from pathlib import Path

import av
import numpy as np

RATE = 16000
_OPUS_RATE = 48000
"""Opus's header and the containers' trims count samples at 48 kHz."""
_MAX_FRAME = RATE * 120 // 1000
"""The longest packet, 120 ms."""
_HEAD = struct.Struct("<8sBBHIhB")
"""OpusHead (RFC 7845): magic, version, channels, pre-skip, input rate, gain, mapping."""


class OpusDecodeError(Exception):
    """A packet libopus refused; ``strerror`` says why, as ``av.FFmpegError`` does."""

    def __init__(self, strerror: str) -> None:
        super().__init__(strerror)
        self.strerror = strerror


class OpusDecoder:
    """One stream's packets, in order -> mono float32 at 16 kHz, trimmed as FFmpeg trims:
    the header's pre-skip, or the skip the demuxer attaches to a packet (the first
    packet's start, the last one's padding past the end)."""

    def __init__(self, lib: ctypes.CDLL, channels: int, pre_skip: int, gain_q8: int) -> None:
        error = ctypes.c_int()
        state = lib.opus_decoder_create(RATE, channels, ctypes.byref(error))
        if not state:
            raise OpusDecodeError(lib.opus_strerror(error.value).decode())
        weakref.finalize(self, lib.opus_decoder_destroy, state)
        self._lib, self._state, self._channels = lib, state, channels
        self._out = np.empty(_MAX_FRAME * channels, np.float32)
        self._out_address = self._out.ctypes.data
        self._skip = _at_16k(pre_skip)
        self._gain = np.float32(10 ** (gain_q8 / 256 / 20))

    @classmethod
    def for_stream(cls, extradata: bytes | None) -> OpusDecoder | None:
        """A decoder for the stream whose OpusHead is ``extradata``, or None where FFmpeg
        should decode it."""
        lib = _libopus()
        if lib is None or not extradata or len(extradata) < _HEAD.size:
            return None
        magic, _, channels, pre_skip, _, gain, mapping = _HEAD.unpack_from(extradata)
        if magic != b"OpusHead" or mapping != 0 or channels not in (1, 2):
            return None
        return cls(lib, channels, pre_skip, gain)

    def decode(self, packet: av.Packet) -> np.ndarray:
        if not packet.size:  # the demuxer's end-of-stream marker
            return np.zeros(0, np.float32)
        discard_end = self._take_skips(packet)
        count = self._lib.opus_decode_float(self._state, packet.buffer_ptr, packet.size,
                                            self._out_address, _MAX_FRAME, 0)
        if count < 0:
            raise OpusDecodeError(self._lib.opus_strerror(count).decode())
        samples = self._out[: count * self._channels]
        if self._channels == 2:
            samples = samples.reshape(-1, 2).mean(axis=1, dtype=np.float32)
        skip, self._skip = min(self._skip, len(samples)), max(0, self._skip - len(samples))
        samples = samples[skip : max(skip, len(samples) - discard_end)]
        return samples * self._gain if self._gain != 1 else samples.copy()

    def _take_skips(self, packet: av.Packet) -> int:
        """A packet's skip side data replaces the pending start skip (as FFmpeg's decode
        loop does); returns the samples to drop from its end."""
        if not packet.has_sidedata("skip_samples"):
            return 0
        start, end = struct.unpack_from("<II", bytes(packet.get_sidedata("skip_samples")))
        self._skip = _at_16k(start)
        return _at_16k(end)


def _at_16k(samples_48k: int) -> int:
    return round(samples_48k * RATE / _OPUS_RATE)


@functools.cache
def _libopus() -> ctypes.CDLL | None:
    """PyAV's bundled libopus (the one its FFmpeg links, so already loaded), else the
    system's; None when there is neither."""
    bundled = sorted(Path(av.__file__).parent.parent.glob("av.libs/libopus*.so*"))
    for path in [*map(str, bundled), ctypes.util.find_library("opus")]:
        if path is None:
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int,
                                            ctypes.POINTER(ctypes.c_int)]
        lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_decode_float.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32,
                                          ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        lib.opus_strerror.restype = ctypes.c_char_p
        return lib
    return None
