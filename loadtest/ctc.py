"""The CTC head's two uses, measured on the test model's held-out clips:
word-timestamp accuracy against the synthesized words' known times, and
self-speculative decoding (WER, tokens decoded one by one, RTFx) against plain decoding.

    python -m loadtest.ctc --model tests/fixtures/tiny-granite-speech --clips 100
    # on a GPU with the real model (needs speech with word timing of its own; the held-out
    # digits here only exercise the path):
    python -m loadtest.ctc --model ibm-granite/granite-4.0-1b-speech --clips 100

Runs the engine in-process (the same Transcriber the server uses), plain first, then
speculative, one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from granite_speech_server.asr.ctc import CtcHead
from granite_speech_server.asr.vllm_engine import VllmEngine
from granite_speech_server.asr.transcriber import Transcriber
from granite_speech_server.asr.transcript import TranscriptionOptions
from granite_speech_server.audio.segment import SpeechPlanner
from granite_speech_server.audio.silero import SileroNetwork
from granite_speech_server.config import Settings
from loadtest.requirements import SYNTHESIZERS, require
from tools.speech_corpus import SAMPLE_RATE, small_heldout_set, word_error_rate


async def run(transcriber: Transcriber, clips, options: TranscriptionOptions) -> dict:
    start = time.perf_counter()
    transcripts = await asyncio.gather(*(transcriber.transcribe(c.audio, options) for c in clips))
    wall = time.perf_counter() - start
    return {
        "wall_s": round(wall, 2),
        "rtfx": round(sum(c.audio.size for c in clips) / SAMPLE_RATE / wall, 1),
        "wer": word_error_rate([c.text for c in clips], [t.text for t in transcripts]),
        "output_tokens": sum(t.usage.output_tokens for t in transcripts),
        "decoded_tokens": sum(t.usage.output_tokens - t.usage.drafted_tokens
                              for t in transcripts),
        "transcripts": transcripts,
    }


def word_boundary_error(clips, transcripts) -> dict:
    """Mean |start error| and |end error| over words whose text the model got right."""
    errors = []
    for clip, transcript in zip(clips, transcripts):
        truth = clip.words or []
        got = transcript.words or []
        if [w for w, _, _ in truth] != [w.word for w in got]:
            continue
        errors += [abs(w.start - s) for w, (_, s, _) in zip(got, truth)]
        errors += [abs(w.end - e) for w, (_, _, e) in zip(got, truth)]
    return {"boundaries": len(errors),
            "mean_abs_error_ms": round(1000 * float(np.mean(errors)), 1) if errors else None}


def dithered(clips, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [dataclasses.replace(c, audio=c.audio + rng.normal(0, 1e-5, c.audio.size)
                                .astype(np.float32)) for c in clips]


async def main_async(args) -> dict:
    settings = Settings(model=args.model)
    engine = await asyncio.to_thread(VllmEngine.start, settings)
    ctc = await asyncio.to_thread(CtcHead.load, args.model)
    planner = SpeechPlanner(await asyncio.to_thread(SileroNetwork))
    clips = [c for c in small_heldout_set(n_speech=args.clips, n_empty=0, seed=args.seed)]
    try:
        plain = Transcriber(engine, settings, planner, ctc=ctc)
        spec = Transcriber(engine, settings.model_copy(update={"speculative_ctc": True}), planner,
                           ctc=ctc)
        # vLLM caches an audio's encoder output and KV by content: each timed run gets its
        # own copy of the clips (an inaudible dither apart), and both paths are warmed first.
        warm = dithered(clips[:4], seed=0)
        await run(plain, warm, TranscriptionOptions())
        await run(spec, warm, TranscriptionOptions())
        words = await run(plain, dithered(clips, 1), TranscriptionOptions(word_timestamps=True))
        baseline = await run(plain, dithered(clips, 2), TranscriptionOptions())
        speculative = await run(spec, dithered(clips, 3), TranscriptionOptions())
    finally:
        engine.shutdown()
    report = {"model": args.model, "clips": len(clips),
              "word_timestamps": word_boundary_error(clips, words["transcripts"]),
              "plain": baseline, "speculative": speculative}
    for key in ("plain", "speculative"):
        report[key].pop("transcripts")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tests/fixtures/tiny-granite-speech")
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/ctc.json"))
    args = parser.parse_args(argv)
    require("loadtest.ctc", commands=SYNTHESIZERS)
    report = asyncio.run(main_async(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
