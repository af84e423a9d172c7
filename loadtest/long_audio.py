"""Long-audio benchmark: one 10-minute recording, streamed and not, through this server
and through vLLM's own /v1/audio/transcriptions, one after the other on the same machine.

Records time to first text delta and total time (streamed and plain; the median of
``--repeat`` runs after two untimed ones), and the WER of each transcript against the
recording's known words.

    python -m loadtest.long_audio --model tests/fixtures/tiny-granite-speech --seconds 600
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from loadtest.requirements import SYNTHESIZERS, require
from loadtest.servers import our_command, running, vllm_command
from tools.long_audio import long_recording
from tools.speech_corpus import SAMPLE_RATE, wav_bytes, word_error_rate


@dataclass
class Run:
    server: str
    mode: str
    first_delta_s: float | None
    total_s: float
    wer: float


def first_text(line: str) -> str:
    """Text carried by one SSE data line: ours (transcript.text.delta) or vLLM's chunks."""
    if not line.startswith("data: ") or line == "data: [DONE]":
        return ""
    event = json.loads(line[6:])
    if event.get("type") == "transcript.text.delta":
        return event["delta"]
    choices = event.get("choices") or [{}]
    return (choices[0].get("delta") or {}).get("content") or ""


def streamed(url: str, model: str, audio: bytes) -> tuple[float | None, float, str]:
    start = time.perf_counter()
    first, pieces = None, []
    with httpx.stream("POST", f"{url}/v1/audio/transcriptions", timeout=3600,
                      files={"file": ("long.wav", audio)},
                      data={"model": model, "stream": "true"}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if text := first_text(line):
                first = first or time.perf_counter() - start
                pieces.append(text)
    return first, time.perf_counter() - start, "".join(pieces)


def plain(url: str, model: str, audio: bytes) -> tuple[float, str]:
    start = time.perf_counter()
    response = httpx.post(f"{url}/v1/audio/transcriptions", timeout=3600,
                          files={"file": ("long.wav", audio)}, data={"model": model})
    response.raise_for_status()
    return time.perf_counter() - start, response.json()["text"]


def measure(name: str, url: str, model: str, audio: bytes, reference: str,
            repeat: int) -> list[Run]:
    """Each mode ``repeat`` times; the run with the median total stands for it."""
    streams, plains = [], []
    for _ in range(repeat):
        first, total, text = streamed(url, model, audio)
        streams.append(Run(name, "stream", first, total, word_error_rate([reference], [text])))
        total, text = plain(url, model, audio)
        plains.append(Run(name, "plain", None, total, word_error_rate([reference], [text])))
    for run in streams + plains:
        first = f"{run.first_delta_s:.2f}" if run.first_delta_s is not None else "-"
        print(f"  {run.server} {run.mode}: first {first} s, total {run.total_s:.2f} s", flush=True)
    return [median_run(streams), median_run(plains)]


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda run: run.total_s)[len(runs) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tests/fixtures/tiny-granite-speech")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed runs per server and mode (the median is reported)")
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/long_audio.json"))
    args = parser.parse_args(argv)
    require("loadtest.long_audio", commands=SYNTHESIZERS)

    samples, placed = long_recording(args.seconds)
    audio = wav_bytes(samples)
    reference = " ".join(p.text for p in placed)
    served_name = Path(args.model).name if Path(args.model).is_dir() else args.model
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    for name, command, ready in [("granite-speech-server", our_command, "/ready"),
                                 ("vllm", vllm_command, "/health")]:
        log = args.out.with_name(f"{name}.log")
        with running(command(args.model, args.port, []), ready, args.port, log) as proc:
            model = args.model if name == "vllm" else served_name
            # Untimed passes, plain and streamed: both engines meet their batch shapes
            # for the first time there (a second request still ran slower), not in a
            # timed run.
            plain(proc.url, model, audio)
            streamed(proc.url, model, audio)
            runs += measure(name, proc.url, model, audio, reference, args.repeat)

    report = {"audio_seconds": samples.size / SAMPLE_RATE, "model": args.model,
              "repeat": args.repeat,
              "runs": [asdict(run) for run in runs]}
    ours, theirs = (next(r for r in runs if r.server == s and r.mode == "stream")
                    for s in ("granite-speech-server", "vllm"))
    report["stream_total_ratio"] = ours.total_s / theirs.total_s
    report["first_delta_share_of_total"] = (ours.first_delta_s or 0) / ours.total_s
    args.out.write_text(json.dumps(report, indent=1))
    for run in runs:
        first = f"{run.first_delta_s:7.2f}" if run.first_delta_s is not None else "      -"
        print(f"{run.server:22} {run.mode:6} first {first} s  total {run.total_s:7.2f} s  "
              f"WER {run.wer:.3f}")
    print(f"streamed total ours/vLLM: {report['stream_total_ratio']:.2f}; "
          f"our first delta at {report['first_delta_share_of_total']:.0%} of our total")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
