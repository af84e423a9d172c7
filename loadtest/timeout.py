"""How requests past ``--request-timeout-seconds`` end: how long after the deadline the
client has its answer, and how long after the answer the engine is idle again.

    python -m loadtest.timeout --model tests/fixtures/tiny-granite-speech --repeat 5

Starts the server (``loadtest.servers``) with a short timeout and 2 s segments, then sends,
one at a time, uploads of far more speech than the timeout allows: plain (answered 504),
streamed (a final error event), and one whose body stalls after its head (504 before the
upload ends). For each it reports the answer's delay past the deadline, measured from the
moment the request began to leave the client, and, for the two that reach the engine,
the time from the answer until the server's ``granite_speech_engine_requests`` read 0: the
aborted segments are gone. ``tests/ops/test_timeout.py`` checks what happens; this
measures how soon.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loadtest.requirements import SYNTHESIZERS, require
from loadtest.servers import our_command, running
from tools.long_audio import long_recording
from tools.speech_corpus import wav_bytes

AUDIO = "/v1/audio/transcriptions"
ENGINE_REQUESTS = "granite_speech_engine_requests"


def engine_requests(client: httpx.Client) -> float:
    """Segment requests running or waiting in the engine, from the server's metrics."""
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == ENGINE_REQUESTS:
            return sum(sample.value for sample in family.samples)
    # Absent, it would read as an idle engine: every drain would seem instant.
    raise LookupError(f"{client.base_url}/metrics has no {ENGINE_REQUESTS}")


def idle_after(client: httpx.Client, deadline_s: float = 120) -> float | None:
    """Seconds until the engine holds no request (None if it still did at the deadline).
    The client is kept open: a new one for each scrape costs more than the scrape."""
    start = time.perf_counter()
    while time.perf_counter() - start < deadline_s:
        if engine_requests(client) == 0:
            return time.perf_counter() - start
        time.sleep(0.01)
    return None


def plain(client: httpx.Client, model: str, audio: bytes) -> tuple[float, str]:
    start = time.perf_counter()
    response = client.post(AUDIO, files={"file": ("long.wav", audio)}, data={"model": model})
    code = response.json().get("error", {}).get("code") if response.status_code != 200 else ""
    return time.perf_counter() - start, f"{response.status_code} {code}".strip()


def streamed(client: httpx.Client, model: str, audio: bytes) -> tuple[float, str]:
    """Until the stream's last event; which it was."""
    start, last = time.perf_counter(), ""
    with client.stream("POST", AUDIO, files={"file": ("long.wav", audio)},
                       data={"model": model, "stream": "true"}) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                last = event["type"] + (f" {event['error']['code']}" if "error" in event else "")
    return time.perf_counter() - start, last


async def stalled_upload(url: str) -> tuple[float, str]:
    """(seconds from the upload's first bytes to the answer, the answer's status line) for
    a client that sends a multipart head and then nothing."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write((f"POST {AUDIO} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000000\r\n"
                  "Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n").encode())
    await writer.drain()
    start = time.perf_counter()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 600)
    elapsed = time.perf_counter() - start
    writer.close()
    return elapsed, head.split(b"\r\n", 1)[0].decode()


def stalled(client: httpx.Client, model: str, audio: bytes) -> tuple[float, str]:
    """A head, the body's first line, then nothing: the deadline answers it."""
    return asyncio.run(stalled_upload(str(client.base_url).rstrip("/")))


KINDS = {"plain": plain, "stream": streamed, "stalled_upload": stalled}
REACH_THE_ENGINE = {"plain", "stream"}


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tests/fixtures/tiny-granite-speech")
    parser.add_argument("--timeout", type=float, default=1.0, help="the server's, in s")
    parser.add_argument("--seconds", type=float, default=1200.0,
                        help="of speech per upload: far more than the timeout allows")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--port", type=int, default=8806)
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/timeout.json"))
    args = parser.parse_args(argv)
    require("loadtest.timeout", commands=SYNTHESIZERS)

    samples, _ = long_recording(args.seconds, distinct=12)
    audio = wav_bytes(samples)
    model = Path(args.model).name if Path(args.model).is_dir() else args.model
    flags = ["--request-timeout-seconds", str(args.timeout), "--max-segment-seconds", "2"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    with running(our_command(args.model, args.port, flags), "/ready", args.port,
                 args.out.with_suffix(".log")) as server, \
            httpx.Client(base_url=server.url, timeout=600) as client:
        for _ in range(args.repeat):
            for kind, send in KINDS.items():
                answer_s, outcome = send(client, model, audio)
                idle_s = idle_after(client) if kind in REACH_THE_ENGINE else None
                runs[kind].append({"outcome": outcome,
                                   "past_deadline_s": round(answer_s - args.timeout, 3),
                                   "engine_idle_after_s": None if idle_s is None
                                   else round(idle_s, 3)})
    report = {"model": args.model, "timeout_s": args.timeout, "audio_seconds": args.seconds,
              "repeat": args.repeat, "runs": runs,
              "summary": {kind: {
                  "outcomes": sorted({run["outcome"] for run in kind_runs}),
                  "past_deadline_s": summary([r["past_deadline_s"] for r in kind_runs]),
                  "engine_idle_after_s": summary([r["engine_idle_after_s"] for r in kind_runs
                                                  if r["engine_idle_after_s"] is not None])}
                  for kind, kind_runs in runs.items()}}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
