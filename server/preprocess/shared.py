"""Sample buffers in memory both processes map: a preprocessing process decodes into
one and the API process reads the very same pages. No copy crosses the pipe, and a
recording is held once however many processes look at it.

Uploads go over the same way. The memory is an anonymous file (``memfd_create``), not
``/dev/shm``: containers
get a 64 MB ``/dev/shm`` by default, less than one long upload. Its descriptor goes
over the pipe (``SCM_RIGHTS``); the memory is freed when both processes dropped their
mappings.
"""

from __future__ import annotations

import mmap
import os
import threading

import numpy as np

SAMPLE_BYTES = np.dtype(np.float32).itemsize


class SharedBuffers:
    """A job's sample buffers, made in the preprocessing process (``allocate``, for its
    ``DecodingAudio``). The newest one's descriptor is kept until ``hand_over``; one
    replaced before that (a file that ran longer than it said) is closed unsent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._unsent: tuple[np.ndarray, int] | None = None

    def allocate(self, samples: int) -> np.ndarray:
        fd = os.memfd_create("granite-speech-audio", os.MFD_CLOEXEC)
        os.ftruncate(fd, samples * SAMPLE_BYTES)
        buffer = np.frombuffer(mmap.mmap(fd, samples * SAMPLE_BYTES), np.float32)
        with self._lock:
            self._close_unsent()
            self._unsent = (buffer, fd)
        return buffer

    def hand_over(self, buffer: np.ndarray) -> int | None:
        """The descriptor of ``buffer`` if it wasn't handed over yet (the caller sends
        and closes it), else None."""
        with self._lock:
            if self._unsent is None or self._unsent[0] is not buffer:
                return None
            fd, self._unsent = self._unsent[1], None
            return fd

    def close(self) -> None:
        with self._lock:
            self._close_unsent()

    def _close_unsent(self) -> None:
        if self._unsent is not None:
            os.close(self._unsent[1])
            self._unsent = None


def map_buffer(fd: int, samples: int) -> np.ndarray:
    """A received buffer, read-only (the descriptor is closed: the mapping holds it)."""
    try:
        return np.frombuffer(mmap.mmap(fd, samples * SAMPLE_BYTES, prot=mmap.PROT_READ),
                             np.float32)
    finally:
        os.close(fd)


def share_bytes(data: bytes) -> int:
    """A new descriptor of memory holding ``data``, for the other process to map (an
    upload: through the pipe, 19 MB took ~60 ms of pickling and copying)."""
    fd = os.memfd_create("granite-speech-upload", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as memory:
            memory.write(data)
    except BaseException:
        os.close(fd)
        raise
    return fd


def map_bytes(fd: int, size: int) -> bytes | mmap.mmap:
    """What ``share_bytes`` shared, read-only (the descriptor is closed)."""
    try:
        return mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else b""
    finally:
        os.close(fd)
