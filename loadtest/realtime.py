"""Live sessions replayed in real time: how soon each turn's transcript follows its end.

Each session streams its own recording (held-out voices saying digit strings, pauses of
1-2 s between them) as 24 kHz PCM in 100 ms appends, paced by the clock as a microphone
would send it, over a raw WebSocket to ``/v1/realtime?intent=transcription`` with the
server VAD. For each turn: the latency from ``input_audio_buffer.speech_stopped`` to its
``...transcription.completed`` event, at 1, 2, 4, 8, ... sessions at once. The same
utterances are then sent to the file API at the same moments (when the live turn would
have ended) by as many clients, for the same latency on the other path.

    python -m loadtest.realtime                       # starts the server on the test model
    python -m loadtest.realtime --server http://127.0.0.1:8000 --model granite-4.0-1b-speech
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loadtest.requirements import require

CHUNK_S = 0.1
PCM_RATE = 24_000
SILENCE_MS = 500
"""The server VAD's default silence_duration_ms: a turn ends this long after its speech."""


@dataclass
class Recording:
    pcm: bytes
    """The whole stream, 24 kHz PCM16."""
    utterances: list[tuple[float, np.ndarray]]
    """(where each utterance ends in the stream, in s; its 16 kHz samples)."""


@dataclass
class Level:
    sessions: int
    live_ms: list[float] = field(default_factory=list)
    file_ms: list[float] = field(default_factory=list)
    turns_expected: int = 0
    empty: int = 0


def recordings(count: int, utterances: int, seed: int) -> list[Recording]:
    from tools.speech_corpus import DIGITS, heldout_voices, synthesize, trim
    import soxr

    rng = random.Random(seed)
    voices = heldout_voices()
    out = []
    for _ in range(count):
        parts, ends, clips, now = [np.zeros(16_000, np.float32)], [], [], 1.0
        for _ in range(utterances):
            text = " ".join(rng.choice(DIGITS) for _ in range(rng.randint(3, 8)))
            clip = trim(synthesize(rng.choice(voices), text))
            pause = np.zeros(int(rng.uniform(1.0, 2.0) * 16_000), np.float32)
            now += clip.size / 16_000
            ends.append(now)
            clips.append(clip)
            parts += [clip, pause]
            now += pause.size / 16_000
        stream = soxr.resample(np.concatenate(parts), 16_000, PCM_RATE)
        pcm = (np.clip(stream, -1, 1) * 32767).astype("<i2").tobytes()
        out.append(Recording(pcm, list(zip(ends, clips))))
    return out


async def live_session(url: str, model: str, recording: Recording, level: Level) -> None:
    import websockets

    ws_url = url.replace("http", "ws", 1) + f"/v1/realtime?intent=transcription&model={model}"
    stopped: dict[str, float] = {}
    done: dict[str, float] = {}
    async with websockets.connect(ws_url, max_size=None) as ws:
        json.loads(await ws.recv())  # session.created

        async def send() -> None:
            size = int(PCM_RATE * CHUNK_S) * 2
            start = time.monotonic()
            for index, offset in enumerate(range(0, len(recording.pcm), size)):
                chunk = base64.b64encode(recording.pcm[offset:offset + size]).decode()
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
                await asyncio.sleep(max(0.0, start + (index + 1) * CHUNK_S - time.monotonic()))

        sender = asyncio.create_task(send())
        with contextlib.suppress(TimeoutError):
            while not (sender.done() and len(done) >= len(stopped)):
                event = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
                now = time.monotonic()
                if event["type"] == "input_audio_buffer.speech_stopped":
                    stopped[event["item_id"]] = now
                elif event["type"].endswith("transcription.completed"):
                    done[event["item_id"]] = now
                    level.empty += not event["transcript"]
        await sender
    level.live_ms += [(done[item] - stopped[item]) * 1000 for item in done if item in stopped]


async def file_client(url: str, model: str, recording: Recording, level: Level) -> None:
    import httpx
    import soundfile as sf

    start = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        for end_s, clip in recording.utterances:
            # Sent when the live turn would have ended: its speech, then the VAD's silence.
            await asyncio.sleep(max(0.0, start + end_s + SILENCE_MS / 1000 - time.monotonic()))
            wav = io.BytesIO()
            sf.write(wav, clip, 16_000, format="WAV", subtype="PCM_16")
            sent = time.monotonic()
            response = await http.post("/v1/audio/transcriptions", data={"model": model},
                                       files={"file": ("turn.wav", wav.getvalue())})
            response.raise_for_status()
            level.file_ms.append((time.monotonic() - sent) * 1000)


async def run_level(url: str, model: str, sessions: list[Recording]) -> Level:
    level = Level(len(sessions), turns_expected=sum(len(r.utterances) for r in sessions))
    await asyncio.gather(*[live_session(url, model, r, level) for r in sessions])
    await asyncio.gather(*[file_client(url, model, r, level) for r in sessions])
    return level


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summary(level: Level) -> dict:
    return {"sessions": level.sessions, "turns": len(level.live_ms),
            "turns_expected": level.turns_expected, "empty_transcripts": level.empty,
            "live_p50_ms": percentile(level.live_ms, 50), "live_p90_ms": percentile(level.live_ms, 90),
            "live_max_ms": max(level.live_ms, default=float("nan")),
            "file_p50_ms": percentile(level.file_ms, 50), "file_p90_ms": percentile(level.file_ms, 90)}


def print_table(rows: list[dict]) -> None:
    print(f"\n{'sessions':>8} {'turns':>9} {'live p50':>9} {'p90':>7} {'max':>7} "
          f"{'file p50':>9} {'p90':>7}   (ms from the end of speech detection)")
    for row in rows:
        print(f"{row['sessions']:>8} {row['turns']:>4}/{row['turns_expected']:<4} "
              f"{row['live_p50_ms']:>9.0f} {row['live_p90_ms']:>7.0f} {row['live_max_ms']:>7.0f} "
              f"{row['file_p50_ms']:>9.0f} {row['file_p90_ms']:>7.0f}")


def saturation(rows: list[dict]) -> int | None:
    """The fewest sessions whose p90 is over twice the single session's (or a turn lost)."""
    base = rows[0]["live_p90_ms"]
    for row in rows:
        if row["live_p90_ms"] > 2 * base or row["turns"] < row["turns_expected"]:
            return row["sessions"]
    return None


async def measure(url: str, model: str, levels: list[int], utterances: int, seed: int) -> dict:
    pool = await asyncio.to_thread(recordings, max(levels), utterances, seed)
    rows = []
    for count in levels:
        rows.append(summary(await run_level(url, model, pool[:count])))
        print_table(rows[-1:])
    return {"levels": rows, "saturates_at_sessions": saturation(rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", help="a running server (else one is started on --model)")
    parser.add_argument("--model", default="tests/fixtures/tiny-granite-speech")
    parser.add_argument("--sessions", default="1,2,4,8,16",
                        help="comma list of how many sessions run at once")
    parser.add_argument("--utterances", type=int, default=8, help="turns per session")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    require("loadtest.realtime", modules=("websockets",), commands=("espeak-ng", "flite"))
    levels = [int(n) for n in args.sessions.split(",")]
    if args.server:
        results = asyncio.run(measure(args.server, args.model, levels, args.utterances,
                                      args.seed))
    else:
        from loadtest.servers import our_command, running

        with tempfile.TemporaryDirectory() as tmp, running(
                our_command(args.model, 8031, []), "/ready", 8031, Path(tmp) / "server.log") as srv:
            results = asyncio.run(measure(srv.url, Path(args.model).name, levels,
                                          args.utterances, args.seed))
    print_table(results["levels"])
    print(f"saturates at: {results['saturates_at_sessions'] or 'not within these levels'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
