"""Sample buffers in memory both processes map: a preprocessing process decodes into
one and the API process reads the very same pages. No copy crosses the pipe, and a
recording is held once however many processes look at it.

Uploads go over the same way (``UploadSpool``). The memory is an anonymous file
(``memfd_create``), not ``/dev/shm``: containers get a 64 MB ``/dev/shm`` by default,
less than one long upload. Its descriptor goes over the pipe (``SCM_RIGHTS``); the
memory is freed when both processes dropped their mappings.
"""

from __future__ import annotations

import io
import mmap
import os
import threading

import numpy as np

SAMPLE_BYTES = np.dtype(np.float32).itemsize
UPLOAD_MEMORY_NAME = "granite-speech-upload"
"""What an upload's memfd is called (``/proc/<pid>/fd`` shows ``/memfd:<name>``)."""


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


class UploadSpool(io.FileIO):
    """An upload, spooled as it arrives into memory a preprocessing process can map: the
    audio routes' multipart parser writes file parts here (``api.upload_limit``), and
    the process gets the descriptor, so the upload is never copied (a 19 MB WAV was
    copied twice, ~20 ms before the first text of its stream)."""

    _rolled = False
    """What Starlette's UploadFile reads to tell a spool in memory, which it writes on the
    event loop, from one on disk, which it writes through the thread pool (64 KB a hop)."""

    def __init__(self) -> None:
        super().__init__(os.memfd_create(UPLOAD_MEMORY_NAME, os.MFD_CLOEXEC), "w+")

    def write(self, data) -> int:
        view = memoryview(data)
        while view:  # a raw write may take less than it is given
            view = view[super().write(view):]
        return len(data)

    @property
    def size(self) -> int:
        return os.fstat(self.fileno()).st_size

    def share(self) -> int:
        """A new descriptor of the spool, for another process to map and close."""
        return os.dup(self.fileno())

    def mapped(self) -> bytes | mmap.mmap:
        """The spool's bytes, read-only and in place, for this process to decode."""
        return map_bytes(self.share(), self.size)


def map_bytes(fd: int, size: int) -> bytes | mmap.mmap:
    """What ``UploadSpool.share`` shared, read-only (the descriptor is closed)."""
    try:
        return mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else b""
    finally:
        os.close(fd)
