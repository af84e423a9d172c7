"""A session's input audio at 16 kHz, held only as long as a turn may still need it."""

from __future__ import annotations

import numpy as np


class StreamBuffer:
    """Positions are samples since the session began. ``committed``: where the audio no
    item has taken (nor the VAD passed over) begins; ``end``: where the stream is."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._start = 0
        """Position of the first held sample."""
        self.end = 0
        self.committed = 0

    @property
    def uncommitted(self) -> int:
        return self.end - self.committed

    def append(self, samples: np.ndarray) -> None:
        if samples.size:
            self._chunks.append(samples)
            self.end += samples.size

    def take(self, start: int, end: int) -> np.ndarray:
        """A copy of ``[start, end)``, which must still be held."""
        if start < self._start or end > self.end:
            raise ValueError(f"[{start}, {end}) is not held ([{self._start}, {self.end}))")
        held = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        self._chunks = [held] if held.size else []
        return held[start - self._start : end - self._start].copy()

    def forget_before(self, position: int) -> None:
        """Drops whole chunks that end at or before ``position``."""
        while self._chunks and self._start + self._chunks[0].size <= position:
            self._start += self._chunks.pop(0).size

    def clear(self) -> None:
        self.committed = self.end
        self.forget_before(self.end)
