"""Soak: mixed traffic for a set time against a server process, tracking its RSS, open
file descriptors and threads (with its engine children), and every response status.

    python -m loadtest.soak --model tests/fixtures/tiny-granite-speech --minutes 20

Starts the server itself (so it can watch the process), drives ``--concurrency`` clients
over the benchmark corpus (plain, streamed, translations, every format), and writes a
JSON report with the samples. Pass: zero 5xx and RSS growth under 10% after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx
import psutil

from loadtest.bench import send
from loadtest.corpus import recordings, requests
from loadtest.requirements import CORPUS_TOOLS, require
from loadtest.servers import our_command, running


def process_tree_usage(pid: int) -> dict[str, float]:
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    usage = {"rss_mb": 0.0, "fds": 0, "threads": 0, "server_rss_mb": 0.0}
    for proc in procs:
        try:
            usage["rss_mb"] += proc.memory_info().rss / 2**20
            usage["fds"] += proc.num_fds()
            usage["threads"] += proc.num_threads()
        except psutil.NoSuchProcess:
            continue
    usage["server_rss_mb"] = root.memory_info().rss / 2**20
    return usage


async def soak(url: str, model: str, pid: int, minutes: float, concurrency: int,
               sample_every_s: float) -> dict:
    work = requests(recordings(per_kind=2), 100_000, seed=1)
    statuses: dict[int, int] = {}
    samples: list[dict] = []
    deadline = time.monotonic() + minutes * 60
    start = time.monotonic()
    cursor = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal cursor
        while time.monotonic() < deadline:
            req, cursor = work[cursor % len(work)], cursor + 1
            outcome = await send(http, model, req)
            statuses[outcome.status] = statuses.get(outcome.status, 0) + 1

    async def watch() -> None:
        while True:
            sample = {"t_s": round(time.monotonic() - start, 1), **process_tree_usage(pid),
                      "requests": sum(statuses.values())}
            samples.append(sample)
            print(f"\r  t={sample['t_s']:6.0f}s rss={sample['rss_mb']:7.0f} MB "
                  f"fds={sample['fds']:4} threads={sample['threads']:4} "
                  f"requests={sample['requests']:5} statuses={statuses}", end="", flush=True)
            await asyncio.sleep(sample_every_s)

    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        watcher.cancel()
    print()
    return {"statuses": statuses, "samples": samples}


def verdict(report: dict, warmup_share: float = 0.2, window_share: float = 0.2) -> dict:
    """Growth compares the mean of the first and last fifths after warm-up, not two single
    samples: the server's RSS swings by hundreds of MB as the allocator gives memory back
    in bursts, and a trend is what a leak would show."""
    samples = report["samples"]
    after = [s for s in samples if s["t_s"] >= samples[-1]["t_s"] * warmup_share]
    width = max(1, int(len(after) * window_share))
    base, last = after[:width], after[-width:]

    def mean(window: list[dict], key: str) -> float:
        return sum(s[key] for s in window) / len(window)

    return {
        "server_errors": sum(n for status, n in report["statuses"].items() if int(status) >= 500),
        "rss_growth_after_warmup": mean(last, "rss_mb") / mean(base, "rss_mb") - 1,
        "rss_peak_mb": max(s["rss_mb"] for s in after),
        "fd_growth_after_warmup": last[-1]["fds"] - base[0]["fds"],
        "thread_growth_after_warmup": last[-1]["threads"] - base[0]["threads"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tests/fixtures/tiny-granite-speech")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=8792)
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/soak.json"))
    args = parser.parse_args(argv)
    require("loadtest.soak", commands=CORPUS_TOOLS)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    name = Path(args.model).name if Path(args.model).is_dir() else args.model
    command = our_command(args.model, args.port, [])
    with running(command, "/ready", args.port, args.out.with_suffix(".log")) as server:
        report = asyncio.run(soak(server.url, name, server.pid, args.minutes, args.concurrency,
                                  args.sample_every))
    report["verdict"] = verdict(report)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report["verdict"], indent=1))
    ok = report["verdict"]["server_errors"] == 0 and \
        report["verdict"]["rss_growth_after_warmup"] < 0.10
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
