"""Uploaded bytes -> mono float32 waveform at 16 kHz, the model's input rate.

``decode_audio`` is synchronous and CPU-bound (demuxing, decoding, resampling):
call it in a worker thread (``starlette.concurrency.run_in_threadpool`` or
``asyncio.to_thread``), never on the event loop.

Two decoders:

- soundfile (libsndfile) for PCM WAV, the most common programmatic upload: about
  twice as fast as FFmpeg there, and its frame count is exact (clamped to the
  bytes actually present).
- PyAV (FFmpeg) for everything else: mp3, m4a/aac, ogg (vorbis, opus), webm,
  flac, mp4 and whatever else FFmpeg decodes. FLAC and Ogg go here too because
  libsndfile trusts their headers (it silently drops audio beyond a FLAC
  STREAMINFO count that is too small, and crashes on one that says "unknown").

Duration limits are enforced twice on the FFmpeg path: against the duration
the container declares, before decoding, and while decoding, so a file that
understates its length (or declares none) can't exhaust memory.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np
import soundfile as sf
import soxr

from server.errors import AudioDecodeError, AudioTooLong, AudioTooShort, EmptyAudio

TARGET_SAMPLE_RATE = 16000

# Estimated durations (an mp3 without a Xing header is timed from its bitrate)
# can be off by ~10 %: only reject before decoding when the declared length is
# clearly over; the check while decoding is exact.
_DECLARED_SLACK = 1.1

# Source samples handed to soxr per call (about 1 s).
_RESAMPLE_BATCH = 1 << 15

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


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray
    """float32, mono, TARGET_SAMPLE_RATE, finite."""
    source_format: str
    """Container, short name: "wav", "mp3", "ogg", "mp4", "webm", "flac"..."""
    codec: str
    """FFmpeg's codec name: "pcm_s16le", "mp3float", "aac", "opus", "vorbis"..."""
    source_sample_rate: int
    source_channels: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / TARGET_SAMPLE_RATE


def decode_audio(
    data: bytes,
    *,
    max_duration_s: float | None = None,
    min_duration_s: float = 0.1,
) -> DecodedAudio:
    """Decode an upload held in memory. Blocking: run it in a thread.

    ``max_duration_s`` also bounds memory (decoding stops just past it); with
    None a small, highly compressed file can expand without limit.
    Raises EmptyAudio, AudioDecodeError, AudioTooShort or AudioTooLong.
    """
    if not data:
        raise EmptyAudio("The uploaded file is empty.")
    decoded = _decode_wav(data, max_duration_s) or _decode_ffmpeg(data, max_duration_s)
    _check_duration(decoded.duration_s, max_duration_s, min_duration_s)
    return decoded


# --- soundfile: PCM WAV ------------------------------------------------------


def _decode_wav(data: bytes, max_duration_s: float | None) -> DecodedAudio | None:
    """PCM WAV via libsndfile; None when the bytes are anything else."""
    # Sniff first: libsndfile would otherwise parse every upload (mp3s too, noisily).
    if data[:4] not in _WAV_MAGIC or data[8:12] != b"WAVE":
        return None
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            codec = _WAV_PCM_CODECS.get(f.subtype)
            # Every PCM sample takes at least a byte: a larger count is a bad header.
            if (
                f.format not in _SOUNDFILE_WAV_FORMATS
                or codec is None
                or f.frames * f.channels > len(data)
            ):
                return None
            if max_duration_s is not None:  # exact count: no slack
                _check_declared(f.frames / f.samplerate, max_duration_s, slack=1.0)
            frames = f.read(dtype="float32", always_2d=True)
            rate, channels = f.samplerate, f.channels
    except sf.SoundFileError:
        return None  # FFmpeg gets its turn and names the problem
    # A mono file's one column is used as it is: a long upload is held once, not twice.
    mono = frames[:, 0] if channels == 1 else frames.mean(axis=1, dtype=np.float32)
    return _result(_resample(_sanitize(mono), rate), "wav", codec, rate, channels)


# --- PyAV: everything FFmpeg decodes ------------------------------------------


def _decode_ffmpeg(data: bytes, max_duration_s: float | None) -> DecodedAudio:
    try:
        container = av.open(io.BytesIO(data), metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise _decode_error(exc) from exc
    with container:
        stream = container.streams.best("audio")
        if stream is None:
            raise AudioDecodeError(
                "Could not decode the uploaded file as audio: it has no audio stream."
            )
        declared_s = _declared_duration(container, stream)
        if max_duration_s is not None and declared_s is not None:
            _check_declared(declared_s, max_duration_s)
        samples = _decode_stream(container, stream, max_duration_s, declared_s)
        ctx = stream.codec_context
        return _result(
            samples,
            _format_name(container.format.name),
            ctx.name,
            ctx.sample_rate,
            ctx.layout.nb_channels,
        )


def _declared_duration(container, stream) -> float | None:
    """The audio stream's own duration, else the container's (which may cover video)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _decode_stream(container, stream, max_duration_s, declared_s) -> np.ndarray:
    """Decode, mix to mono and resample frame by frame into one growing buffer, sized
    from the declared duration: a long file's 16 kHz samples exist once, not as
    chunks plus their concatenation."""
    resampler = _StreamResampler()
    out = _SampleBuffer(int((declared_s or 60.0) * TARGET_SAMPLE_RATE * 1.02) + 1024)
    decoded_s = last_frame_s = 0.0
    for frame in _frames(container, stream):
        # Checked before adding the frame: memory stays within the limit plus one
        # frame, and the exact check after trimming decides.
        if max_duration_s is not None and decoded_s > max_duration_s:
            raise AudioTooLong(
                f"Audio is longer than the maximum of {_seconds(max_duration_s)} s."
            )
        last_frame_s = frame.samples / frame.sample_rate
        decoded_s += last_frame_s
        out.extend(resampler.feed(_frame_to_mono(frame), frame.sample_rate))
    out.extend(resampler.flush())
    return _trim_padding(out.samples(), decoded_s, declared_s, last_frame_s)


class _SampleBuffer:
    """Float32 samples appended in place; grows by half when a file runs longer than
    it declared."""

    def __init__(self, capacity: int) -> None:
        self._data = np.empty(max(capacity, 1), np.float32)
        self._size = 0

    def extend(self, chunks: list[np.ndarray]) -> None:
        for chunk in chunks:
            end = self._size + chunk.size
            if end > self._data.size:
                grown = np.empty(max(end, self._data.size * 3 // 2), np.float32)
                grown[: self._size] = self._data[: self._size]
                self._data = grown
            self._data[self._size : end] = chunk
            self._size = end

    def samples(self) -> np.ndarray:
        # A view: trimming the unused tail would copy the whole recording.
        return self._data[: self._size]


def _frames(container, stream) -> Iterator[av.AudioFrame]:
    """Decoded frames. As FFmpeg's CLI does, a packet that fails to decode is
    skipped and a demuxer error ends the stream (a truncated recording keeps the
    audio it has); a file where failures are the majority is an error."""
    good = bad = 0
    first_error: av.FFmpegError | None = None
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
            frames = packet.decode()
        except av.FFmpegError as exc:
            bad, first_error = bad + 1, first_error or exc
            continue
        good += 1
        yield from frames
    if first_error is not None and bad >= good:
        raise _decode_error(first_error)


def _frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """Any FFmpeg sample format -> float32 in [-1, 1], channels averaged."""
    channels = frame.layout.nb_channels
    x = frame.to_ndarray()
    if not frame.format.is_planar:
        x = x.reshape(-1, channels).T  # packed arrives as one interleaved row
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


def _trim_padding(samples, decoded_s, declared_s, last_frame_s) -> np.ndarray:
    """Cut codec padding past the declared end (AAC fills its last 1024-sample frame;
    the MP4 edit list says where the audio really ends). Only within one frame:
    a larger excess means the declared length is wrong, not padding."""
    if declared_s is None or not 0 < decoded_s - declared_s <= last_frame_s:
        return samples
    return samples[: round(declared_s * TARGET_SAMPLE_RATE)]


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


def _resample(x: np.ndarray, rate: int) -> np.ndarray:
    if rate == TARGET_SAMPLE_RATE:
        return x
    return soxr.resample(x, rate, TARGET_SAMPLE_RATE, quality="HQ")


def _sanitize(x: np.ndarray) -> np.ndarray:
    """NaN/Inf -> 0 (float files can carry them; one would smear across the
    resampler's filter). Loud but finite audio is left alone: no clipping."""
    if np.isfinite(x).all():
        return x
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def _result(samples, source_format, codec, rate, channels) -> DecodedAudio:
    # Resampling values near float32's limit can overflow: keep the promise "finite".
    samples = np.ascontiguousarray(_sanitize(samples), dtype=np.float32)
    return DecodedAudio(samples, source_format, codec, int(rate), int(channels))


def _check_declared(
    declared_s: float, max_duration_s: float, slack: float = _DECLARED_SLACK
) -> None:
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


def _decode_error(exc: av.FFmpegError) -> AudioDecodeError:
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, av.error.EOFError):
        reason = "the file ends unexpectedly (truncated upload?)"
    return AudioDecodeError(f"Could not decode the uploaded file as audio: {reason}.")


def _format_name(name: str) -> str:
    return _FORMAT_NAMES.get(name, name.split(",")[0])


def _seconds(x: float) -> str:
    """0.05 -> "0.05", 60.0 -> "60", 2.719 -> "2.72"."""
    return f"{x:.2f}".rstrip("0").rstrip(".")
