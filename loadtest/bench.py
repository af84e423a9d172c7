"""Benchmark: N concurrent clients over a realistic corpus; throughput, latency, RTFx.

    # against a running server
    python -m loadtest.bench --url http://127.0.0.1:8000 --model granite-4.0-1b-speech \\
        --concurrency 1,4,8 --requests 40
    # this server vs vLLM's own endpoint, same model, same machine, one run
    python -m loadtest.bench --compare-vllm --model tests/fixtures/tiny-granite-speech \\
        --concurrency 1,4 --requests 30
    # both servers up at once, each level sent in 5 parts to one then the other
    python -m loadtest.bench --compare-vllm --interleave 5 --concurrency 1,4,8 --requests 60

Writes ``<out>/bench.json`` and PNG plots (latency CDF, RTFx against concurrency).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

from loadtest.corpus import KINDS, Recording, Request, recordings, requests
from loadtest.long_audio import first_text
from loadtest.requirements import CORPUS_TOOLS, require
from loadtest.servers import our_command, running, vllm_command


@dataclass
class Outcome:
    seconds_of_audio: float
    latency_s: float
    status: int
    first_delta_s: float | None = None
    error: str | None = None
    kind: str = ""


@dataclass
class LevelResult:
    server: str
    concurrency: int
    requests: int
    errors: dict[str, int]
    wall_s: float
    requests_per_s: float
    rtfx: float
    """Audio seconds transcribed per wall-clock second."""
    latency_s: dict[str, float]
    first_delta_s: dict[str, float]
    latency_p50_by_kind: dict[str, float]
    """Short clips, medium recordings, long ones with pauses: where the p50 comes from."""
    latencies: list[float] = field(repr=False)


async def send(client: httpx.AsyncClient, model: str, req: Request) -> Outcome:
    data = {"model": model, "response_format": req.response_format}
    if req.stream:
        data["stream"] = "true"
    if req.to_language:
        data["to_language"] = req.to_language
    files = {"file": (req.recording.name, req.recording.data)}
    start = time.perf_counter()
    try:
        async with client.stream("POST", f"/v1/audio/{req.endpoint}", files=files,
                                 data=data) as response:
            if req.stream and response.status_code == 200:
                first, error = await read_events(response, start)
            else:
                await response.aread()
                first, error = None, None
            if response.status_code != 200:
                error = f"HTTP {response.status_code}"
            return Outcome(req.recording.seconds, time.perf_counter() - start,
                           response.status_code, first, error, req.recording.kind)
    except httpx.HTTPError as exc:
        return Outcome(req.recording.seconds, time.perf_counter() - start, 0, None,
                       type(exc).__name__, req.recording.kind)


async def read_events(response: httpx.Response, start: float) -> tuple[float | None, str | None]:
    """Time of the first text delta, and whether the stream ended in an error event."""
    first, error = None, None
    async for line in response.aiter_lines():
        if first is None and first_text(line):
            first = time.perf_counter() - start
        if line.startswith("data: {") and "error" in json.loads(line[6:]):
            error = "stream error event"
    return first, error


async def run_level(url: str, model: str, work: list[Request], concurrency: int,
                    duration_s: float | None, label: str) -> list[Outcome]:
    queue: asyncio.Queue[Request] = asyncio.Queue()
    for req in work:
        queue.put_nowait(req)
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + duration_s if duration_s else None

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty() and (deadline is None or time.monotonic() < deadline):
            outcomes.append(await send(client, model, queue.get_nowait()))

    async def progress() -> None:
        start = time.monotonic()
        while True:
            await asyncio.sleep(1)
            errors = sum(o.error is not None for o in outcomes)
            elapsed = time.monotonic() - start
            print(f"\r  {label} c={concurrency}: {len(outcomes)}/{len(work)} done, "
                  f"{errors} errors, {len(outcomes) / elapsed:.2f} req/s, {elapsed:.0f} s",
                  end="", file=sys.stderr, flush=True)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as client:
        ticker = asyncio.create_task(progress())
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        ticker.cancel()
    print(file=sys.stderr)
    return outcomes


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {f"p{q}": round(float(np.percentile(values, q)), 3) for q in (50, 90, 99)}


def summarize(server: str, concurrency: int, outcomes: list[Outcome], wall_s: float) -> LevelResult:
    ok = [o for o in outcomes if o.error is None]
    errors: dict[str, int] = {}
    for o in outcomes:
        if o.error:
            errors[o.error] = errors.get(o.error, 0) + 1
    return LevelResult(
        server=server, concurrency=concurrency, requests=len(outcomes), errors=errors,
        wall_s=round(wall_s, 2), requests_per_s=round(len(ok) / wall_s, 3),
        rtfx=round(sum(o.seconds_of_audio for o in ok) / wall_s, 2),
        latency_s=percentiles([o.latency_s for o in ok]),
        first_delta_s=percentiles([o.first_delta_s for o in ok if o.first_delta_s is not None]),
        latency_p50_by_kind={kind: round(float(np.median([o.latency_s for o in ok
                                                          if o.kind == kind])), 3)
                             for kind in sorted({o.kind for o in ok})},
        latencies=sorted(o.latency_s for o in ok),
    )


async def bench(url: str, model: str, server: str, warm_up: Request,
                works: list[list[Request]], levels: list[int],
                duration_s: float | None) -> list[LevelResult]:
    """Each level its own work: no level replays audio an earlier one cached."""
    results = []
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await send(client, model, warm_up)
    for concurrency, work in zip(levels, works):
        start = time.perf_counter()
        outcomes = await run_level(url, model, work, concurrency, duration_s, server)
        results.append(summarize(server, concurrency, outcomes, time.perf_counter() - start))
    return results


@dataclass(frozen=True)
class Target:
    url: str
    model: str
    server: str


async def bench_interleaved(targets: list[Target], warm_up: Request, works: list[list[Request]],
                            levels: list[int], blocks: int) -> list[LevelResult]:
    """Servers running side by side, each level's work cut into ``blocks`` parts that go
    to every server in turn, the order reversed at every part (ABBA...). A machine whose
    speed drifts between minutes (a VM's does, by up to ~30% here) then slows every
    server alike, where a run of one server after the other hands the drift to one side.
    Each server's wall time is the sum of its parts; every part starts with all its
    clients and ends with its slowest, so use parts of several requests per client."""
    for target in targets:
        async with httpx.AsyncClient(base_url=target.url, timeout=600) as client:
            await send(client, target.model, warm_up)
    results = []
    for concurrency, work in zip(levels, works):
        outcomes: dict[str, list[Outcome]] = {t.server: [] for t in targets}
        walls = dict.fromkeys(outcomes, 0.0)
        size = -(-len(work) // blocks)
        for part in range(blocks):
            for target in targets if part % 2 == 0 else targets[::-1]:
                start = time.perf_counter()
                outcomes[target.server] += await run_level(
                    target.url, target.model, work[part * size : (part + 1) * size],
                    concurrency, None, f"{target.server} part {part + 1}/{blocks}")
                walls[target.server] += time.perf_counter() - start
        results += [summarize(t.server, concurrency, outcomes[t.server], walls[t.server])
                    for t in targets]
    return results


def plot(results: list[LevelResult], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        if r.latencies:
            ax.plot(r.latencies, np.linspace(0, 1, len(r.latencies)),
                    label=f"{r.server} c={r.concurrency}")
    ax.set(xlabel="latency (s)", ylabel="share of requests", title="Latency CDF")
    ax.grid(alpha=0.3)
    ax.legend()
    cdf = out / "latency_cdf.png"
    fig.savefig(cdf, dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for server in dict.fromkeys(r.server for r in results):
        mine = [r for r in results if r.server == server]
        ax.plot([r.concurrency for r in mine], [r.rtfx for r in mine], marker="o", label=server)
    ax.set(xlabel="concurrent clients", ylabel="RTFx (audio s per wall s)",
           title="Throughput against concurrency")
    ax.grid(alpha=0.3)
    ax.legend()
    rtfx = out / "rtfx_vs_concurrency.png"
    fig.savefig(rtfx, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [cdf, rtfx]


def ratios(results: list[LevelResult]) -> list[dict]:
    """ours/theirs per metric at each concurrency level."""
    rows = []
    for ours in (r for r in results if r.server == "granite-speech-server"):
        theirs = next((r for r in results if r.server == "vllm"
                       and r.concurrency == ours.concurrency), None)
        if theirs is None:
            continue
        rows.append({
            "concurrency": ours.concurrency,
            "throughput": ours.rtfx / theirs.rtfx if theirs.rtfx else None,
            "requests_per_s": ours.requests_per_s / theirs.requests_per_s
            if theirs.requests_per_s else None,
            "latency_p50": ours.latency_s["p50"] / theirs.latency_s["p50"]
            if theirs.latency_s else None,
            "latency_p90": ours.latency_s["p90"] / theirs.latency_s["p90"]
            if theirs.latency_s else None,
            "first_delta_p50": ours.first_delta_s["p50"] / theirs.first_delta_s["p50"]
            if ours.first_delta_s and theirs.first_delta_s else None,
        })
    return rows


def print_table(results: list[LevelResult], ratio_rows: list[dict]) -> None:
    print(f"{'server':22} {'c':>3} {'req':>4} {'err':>4} {'req/s':>7} {'RTFx':>7} "
          f"{'p50 s':>7} {'p90 s':>7} {'p99 s':>7} {'TTFD50':>7}")
    for r in results:
        lat = r.latency_s or {"p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
        print(f"{r.server:22} {r.concurrency:3} {r.requests:4} {sum(r.errors.values()):4} "
              f"{r.requests_per_s:7.3f} {r.rtfx:7.2f} {lat['p50']:7.2f} {lat['p90']:7.2f} "
              f"{lat['p99']:7.2f} {r.first_delta_s.get('p50', float('nan')):7.2f}")
    for r in results:
        print(f"p50 by kind, {r.server} c={r.concurrency}: " + ", ".join(
            f"{kind} {p50:.2f} s" for kind, p50 in r.latency_p50_by_kind.items()))
    for row in ratio_rows:
        print("ours/vLLM c={concurrency}: ".format(**row) + ", ".join(
            f"{k} {v:.2f}" for k, v in row.items() if k != "concurrency" and v is not None))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (omit with --compare-vllm)")
    parser.add_argument("--model", default="tests/fixtures/tiny-granite-speech")
    parser.add_argument("--concurrency", default="1,4", help="comma-separated levels")
    parser.add_argument("--requests", type=int, default=30, help="requests per level")
    parser.add_argument("--duration", type=float, help="stop each level after this many s")
    parser.add_argument("--compare-vllm", action="store_true",
                        help="start this server, then vLLM's own, and compare")
    parser.add_argument("--interleave", type=int, default=1, metavar="PARTS",
                        help="with --compare-vllm: run both servers at once and send each "
                        "level's requests in PARTS parts, to one server then the other "
                        "(ABBA), so the machine's drift falls on both; 1 (default) runs "
                        "one server's levels, then the other's")
    parser.add_argument("--port", type=int, default=8791, help="and the next one, interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/bench"))
    args = parser.parse_args(argv)
    require("loadtest.bench", ["matplotlib"], CORPUS_TOOLS)
    if args.interleave > 1 and (not args.compare_vllm or args.duration):
        parser.error("--interleave needs --compare-vllm and a request count, not --duration")

    levels = [int(c) for c in args.concurrency.split(",")]
    # A recording per request: every level gets its own share of the corpus.
    per_kind = -(-args.requests * len(levels) // len(KINDS))
    print(f"making the corpus: {per_kind * len(KINDS)} recordings...", flush=True)
    recs: list[Recording] = recordings(args.seed, per_kind=per_kind)
    works = [requests(recs[k :: len(levels)], args.requests, seed=args.seed + k,
                      comparable=args.compare_vllm) for k in range(len(levels))]
    warm_up = requests(recordings(args.seed + 1, per_kind=1), 1, comparable=True)[0]
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[LevelResult] = []
    if args.compare_vllm:
        name = Path(args.model).name if Path(args.model).is_dir() else args.model
        servers = [("granite-speech-server", our_command, "/ready", name),
                   ("vllm", vllm_command, "/health", args.model)]
        if args.interleave > 1:
            with contextlib.ExitStack() as stack:
                targets = [Target(stack.enter_context(running(
                    command(args.model, port, []), ready, port,
                    args.out / f"{server}.log")).url, model, server)
                    for port, (server, command, ready, model)
                    in enumerate(servers, start=args.port)]
                results = asyncio.run(bench_interleaved(targets, warm_up, works, levels,
                                                        args.interleave))
        else:
            for server, command, ready, model in servers:
                log = args.out / f"{server}.log"
                with running(command(args.model, args.port, []), ready, args.port,
                             log) as proc:
                    results += asyncio.run(bench(proc.url, model, server, warm_up, works,
                                                 levels, args.duration))
    else:
        if not args.url:
            parser.error("--url is required without --compare-vllm")
        results = asyncio.run(bench(args.url, args.model, "granite-speech-server", warm_up,
                                    works, levels, args.duration))

    ratio_rows = ratios(results)
    report = {"corpus": [{"name": r.name, "seconds": r.seconds} for r in recs],
              "results": [{k: v for k, v in asdict(r).items() if k != "latencies"}
                          for r in results],
              "ours_over_vllm": ratio_rows}
    (args.out / "bench.json").write_text(json.dumps(report, indent=1))
    plots = plot(results, args.out)
    print_table(results, ratio_rows)
    print(f"wrote {args.out / 'bench.json'}, " + ", ".join(map(str, plots)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
