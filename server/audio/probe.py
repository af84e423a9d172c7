"""Name an upload's container and codec, for labelling the ones that failed to decode.

Only called after ``decode_audio`` refused an upload, so it can afford to open
the file a second time (FFmpeg reads just the headers). Names are FFmpeg's, as
``DecodedAudio`` reports them; ``unknown`` when FFmpeg can't tell.
"""

from __future__ import annotations

import mmap

import av

from granite_speech_server.audio.decode import _format_name, _reader

UNKNOWN = "unknown"


def probe_format(data: bytes | mmap.mmap) -> tuple[str, str]:
    """(container, codec) of an upload; blocking: run it in a thread."""
    try:
        with av.open(_reader(data), metadata_errors="ignore") as container:
            fmt = _format_name(container.format.name)
            stream = container.streams.best("audio")
            codec = stream.codec_context.name if stream is not None else "none"
            return fmt, codec or UNKNOWN
    except (av.FFmpegError, ValueError, OSError):
        return UNKNOWN, UNKNOWN
