"""Front-end capacity: how much audio the server's own work can serve per second, and
where its CPU goes, with the engine replaced by the scripted instant engine.

    python -m loadtest.capacity --cores 1,2            # capacity on one core and on two
    python -m loadtest.capacity --cores 2 --stages     # plus CPU per stage (py-spy)

The server (``loadtest.instant_server``) runs pinned to the first N cores (``taskset``)
and is sent the bench corpus (wav, mp3 and ogg/opus; short clips, medium recordings and
long ones with long pauses; plain and streamed, every response format, translations)
from enough clients to keep it busy. For each core count it reports audio seconds served
per wall second and the CPU seconds (user + system) of all the server's processes per
audio second. On one core the load generator runs on another core; on two it shares them
(its own CPU is reported), which can only understate the second core's gain.

The server runs without ``--word-timestamps``: the encoder and CTC head that align
words (for subtitles and word granularity) are model work, on the engine's device on a
GPU host, not the host's share.

``--stages`` samples the server's processes with py-spy and splits its CPU by the stage
the sampled code belongs to (the deepest frame of ours or of a library we call).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

from loadtest.bench import run_level
from loadtest.corpus import recordings, requests
from loadtest.requirements import CORPUS_TOOLS, require
from loadtest.servers import running

MODEL = "tests/fixtures/tiny-granite-speech"

STAGES: list[tuple[str, re.Pattern]] = [(name, re.compile(pattern)) for name, pattern in [
    ("upload parsing", r"python_multipart|formparsers\.py|upload_limit\.py|datastructures\.py"),
    ("resample", r"^(_StreamResampler\.\w+|_sanitize) \(.*audio/decode\.py"),
    ("decode", r"audio/decode\.py|audio/probe\.py|preprocess/"),
    ("sample buffer", r"audio/progressive\.py"),
    ("VAD network", r"audio/silero\.py"),
    ("VAD levelling and regions", r"audio/vad\.py|silero_vad/"),
    ("plan", r"audio/segment\.py|asr/planning\.py"),
    ("features", r"audio/features\.py"),
    ("prompt", r"asr/prompt\.py"),
    ("stitch", r"asr/stitch\.py|asr/transcript\.py|asr/align\.py"),
    ("language id", r"asr/language_id\.py|lingua"),
    ("format", r"server/formats/"),
    ("scripted engine", r"instant_server\.py|fake_engine\.py|tokenization|tokenizers"),
]]
OTHER = "HTTP, asyncio, framework"


def stage_of(stack: list[str]) -> str:
    """The stage of the deepest frame that belongs to one."""
    for frame in reversed(stack):
        for name, pattern in STAGES:
            if pattern.search(frame):
                return name
    return OTHER


def stage_samples(paths: list[Path]) -> Counter:
    counts: Counter = Counter()
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                counts[stage_of(stack.split(";"))] += int(count)
    return counts


def tree_cpu(pid: int) -> dict[str, float]:
    """User + system CPU seconds of the API process and of its preprocessing processes
    (its live descendants)."""
    root = psutil.Process(pid)
    used = {"api": sum(root.cpu_times()[:2]), "preprocessing": 0.0}
    for process in root.children(recursive=True):
        try:
            used["preprocessing"] += sum(process.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return used


def measure(cores: int, work, warm, args, out: Path) -> dict:
    pinned = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:cores])
    command = ["taskset", "-c", pinned, sys.executable, "-m", "loadtest.instant_server",
               "--model", args.model, "--port", str(args.port), "--host", "127.0.0.1",
               "--no-word-timestamps", *args.server_args]
    model = Path(args.model).name
    client_cores = set(sorted(os.sched_getaffinity(0))[cores:]) or os.sched_getaffinity(0)
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, client_cores)
    try:
        with running(command, "/ready", args.port, out / f"server-{cores}.log") as server:
            asyncio.run(run_level(server.url, model, warm, args.concurrency, None, "warm-up"))
            spy = None
            if args.stages:
                spy = subprocess.Popen(
                    ["py-spy", "record", "--subprocesses", "--nonblocking", "-r", "100",
                     "-f", "raw", "-p", str(server.pid), "-o", str(out / f"stages-{cores}.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
            cpu_before, client_before = tree_cpu(server.pid), time.process_time()
            start = time.perf_counter()
            outcomes = asyncio.run(run_level(server.url, model, work, args.concurrency, None,
                                             f"{cores} core(s)"))
            wall = time.perf_counter() - start
            cpu_after = tree_cpu(server.pid)
            client = time.process_time() - client_before
            if spy is not None:
                spy.send_signal(2)
                spy.wait()
    finally:
        os.sched_setaffinity(0, own)
    errors = Counter(o.error for o in outcomes if o.error)
    audio = sum(o.seconds_of_audio for o in outcomes if o.error is None)
    row = {"cores": cores, "requests": len(outcomes), "errors": dict(errors),
           "audio_s": round(audio, 1), "wall_s": round(wall, 2),
           "audio_s_per_wall_s": round(audio / wall, 1),
           "server_cpu_ms_per_audio_s": round(
               1000 * sum(cpu_after[k] - cpu_before[k] for k in cpu_after) / audio, 3),
           "process_cpu_ms_per_audio_s": {
               k: round(1000 * (cpu_after[k] - cpu_before[k]) / audio, 3) for k in cpu_after},
           "client_cpu_s": round(client, 2)}
    if args.stages:
        counts = stage_samples([out / f"stages-{cores}.txt"])
        total = sum(counts.values())
        row["stages_cpu_ms_per_audio_s"] = {
            name: round(row["server_cpu_ms_per_audio_s"] * n / total, 3)
            for name, n in counts.most_common()}
    return row


def median_run(runs: list[dict]) -> dict:
    """The run of median capacity, with every run's capacity beside it (the machine's
    speed drifts between minutes: runs alternate between core counts)."""
    ordered = sorted(runs, key=lambda r: r["audio_s_per_wall_s"])
    return {**ordered[len(ordered) // 2],
            "runs_audio_s_per_wall_s": [r["audio_s_per_wall_s"] for r in runs]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--cores", default="1,2", help="core counts to pin the server to")
    parser.add_argument("--per-kind", type=int, default=8,
                        help="recordings of each kind (short, medium, long with pauses)")
    parser.add_argument("--rounds", type=int, default=8, help="times the corpus is sent")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per core count, alternating; the median is reported")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--port", type=int, default=8811)
    parser.add_argument("--stages", action="store_true", help="CPU per stage, with py-spy")
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/capacity"))
    parser.add_argument("server_args", nargs="*", help="after --: the server's own flags")
    args = parser.parse_args(argv)
    require("loadtest.capacity", commands=[*CORPUS_TOOLS, "taskset",
                                            *(["py-spy"] if args.stages else [])])
    recs = recordings(args.seed, per_kind=args.per_kind)
    work = requests(recs, len(recs) * args.rounds, seed=args.seed)
    warm = requests(recs, args.concurrency, seed=args.seed + 1)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [measure(int(n), work, warm, args, args.out)
            for _ in range(args.repeat) for n in args.cores.split(",")]
    rows = [median_run([r for r in runs if r["cores"] == int(n)])
            for n in args.cores.split(",")]
    (args.out / "capacity.json").write_text(json.dumps(rows, indent=1))
    for row in rows:
        print(f"{row['cores']} core(s): {row['audio_s_per_wall_s']:.0f} audio s per wall s, "
              f"{row['server_cpu_ms_per_audio_s']:.2f} CPU ms per audio s "
              f"({row['requests']} requests, {row['audio_s']:.0f} s of audio, "
              f"errors {row['errors'] or 'none'}, client {row['client_cpu_s']} CPU s)")
        if len(row["runs_audio_s_per_wall_s"]) > 1:
            print(f"    runs: {row['runs_audio_s_per_wall_s']}")
        print("    by process: " + ", ".join(
            f"{name} {ms:.2f} ms" for name, ms in row["process_cpu_ms_per_audio_s"].items()))
        for name, ms in row.get("stages_cpu_ms_per_audio_s", {}).items():
            print(f"    {name:28} {ms:6.3f} ms per audio s")
    if len(rows) > 1:
        print(f"scaling {rows[-1]['cores']} vs {rows[0]['cores']} core(s): "
              f"{rows[-1]['audio_s_per_wall_s'] / rows[0]['audio_s_per_wall_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
