"""Uploaded bytes -> mono float32 waveform at 16 kHz, the model's input rate.

``decode_audio`` is synchronous and CPU-bound (demuxing, decoding, resampling):
call it in a worker thread (``starlette.concurrency.run_in_threadpool`` or
``asyncio.to_thread``), never on the event loop. Given a ``head_s``, it returns
after that much and a thread of its own decodes the rest (``progressive``).

Two decoders:

- soundfile (libsndfile) for PCM WAV, the most common programmatic upload: about
  twice as fast as FFmpeg there, and its frame count is exact (clamped to the
  bytes actually present).
- PyAV (FFmpeg) for everything else: mp3, m4a/aac, ogg (vorbis, opus), webm,
  flac, mp4 and whatever else FFmpeg decodes. FLAC and Ogg go here too because
  libsndfile trusts their headers (it silently drops audio beyond a FLAC
  STREAMINFO count that is too small, and crashes on one that says "unknown").
  Opus's packets, demuxed by FFmpeg, are decoded by libopus at 16 kHz
  (``granite_speech_server.audio.opus``): no resampling up to 48 kHz and back.

Duration limits are enforced twice on the FFmpeg path: against the duration
the container declares, before decoding, and while decoding, so a file that
understates its length (or declares none) can't exhaust memory.
"""

from __future__ import annotations

import io
import logging
import math
import mmap
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import av
from av.audio.frame import format_dtypes
import numpy as np
import soundfile as sf
import soxr

from granite_speech_server.audio.opus import RATE as OPUS_RATE
from granite_speech_server.audio.opus import OpusDecodeError, OpusDecoder
from granite_speech_server.audio.progressive import DecodeCancelled, DecodingAudio
from granite_speech_server.errors import (
    AudioDecodeError,
    AudioTooLong,
    AudioTooShort,
    EmptyAudio,
    ServerError,
)
from granite_speech_server.priority import start_thread

if TYPE_CHECKING:
    from granite_speech_server.audio.segment import PlannedSegment

log = logging.getLogger(__name__)

TARGET_SAMPLE_RATE = 16000

# Estimated durations (an mp3 without a Xing header is timed from its bitrate)
# can be off by ~10 %: only reject before decoding when the declared length is
# clearly over; the check while decoding is exact.
_DECLARED_SLACK = 1.1

# Source samples handed to soxr per call (about 1 s).
_RESAMPLE_BATCH = 1 << 15

_WAV_BLOCK = 1 << 16
"""WAV frames read per call (4 s at 16 kHz)."""

# libsndfile subtypes of WAV with a fixed size per sample, named as FFmpeg names
# the codec, so both paths report the same codec.
_WAV_PCM_CODECS = {
    "PCM_U8": "pcm_u8",
    "PCM_16": "pcm_s16le",
    "PCM_24": "pcm_s24le",
    "PCM_32": "pcm_s32le",
    "FLOAT": "pcm_f32le",
    "DOUBLE": "pcm_f64le",
    "ULAW": "pcm_mulaw",
    "ALAW": "pcm_alaw",
}
_SOUNDFILE_WAV_FORMATS = {"WAV", "WAVEX", "RF64"}
_WAV_MAGIC = {b"RIFF", b"RF64"}

# FFmpeg names some demuxers after a family of formats; keep the name clients know.
_FORMAT_NAMES = {"mov,mp4,m4a,3gp,3g2,mj2": "mp4", "matroska,webm": "webm"}


HEAD_S = 20.0
"""Decoded before the request goes on; the rest decodes in a thread while the plan and
the engine start on the head. Covers the plan's first window (10 s, with the VAD's
look-ahead), and most uploads whole: their errors are found before any answer."""


@dataclass(frozen=True)
class DecodedAudio:
    audio: DecodingAudio
    """float32, mono, TARGET_SAMPLE_RATE, finite; possibly still decoding."""
    source_format: str
    """Container, short name: "wav", "mp3", "ogg", "mp4", "webm", "flac"..."""
    codec: str
    """FFmpeg's codec name: "pcm_s16le", "mp3float", "aac", "opus", "vorbis"..."""
    source_sample_rate: int
    source_channels: int
    declared_s: float | None = None
    """The duration the file states up front (exact for WAV)."""
    plan: AsyncIterator[list[PlannedSegment]] | None = None
    """The segment plan, where a preprocessing process makes it beside the decoding
    (``granite_speech_server.preprocess``); None: the transcriber plans."""

    @property
    def samples(self) -> np.ndarray:
        """All of the samples (waits for the decode to finish)."""
        return self.audio.whole()

    @property
    def duration_s(self) -> float:
        return len(self.samples) / TARGET_SAMPLE_RATE

    @property
    def expected_duration_s(self) -> float:
        """Exact once decoded, the declared duration before."""
        total = self.audio.total
        return total / TARGET_SAMPLE_RATE if total is not None else self.declared_s or 0.0


def decode_audio(
    data: bytes | mmap.mmap,
    *,
    max_duration_s: float | None = None,
    min_duration_s: float = 0.1,
    head_s: float = math.inf,
    rest_niceness: int = 0,
    allocate: Callable[[int], np.ndarray] | None = None,
) -> DecodedAudio:
    """Decode an upload held in memory. Blocking: run it in a thread.

    Decodes ``head_s`` seconds here; when the file declares its duration and is
    longer, a thread decodes the rest into ``DecodedAudio.audio`` and raises its
    errors to the readers (at ``rest_niceness``, see ``granite_speech_server.priority``).
    ``max_duration_s`` also bounds memory (decoding stops just past it); with None a
    small, highly compressed file can expand without limit. ``allocate`` makes the
    sample buffers (``DecodingAudio``).
    Raises EmptyAudio, AudioDecodeError, AudioTooShort or AudioTooLong.
    """
    if not data:
        raise EmptyAudio("The uploaded file is empty.")
    source = _WavSource.open(data) or _FfmpegSource.open(data, max_duration_s)
    declared_s = source.declared_s
    if max_duration_s is not None and declared_s is not None:
        try:
            _check_declared(declared_s, max_duration_s, source.slack)
        except AudioTooLong:
            source.close()
            raise
    decoded = DecodedAudio(DecodingAudio(buffer_capacity(declared_s), allocate=allocate),
                           source.format, source.codec, source.rate, source.channels,
                           declared_s)
    limits = (max_duration_s, min_duration_s)
    chunks = source.chunks()
    # Without a declared duration the admission check has nothing to go by: decode it all.
    head = head_s if declared_s is not None else math.inf
    if _decode_into(decoded.audio, chunks, source, limits, until=head * TARGET_SAMPLE_RATE):
        return decoded
    start_thread(_decode_rest, decoded.audio, chunks, source, limits, name="decode",
                 niceness=rest_niceness)
    return decoded


def buffer_capacity(declared_s: float | None) -> int:
    """Samples to allocate for a file that declares ``declared_s`` (or doesn't)."""
    return int((declared_s or 60.0) * TARGET_SAMPLE_RATE * 1.02) + 1024


def _decode_into(audio: DecodingAudio, chunks: Iterator[np.ndarray], source: _Source,
                 limits: tuple[float | None, float], until: float) -> bool:
    """Decode until ``audio`` holds ``until`` samples (False) or the file ends (True)."""
    try:
        for chunk in chunks:
            audio.extend(_sanitize(chunk))
            if audio.available >= until:
                return False
    except BaseException:
        chunks.close()
        raise
    total = source.length(audio.written)
    _check_duration(total / TARGET_SAMPLE_RATE, *limits)  # before any reader sees the end
    audio.finish(total)
    return True


def _decode_rest(audio: DecodingAudio, chunks: Iterator[np.ndarray], source: _Source,
                 limits: tuple[float | None, float]) -> None:
    try:
        _decode_into(audio, chunks, source, limits, until=math.inf)
    except DecodeCancelled:
        pass
    except ServerError as exc:  # an upload's fault, found late: the request's answer
        audio.fail(exc)
    except Exception as exc:  # noqa: BLE001 - a reader waits for this thread: never leave it
        log.exception("Decoding failed: %s", type(exc).__name__)
        audio.fail(AudioDecodeError("Could not decode the uploaded file as audio."))


class _Source(Protocol):
    format: str
    codec: str
    rate: int
    channels: int
    declared_s: float | None
    slack: float
    """How far past the limit the declared duration may be before it is refused."""

    def close(self) -> None:
        """Close the file without decoding it."""

    def chunks(self) -> Iterator[np.ndarray]:
        """16 kHz mono float32 chunks, in order; the file is closed at the end."""

    def length(self, decoded: int) -> int:
        """The recording's length, given how many samples the chunks held."""


# --- soundfile: PCM WAV ------------------------------------------------------


class _WavSource:
    """PCM WAV via libsndfile."""

    format = "wav"
    slack = 1.0  # the frame count is exact

    def __init__(self, file: sf.SoundFile, codec: str) -> None:
        self._file, self.codec = file, codec
        self.rate, self.channels = file.samplerate, file.channels
        self.declared_s = file.frames / file.samplerate  # exact

    @classmethod
    def open(cls, data: bytes) -> _WavSource | None:
        """None when the bytes are anything else."""
        # Sniff first: libsndfile would otherwise parse every upload (mp3s too, noisily).
        if data[:4] not in _WAV_MAGIC or data[8:12] != b"WAVE":
            return None
        try:
            file = sf.SoundFile(_reader(data))
        except sf.SoundFileError:
            return None  # FFmpeg gets its turn and names the problem
        codec = _WAV_PCM_CODECS.get(file.subtype)
        # Every PCM sample takes at least a byte: a larger count is a bad header.
        if (file.format not in _SOUNDFILE_WAV_FORMATS or codec is None
                or file.frames * file.channels > len(data)):
            file.close()
            return None
        return cls(file, codec)

    def close(self) -> None:
        self._file.close()

    def chunks(self) -> Iterator[np.ndarray]:
        resampler = _StreamResampler()
        with self._file as file:
            try:
                for block in file.blocks(_WAV_BLOCK, dtype="float32", always_2d=True):
                    # A mono block's one column is used as it is.
                    mono = block[:, 0] if self.channels == 1 else \
                        block.mean(axis=1, dtype=np.float32)
                    yield from resampler.feed(mono, self.rate)
            except sf.SoundFileError as exc:
                raise AudioDecodeError(
                    f"Could not decode the uploaded file as audio: {exc}.") from exc
        yield from resampler.flush()

    def length(self, decoded: int) -> int:
        return decoded


# --- PyAV: everything FFmpeg decodes ------------------------------------------


class _FfmpegSource:
    slack = _DECLARED_SLACK

    def __init__(self, container, stream, max_duration_s: float | None) -> None:
        self._container, self._stream = container, stream
        self._max_duration_s = max_duration_s
        ctx = stream.codec_context
        self.format = _format_name(container.format.name)
        self.codec, self.rate, self.channels = ctx.name, ctx.sample_rate, ctx.layout.nb_channels
        self.declared_s = _declared_duration(container, stream)
        self._decoded_s = self._last_frame_s = 0.0
        self._decode = _decoder(stream)

    @classmethod
    def open(cls, data: bytes, max_duration_s: float | None) -> _FfmpegSource:
        try:
            container = av.open(_reader(data), metadata_errors="ignore")
        except av.FFmpegError as exc:
            raise _decode_error(exc) from exc
        stream = container.streams.best("audio")
        if stream is None:
            container.close()
            raise AudioDecodeError(
                "Could not decode the uploaded file as audio: it has no audio stream."
            )
        return cls(container, stream, max_duration_s)

    def close(self) -> None:
        self._container.close()

    def chunks(self) -> Iterator[np.ndarray]:
        """Decoded, mixed to mono and resampled frame by frame."""
        resampler = _StreamResampler()
        limit = self._max_duration_s
        with self._container:
            for samples, rate in _decoded(self._container, self._stream, self._decode):
                # Checked before adding the frame: memory stays within the limit plus
                # one frame, and the exact check after trimming decides.
                if limit is not None and self._decoded_s > limit:
                    raise AudioTooLong(
                        f"Audio is longer than the maximum of {_seconds(limit)} s."
                    )
                self._last_frame_s = len(samples) / rate
                self._decoded_s += self._last_frame_s
                yield from resampler.feed(samples, rate)
        yield from resampler.flush()

    def length(self, decoded: int) -> int:
        """Cut codec padding past the declared end (AAC fills its last 1024-sample frame;
        the MP4 edit list says where the audio really ends). Only within one frame:
        a larger excess means the declared length is wrong, not padding."""
        declared_s = self.declared_s
        if declared_s is None or not 0 < self._decoded_s - declared_s <= self._last_frame_s:
            return decoded
        return min(decoded, round(declared_s * TARGET_SAMPLE_RATE))


def _declared_duration(container, stream) -> float | None:
    """The audio stream's own duration, else the container's (which may cover video)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


Decoder = Callable[[av.Packet], Iterable[tuple[np.ndarray, int]]]
"""A packet -> its audio, as (mono float32 samples, their sample rate) pieces."""


def _decoder(stream) -> Decoder:
    """libopus at 16 kHz for Opus (``audio.opus``), FFmpeg for the rest."""
    context = stream.codec_context
    opus = OpusDecoder.for_stream(context.extradata) if context.name == "opus" else None
    if opus is not None:
        return lambda packet: [(opus.decode(packet), OPUS_RATE)]
    return lambda packet: [(_frame_to_mono(frame), frame.sample_rate)
                           for frame in context.decode(packet)]


def _decoded(container, stream, decode: Decoder) -> Iterator[tuple[np.ndarray, int]]:
    """The stream's audio, packet by packet. As FFmpeg's CLI does, a packet that fails to
    decode is skipped and a demuxer error ends the stream (a truncated recording keeps
    the audio it has); a file where failures are the majority is an error."""
    good = bad = 0
    first_error: av.FFmpegError | OpusDecodeError | None = None
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.FFmpegError as exc:
            bad, first_error = bad + 1, first_error or exc
            break  # the demuxer can't go on
        try:
            pieces = decode(packet)
        except (av.FFmpegError, OpusDecodeError) as exc:
            bad, first_error = bad + 1, first_error or exc
            continue
        good += 1
        yield from pieces
    if first_error is not None and bad >= good:
        raise _decode_error(first_error)


def _frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """Any FFmpeg sample format -> float32 in [-1, 1], channels averaged."""
    channels = frame.layout.nb_channels
    # Views of the frame's planes: AudioFrame.to_ndarray stacks copies of them, which
    # took 4x as long as this for a 20 ms Opus frame (~10 us, 50 frames a second).
    dtype = np.dtype(format_dtypes[frame.format.name])
    if frame.format.is_planar:
        planes = [np.frombuffer(plane, dtype, frame.samples) for plane in frame.planes]
        x = planes[0][None] if channels == 1 else np.stack(planes)
    else:  # packed: one interleaved plane
        x = np.frombuffer(frame.planes[0], dtype, frame.samples * channels)
        x = x.reshape(-1, channels).T
    x = _to_float32(x)
    return x.mean(axis=0, dtype=np.float32) if channels > 1 else x[0]


def _to_float32(x: np.ndarray) -> np.ndarray:
    if x.dtype.kind == "f":
        return x.astype(np.float32, copy=False)
    bits = x.dtype.itemsize * 8
    scale = np.float32(2.0 ** (bits - 1))
    if x.dtype.kind == "u":  # unsigned PCM is centred on half its range
        return (x.astype(np.float32) - scale) / scale
    return x.astype(np.float32) / scale


class _StreamResampler:
    """soxr's streaming resampler: bounded memory, same output as one-shot resampling.

    Input is batched (a 576-sample mp3 frame per call spends more time in call
    overhead than in filtering), and the stream restarts if the sample rate
    changes mid-file (some mp3 and HE-AAC files do).
    """

    def __init__(self) -> None:
        self._rate: int | None = None
        self._stream: soxr.ResampleStream | None = None
        self._pending: list[np.ndarray] = []
        self._pending_samples = 0

    def feed(self, x: np.ndarray, rate: int) -> list[np.ndarray]:
        out = self.flush() if rate != self._rate else []
        if self._rate is None:
            self._start(rate)
        self._pending.append(x)
        self._pending_samples += len(x)
        if self._pending_samples >= _RESAMPLE_BATCH:
            out.append(self._process(last=False))
        return out

    def flush(self) -> list[np.ndarray]:
        if self._rate is None:
            return []
        out = self._process(last=True)
        self._rate = self._stream = None
        return [out]

    def _start(self, rate: int) -> None:
        self._rate = rate
        if rate != TARGET_SAMPLE_RATE:
            self._stream = soxr.ResampleStream(
                rate, TARGET_SAMPLE_RATE, 1, dtype="float32", quality="HQ"
            )

    def _process(self, *, last: bool) -> np.ndarray:
        x = _sanitize(np.concatenate(self._pending or [np.zeros(0, np.float32)]))
        self._pending, self._pending_samples = [], 0
        return x if self._stream is None else self._stream.resample_chunk(x, last=last)


# --- shared --------------------------------------------------------------------


def _reader(data: bytes | mmap.mmap):
    """A file over ``data`` from its start; a memory map is read in place (a
    preprocessing process's upload, ``granite_speech_server.preprocess.shared``)."""
    if isinstance(data, mmap.mmap):
        data.seek(0)
        return data
    return io.BytesIO(data)


def _sanitize(x: np.ndarray) -> np.ndarray:
    """NaN/Inf -> 0 (float files can carry them; one would smear across the
    resampler's filter). Loud but finite audio is left alone: no clipping."""
    if np.isfinite(x).all():
        return x
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def _check_declared(declared_s: float, max_duration_s: float, slack: float) -> None:
    if declared_s > max_duration_s * slack:
        raise AudioTooLong(
            f"Audio is {_seconds(declared_s)} s long; "
            f"the maximum is {_seconds(max_duration_s)} s."
        )


def _check_duration(duration_s, max_duration_s, min_duration_s) -> None:
    if duration_s == 0:
        raise EmptyAudio("The audio contains no samples.")
    if max_duration_s is not None and duration_s > max_duration_s:
        raise AudioTooLong(
            f"Audio is {_seconds(duration_s)} s long; "
            f"the maximum is {_seconds(max_duration_s)} s."
        )
    if duration_s < min_duration_s:
        raise AudioTooShort(
            f"Audio is {_seconds(duration_s)} s long; "
            f"the minimum is {_seconds(min_duration_s)} s."
        )


def _decode_error(exc: av.FFmpegError | OpusDecodeError) -> AudioDecodeError:
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, av.error.EOFError):
        reason = "the file ends unexpectedly (truncated upload?)"
    return AudioDecodeError(f"Could not decode the uploaded file as audio: {reason}.")


def _format_name(name: str) -> str:
    return _FORMAT_NAMES.get(name, name.split(",")[0])


def _seconds(x: float) -> str:
    """0.05 -> "0.05", 60.0 -> "60", 2.719 -> "2.72"."""
    return f"{x:.2f}".rstrip("0").rstrip(".")
