"""An upload's 16 kHz samples while they are still being decoded.

A long upload is planned and transcribed from its start while a worker thread
decodes the rest: the first segment's text doesn't wait for the last minute of a
two-hour file to decode. Readers ask for a prefix and wait only until it exists.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

HOLD_BACK = 8000
"""Samples at the decoded end kept from readers until the decode is finished: the
decoder may still trim them (a codec's padding after the declared end)."""


def _float32_array(samples: int) -> np.ndarray:
    return np.empty(samples, np.float32)


class DecodeCancelled(Exception):
    """The request closed its audio: raised in the decoder (nobody needs the rest) and in
    a planner still reading."""


class DecodingAudio:
    """float32 mono samples, appended by one decoder thread and read by any other.

    The buffer is allocated once from the duration the container declares and only
    grows when a file runs longer: a reader's view stays valid (it keeps its own
    reference to the array it was cut from) even if the buffer is replaced later.
    """

    def __init__(self, capacity: int, hold_back: int = HOLD_BACK,
                 allocate: Callable[[int], np.ndarray] | None = None) -> None:
        """``hold_back``: 0 where the samples arrive final (``share``). ``allocate``
        makes the buffers (a preprocessing process's are shared memory)."""
        self._allocate = allocate or _float32_array
        self._data = self._allocate(max(capacity, 1))
        self._hold_back = hold_back
        self._size = 0
        self._total: int | None = None
        self._error: BaseException | None = None
        self._cancelled = False
        self._changed = threading.Condition()

    @classmethod
    def of(cls, audio: np.ndarray | DecodingAudio) -> DecodingAudio:
        """``audio`` itself, or the samples of a whole recording (not copied)."""
        if isinstance(audio, DecodingAudio):
            return audio
        whole = cls(0)
        whole._data, whole._size, whole._total = audio, audio.size, audio.size
        return whole

    # --- the decoder's side ---------------------------------------------------

    def extend(self, chunk: np.ndarray) -> None:
        if self._cancelled:
            raise DecodeCancelled
        end = self._size + chunk.size
        if end > self._data.size:
            grown = self._allocate(max(end, self._data.size * 3 // 2))
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size : end] = chunk
        with self._changed:
            self._size = end
            self._changed.notify_all()

    def share(self, buffer: np.ndarray, size: int) -> None:
        """The first ``size`` samples are in ``buffer``, written by a decoder elsewhere
        (a preprocessing process, in memory both map): instead of ``extend``."""
        with self._changed:
            self._data, self._size = buffer, size
            self._changed.notify_all()

    @property
    def buffer(self) -> np.ndarray:
        """The array the samples are written to now (replaced when it grows)."""
        return self._data

    def finish(self, total: int | None = None) -> None:
        """All samples are in; ``total`` cuts a padded tail."""
        with self._changed:
            self._total = self._size if total is None else min(total, self._size)
            self._changed.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._changed:
            self._error = error
            self._changed.notify_all()

    @property
    def error(self) -> BaseException | None:
        """Why the decode failed, if it did."""
        return self._error

    # --- the readers' side --------------------------------------------------------

    def until(self, n: int) -> np.ndarray:
        """At least the first ``n`` samples, or all of them if the audio is shorter:
        a view of everything decoded so far. Blocks while they are being decoded;
        raises the decoder's error if it failed, DecodeCancelled once closed."""
        with self._changed:
            self._changed.wait_for(lambda: self._ready(n))
            if self._cancelled:
                raise DecodeCancelled
            if self._error is not None:
                raise self._error
            return self._data[: self._published]

    def whole(self) -> np.ndarray:
        """Every sample, once the decode is finished."""
        with self._changed:
            self._changed.wait_for(lambda: self._total is not None or self._error is not None)
            if self._error is not None:
                raise self._error
            return self._data[: self._total]

    @property
    def total(self) -> int | None:
        """The number of samples, once the decode is finished."""
        return self._total

    @property
    def available(self) -> int:
        """Samples readers may have now."""
        return self._published

    @property
    def written(self) -> int:
        """Samples the decoder has written, held-back ones included."""
        return self._size

    def close(self) -> None:
        """The request is done with the audio: a decoder still running stops at its next
        chunk, and the planning thread of a request that is gone gets DecodeCancelled from
        ``until`` (instead of waiting forever, or reading on through a long file).
        ``whole`` still answers for audio that was decoded to the end."""
        with self._changed:
            self._cancelled = True
            if self._total is None and self._error is None:
                self._error = DecodeCancelled()
            self._changed.notify_all()

    @property
    def _published(self) -> int:
        if self._total is not None:
            return self._total
        return max(0, self._size - self._hold_back)

    def _ready(self, n: int) -> bool:
        return (self._total is not None or self._error is not None or self._cancelled
                or self._published >= n)
