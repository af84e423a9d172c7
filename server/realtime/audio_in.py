"""A realtime session's input audio, chunk by chunk -> 16 kHz float32 samples.

OpenAI's Realtime formats: ``audio/pcm`` (16-bit little-endian mono at 24 kHz),
``audio/pcmu`` and ``audio/pcma`` (G.711 mu-law and A-law at 8 kHz, telephony's). Chunks
arrive as the client cuts them, so a sample may straddle two appends (its odd byte is kept
for the next) and the resampler is soxr's streaming one, whose state runs across chunks.
"""

from __future__ import annotations

import numpy as np
import soxr

from granite_speech_server.audio.features import SAMPLE_RATE

FORMAT_RATES = {"audio/pcm": 24_000, "audio/pcmu": 8_000, "audio/pcma": 8_000}
"""Each format's sample rate: OpenAI's are fixed, so the format names it."""


def _mu_law_table() -> np.ndarray:
    code = ~np.arange(256) & 0xFF
    exponent, mantissa = (code >> 4) & 0x07, code & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return (np.where(code & 0x80, -magnitude, magnitude) / 32768).astype(np.float32)


def _a_law_table() -> np.ndarray:
    code = np.arange(256) ^ 0x55
    exponent, mantissa = (code >> 4) & 0x07, code & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8,
                         ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return (np.where(code & 0x80, magnitude, -magnitude) / 32768).astype(np.float32)


G711 = {"audio/pcmu": _mu_law_table(), "audio/pcma": _a_law_table()}
"""Byte -> sample, as ITU-T G.711 expands them (the same values as CPython's audioop)."""


class InputAudio:
    """``push(bytes)`` -> the 16 kHz samples they complete (possibly none yet)."""

    def __init__(self, format_type: str) -> None:
        self.format_type = format_type
        self.rate = FORMAT_RATES[format_type]
        self._odd_byte = b""
        self._resampler = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32")

    def samples_in(self, data: bytes) -> int:
        """How many 16 kHz samples ``data`` makes."""
        width = 1 if self.format_type in G711 else 2
        return len(data) // width * SAMPLE_RATE // self.rate

    def push(self, data: bytes) -> np.ndarray:
        return self._resampler.resample_chunk(self._samples(data))

    def _samples(self, data: bytes) -> np.ndarray:
        if self.format_type in G711:
            return G711[self.format_type][np.frombuffer(data, dtype=np.uint8)]
        data = self._odd_byte + data
        whole = len(data) - len(data) % 2
        self._odd_byte = data[whole:]
        return np.frombuffer(data[:whole], dtype="<i2").astype(np.float32) / 32768
