"""Real audio for tests: speech from espeak-ng, encoded by the ffmpeg CLI.

A plain module (no fixtures) so unit, API and end-to-end tests can share it.
Both tools are required, not optional: CI installs them (see the Makefile),
and a missing tool raises ``MissingTool`` with the install command, which
fixtures turn into a failure rather than a skip.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class MissingTool(RuntimeError):
    pass


@dataclass(frozen=True)
class AudioFormat:
    """How to make one kind of upload with the ffmpeg CLI."""

    suffix: str
    args: tuple[str, ...]  # codec and muxer options, placed before the output path
    lossy: bool


# The formats OpenAI lists for uploads, plus the codec variants clients really send.
FORMATS: dict[str, AudioFormat] = {
    "wav": AudioFormat(".wav", ("-c:a", "pcm_s16le"), lossy=False),
    "flac": AudioFormat(".flac", ("-c:a", "flac"), lossy=False),
    "mp3": AudioFormat(".mp3", ("-c:a", "libmp3lame"), lossy=True),
    "ogg_vorbis": AudioFormat(".ogg", ("-c:a", "libvorbis"), lossy=True),
    "ogg_opus": AudioFormat(".opus", ("-c:a", "libopus", "-f", "ogg"), lossy=True),
    # No +faststart: the index (moov) comes last, as ffmpeg writes by default.
    "m4a": AudioFormat(".m4a", ("-c:a", "aac"), lossy=True),
    "webm": AudioFormat(".webm", ("-c:a", "libopus", "-f", "webm"), lossy=True),
    "mp4": AudioFormat(".mp4", ("-c:a", "aac", "-f", "mp4"), lossy=True),
}


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingTool(
            f"{name} is not installed; the audio tests need it "
            f"(apt-get install {name}; CI installs it via the Makefile)."
        )
    return path


def synthesize_speech(
    text: str, path: Path, *, voice: str = "en", words_per_minute: int = 150
) -> Path:
    """Speak ``text`` into a 22.05 kHz mono 16-bit WAV at ``path``."""
    espeak = require_tool("espeak-ng")
    _run([espeak, "-v", voice, "-s", str(words_per_minute), "-w", str(path), text])
    return path


def encode(
    src: Path,
    fmt: str,
    dst: Path,
    *,
    sample_rate: int | None = None,
    channels: int | None = None,
    extra_args: tuple[str, ...] = (),
) -> Path:
    """Re-encode ``src`` as ``FORMATS[fmt]`` (optionally resampled / up- or downmixed)."""
    spec = FORMATS[fmt]
    args = ["-i", str(src), "-map_metadata", "-1", *spec.args]
    if sample_rate is not None:
        args += ["-ar", str(sample_rate)]
    if channels is not None:
        args += ["-ac", str(channels)]
    ffmpeg(*args, *extra_args, str(dst))
    return dst


def video_only_mp4(dst: Path, *, seconds: float = 1.0) -> Path:
    """An mp4 with a test-pattern video stream and no audio stream."""
    ffmpeg(
        "-f", "lavfi", "-i", f"testsrc=duration={seconds}:size=64x64:rate=10",
        "-c:v", "mpeg4", str(dst),
    )  # fmt: skip
    return dst


def with_video(src: Path, dst: Path) -> Path:
    """An mp4 with a small video stream next to ``src``'s audio (AAC)."""
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=64x64:rate=10", "-i", str(src),
        "-map", "0:v", "-map", "1:a", "-shortest", "-c:v", "mpeg4", "-c:a", "aac",
        str(dst),
    )  # fmt: skip
    return dst


def flac_declaring(data: bytes, total_samples: int) -> bytes:
    """A FLAC file whose STREAMINFO claims ``total_samples`` (0 means "unknown")."""
    assert data[:4] == b"fLaC"
    fields = int.from_bytes(data[18:26], "big")
    fields = (fields & ~((1 << 36) - 1)) | total_samples
    return data[:18] + fields.to_bytes(8, "big") + data[26:]


def ffmpeg(*args: str) -> None:
    _run([require_tool("ffmpeg"), "-hide_banner", "-loglevel", "error", "-y", *args])


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr}")


REALTIME_CODECS = {"audio/pcm": ("s16le", 24_000), "audio/pcmu": ("mulaw", 8_000),
                   "audio/pcma": ("alaw", 8_000)}
"""OpenAI Realtime's input formats as ffmpeg's raw muxers and their sample rates."""


def realtime_stream(clips: list[Path], fmt: str, dst: Path, *, pause_s: float = 1.0) -> bytes:
    """The clips one after the other, ``pause_s`` of silence before, between and after
    them, as the raw bytes a Realtime client appends in ``fmt`` (``REALTIME_CODECS``)."""
    muxer, rate = REALTIME_CODECS[fmt]
    inputs = [arg for clip in clips for arg in ("-i", str(clip))]
    silence = f"anullsrc=r={rate}:cl=mono:d={pause_s}"
    graph = "".join(f"{silence}[s{i}];" for i in range(len(clips) + 1))
    graph += "".join(f"[{i}:a]aresample={rate},aformat=channel_layouts=mono[a{i}];"
                     for i in range(len(clips)))
    graph += "".join(f"[s{i}][a{i}]" for i in range(len(clips)))
    graph += f"[s{len(clips)}]concat=n={2 * len(clips) + 1}:v=0:a=1[out]"
    ffmpeg(*inputs, "-filter_complex", graph, "-map", "[out]", "-ar", str(rate), "-ac", "1",
           "-f", muxer, str(dst))
    return dst.read_bytes()
