"""Where a server's CPU goes under load: CPU seconds per process, and what the engine did.

    python -m loadtest.cpu --server ours            # or vllm; --py-spy to sample stacks

Starts the server (``loadtest.servers``), warms it with four requests, then sends the
rest of the comparable workload (json transcriptions, plain and streamed, every request
its own recording) from ``--concurrency`` clients. Prints the wall time, the CPU seconds
(user + system) of the API server process, its preprocessing processes (ours), vLLM's
engine core and its worker, each as a share of the wall time and their total as a share
of the machine's cores (what binds the run: the worker is pinned to one core), and the
engine's work from the server's own metrics. With ``--py-spy`` (in the bench extra), each process is sampled into
``<out>/<server>-<process>.txt`` (collapsed stacks).

Note on reading it: vLLM's engine core and worker can wait for each other by spinning
on ``sched_yield``, and that spin counts as CPU time (the py-spy samples say how much).
Through the plugin both servers spin 2 ms after each message on CPU hosts; vLLM's own
second comes back with ``GRANITE_SPEECH_ENGINE_SPIN_MS=1000``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import psutil

from loadtest.bench import run_level
from loadtest.corpus import recordings, requests
from loadtest.requirements import CORPUS_TOOLS, require
from loadtest.servers import our_command, running, vllm_command

COUNTERS = re.compile(
    r"^(vllm:(?:generation_tokens|prompt_tokens|request_success)_total"
    r"|granite_speech_output_tokens_total|granite_speech_segments_per_request_count"
    r"|granite_speech_segments_per_request_sum)(?:\{[^}]*\})?\s+([0-9.e+]+)$")


def counters(url: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if match := COUNTERS.match(line):
            found[match[1]] = found.get(match[1], 0.0) + float(match[2])
    return found


def server_processes(root: psutil.Process) -> dict[str, list[psutil.Process]]:
    """The server's processes by role: the API process, vLLM's (by their own names), and
    the rest of its descendants, our preprocessing processes."""
    roles: dict[str, list[psutil.Process]] = {"api": [root]}
    for child in root.children(recursive=True):
        name = child.name()
        roles.setdefault(name if name.startswith("VLLM::") else "preprocessing", []).append(child)
    return roles


def cpu_seconds(processes: dict[str, list[psutil.Process]]) -> dict[str, float]:
    return {name: sum(sum(p.cpu_times()[:2]) for p in group)
            for name, group in processes.items()}


def cpu_lines(used: dict[str, float], wall_s: float, cores: int) -> list[str]:
    """Each process's CPU seconds as a share of the wall time, and the total as a share of
    the machine: what binds the run. A process near 100% is a bottleneck of its own (the
    engine worker runs on one core); a total near 100% means every core is busy."""
    lines = [f"  CPU s {name:18} {seconds:7.2f}   {seconds / wall_s:4.0%} of the wall"
             for name, seconds in used.items()]
    total = sum(used.values())
    lines.append(f"  CPU s {'total':18} {total:7.2f}   {total / (wall_s * cores):4.0%} "
                 f"of {cores} cores")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["ours", "vllm"], default="ours")
    parser.add_argument("--model", default="tests/fixtures/tiny-granite-speech")
    parser.add_argument("--requests", type=int, default=36, help="four of them warm up")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--port", type=int, default=8803)
    parser.add_argument("--py-spy", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/cpu"))
    args = parser.parse_args(argv)
    require("loadtest.cpu", commands=[*CORPUS_TOOLS, *(["py-spy"] if args.py_spy else [])])

    recs = recordings(args.seed, per_kind=-(-args.requests // 3))
    work = requests(recs, args.requests, seed=args.seed, comparable=True)
    ours = args.server == "ours"
    command = our_command if ours else vllm_command
    model = Path(args.model).name if ours and Path(args.model).is_dir() else args.model
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / f"{args.server}.log"
    with running(command(args.model, args.port, []), "/ready" if ours else "/health",
                 args.port, log) as server:
        processes = server_processes(psutil.Process(server.pid))
        asyncio.run(run_level(server.url, model, work[:4], 4, None, "warm-up"))
        before, counted = cpu_seconds(processes), counters(server.url)
        spies = [subprocess.Popen(
            ["py-spy", "record", "--nonblocking", "-r", "50", "-f", "raw", "-p", str(p.pid),
             "-o", str(args.out / f"{args.server}-{name.replace('::', '-')}-{i}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, group in processes.items() for i, p in enumerate(group)
        ] if args.py_spy else []
        start = time.perf_counter()
        asyncio.run(run_level(server.url, model, work[4:], args.concurrency, None,
                              args.server))
        wall = time.perf_counter() - start
        after, now_counted = cpu_seconds(processes), counters(server.url)
        for spy in spies:
            spy.send_signal(2)  # SIGINT: py-spy writes its samples and exits
            spy.wait()
    audio = sum(r.recording.seconds for r in work[4:])
    print(f"{args.server}: {len(work) - 4} requests, {audio:.0f} s of audio, "
          f"{args.concurrency} clients, wall {wall:.2f} s")
    used = {name: after[name] - before[name] for name in processes}
    print("\n".join(cpu_lines(used, wall, len(os.sched_getaffinity(0)))))
    for name, value in now_counted.items():
        print(f"  {name} {value - counted.get(name, 0.0):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
