"""How long the server takes to become ready, and the memory each of its processes takes.

    python tools/full_size_model.py                      # the size-true checkpoint, once
    python -m loadtest.startup [--model DIR] [-- SERVER FLAGS]

Starts ``python -m granite_speech_server`` (``loadtest.servers``) as a user would, waits for ``/ready``,
and prints the seconds it took, what the engine reported (dtype, KV cache, the audio its
memory profile used), the CPU seconds and the peak resident memory (the kernel's VmHWM)
of the API process, vLLM's engine core and its worker. ``--request SECONDS`` also sends
one upload of that much synthesized speech (with pauses) and reports its answer time and the peaks after.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import httpx

from tools.full_size_model import DEFAULT_DIR
from tools.long_audio import long_recording
from tools.speech_corpus import wav_bytes
from loadtest.requirements import SYNTHESIZERS, require
from loadtest.servers import our_command, peak_rss_gib, running, server_processes

ENGINE_LINE = re.compile(r"Engine started in .*?memory profiled with [\d.]+ s of audio")


def speech_wav(seconds: float) -> bytes:
    """Synthesized speech with pauses (``tools.long_audio``), ``seconds`` long."""
    samples, _ = long_recording(seconds, seed=0, distinct=12, pause_s=(0.6, 2.0))
    return wav_bytes(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_DIR),
                        help="default: tools/full_size_model.py's checkpoint")
    parser.add_argument("--port", type=int, default=8805)
    parser.add_argument("--request", type=float, default=0,
                        help="also send an upload of this many seconds")
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/startup"))
    parser.add_argument("server_flags", nargs="*", help="after --: flags for the server")
    args = parser.parse_args(argv)
    require("loadtest.startup", commands=SYNTHESIZERS if args.request else ())

    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "server.log"
    report: dict[str, object] = {"model": args.model, "flags": args.server_flags}
    started = time.monotonic()
    with running(our_command(args.model, args.port, args.server_flags), "/ready", args.port,
                 log, timeout_s=1800) as server:
        report["ready_s"] = round(time.monotonic() - started, 1)
        processes = server_processes(server.pid)
        report["cpu_s"] = {role: round(sum(p.cpu_times()[:2]), 1)
                           for role, p in processes.items()}
        report["peak_rss_gib"] = {role: round(peak_rss_gib(p.pid), 2)
                                  for role, p in processes.items()}
        if args.request:
            begun = time.monotonic()
            response = httpx.post(f"{server.url}/v1/audio/transcriptions", timeout=1800,
                                  files={"file": ("speech.wav", speech_wav(args.request))},
                                  data={"model": Path(args.model).name})
            report["request"] = {"seconds": args.request, "status": response.status_code,
                                 "answer_s": round(time.monotonic() - begun, 1)}
            report["peak_rss_gib_after_request"] = {
                role: round(peak_rss_gib(p.pid), 2) for role, p in processes.items()}
    engine = ENGINE_LINE.search(log.read_text(errors="replace"))
    report["engine"] = engine.group(0) if engine else None
    print(json.dumps(report, indent=2))
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
