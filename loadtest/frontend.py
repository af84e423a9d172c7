"""Audio front-end micro-benchmark: decode + resample + log-mel features, in audio seconds
per CPU second, for wav, mp3 and ogg/opus; beside the ffmpeg command line decoding and
resampling the same files (no features: ffmpeg has none to compute).

    python -m loadtest.frontend --seconds 300 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtest.corpus import encode
from loadtest.requirements import CORPUS_TOOLS, require
from granite_speech_server.audio.decode import decode_audio
from granite_speech_server.audio.features import log_mel_features
from tools.long_audio import long_recording
from tools.speech_corpus import SAMPLE_RATE


def cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def ffmpeg_cpu_seconds(path: Path) -> float:
    """CPU time (user + sys) of ffmpeg decoding to 16 kHz mono float, from rusage."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-threads", "1", "-i",
                    str(path), "-ac", "1", "-ar", "16000", "-f", "f32le", "-y", "/dev/null"],
                   check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/frontend.json"))
    args = parser.parse_args(argv)
    require("loadtest.frontend", commands=CORPUS_TOOLS)

    import torch

    torch.set_num_threads(1)  # per-core numbers, like ffmpeg -threads 1
    samples, _ = long_recording(args.seconds, distinct=12)
    seconds = samples.size / SAMPLE_RATE
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in (".wav", ".mp3", ".ogg"):
            data = encode(samples, suffix)
            path = Path(tmp) / f"audio{suffix}"
            path.write_bytes(data)
            decode = min(cpu_seconds(lambda: decode_audio(data)) for _ in range(args.repeat))
            audio = decode_audio(data).samples
            features = min(cpu_seconds(lambda: log_mel_features(audio))
                           for _ in range(args.repeat))
            ffmpeg = min(ffmpeg_cpu_seconds(path) for _ in range(args.repeat))
            rows.append({"format": suffix[1:], "audio_seconds": round(seconds, 1),
                         "decode_resample_x": round(seconds / decode),
                         "features_x": round(seconds / features),
                         "decode_resample_features_x": round(seconds / (decode + features)),
                         "ffmpeg_cli_decode_resample_x": round(seconds / ffmpeg)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(f"{'format':7} {'decode+resample':>16} {'features':>9} {'all':>7} {'ffmpeg CLI':>11}"
          "   (audio seconds per CPU second)")
    for r in rows:
        print(f"{r['format']:7} {r['decode_resample_x']:16} {r['features_x']:9} "
              f"{r['decode_resample_features_x']:7} {r['ffmpeg_cli_decode_resample_x']:11}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
