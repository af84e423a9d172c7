"""Long audio on the trained test model: a ten-minute file of 130 known held-out utterances
and pauses, over a continuous noise floor (tools/long_audio.py), and half an hour for memory.

The short-clip baseline is the very same samples: each utterance's clip cut back out of the
long file and sent alone. So the two WERs differ only by how the server cut the long file.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import psutil
import pytest
import pytest_asyncio
import srt
import webvtt

from granite_speech_server.preprocess import worker
from tests.e2e.test_transcriptions import MODEL
from tools.long_audio import PlacedUtterance, long_recording
from tools.speech_corpus import wav_bytes, word_error_rate

pytestmark = pytest.mark.asyncio(loop_scope="session")
TOLERANCE_S = 0.3
WORKER_MODULE = worker.__name__


@pytest.fixture(scope="module")
def recording() -> tuple[np.ndarray, list[PlacedUtterance]]:
    return long_recording(600, distinct=130, seed=3)


async def transcribe(http, wav: bytes, **data):
    response = await http.post("/v1/audio/transcriptions", files={"file": ("long.wav", wav)},
                               data={"model": MODEL, **data}, timeout=600)
    assert response.status_code == 200, response.text
    return response


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def verbose(server_url, recording) -> dict:
    """The long file's plain verbose_json transcript, which several tests read."""
    audio, _ = recording
    async with httpx.AsyncClient(base_url=server_url) as client:
        response = await transcribe(client, wav_bytes(audio), response_format="verbose_json")
    return response.json()


async def test_long_file_wer_is_within_a_point_of_the_same_clips_sent_alone(
        http, recording, verbose):
    audio, placed = recording
    limit = asyncio.Semaphore(8)

    async def alone(utterance: PlacedUtterance) -> str:
        async with limit:
            return (await transcribe(http, wav_bytes(utterance.excerpt(audio)))).json()["text"]

    short = await asyncio.gather(*(alone(p) for p in placed))
    references = [p.text for p in placed]
    short_wer = word_error_rate(references, short)
    long_wer = word_error_rate([" ".join(references)], [verbose["text"]])
    assert long_wer <= short_wer + 0.01, (long_wer, short_wer)
    assert len(verbose["segments"]) >= len(placed) * 0.9, "cut in the pauses, not in blocks"


async def test_segment_timestamps_sit_on_the_true_speech_boundaries(recording, verbose):
    _, placed = recording
    assert_on_speech_edges([(s["start"], s["end"]) for s in verbose["segments"]], placed)


async def test_subtitle_cues_sit_on_the_true_speech_boundaries(http, recording):
    audio, placed = recording
    wav = wav_bytes(audio)
    srt_cues = list(srt.parse((await transcribe(http, wav, response_format="srt")).text))
    vtt_cues = webvtt.from_string((await transcribe(http, wav, response_format="vtt")).text)
    assert_on_speech_edges([(c.start.total_seconds(), c.end.total_seconds())
                            for c in srt_cues], placed)
    assert_on_speech_edges([(_seconds(c.start), _seconds(c.end)) for c in vtt_cues], placed)


def assert_on_speech_edges(spans: list[tuple[float, float]], placed: list[PlacedUtterance]):
    """Every utterance begins one span and ends one, and no span begins or ends away from
    a word's edge: a long pause between two words of an utterance may cut it, the middle
    of a word or of a pause may not."""
    starts, ends = [a for a, _ in spans], [b for _, b in spans]
    for utterance in placed:
        assert min(abs(t - utterance.start) for t in starts) <= TOLERANCE_S, utterance
        assert min(abs(t - utterance.end) for t in ends) <= TOLERANCE_S, utterance
    onsets = [w[1] for p in placed for w in p.words]
    offsets = [w[2] for p in placed for w in p.words]
    for start, end in spans:
        assert min(abs(start - t) for t in onsets) <= TOLERANCE_S, (start, end)
        assert min(abs(end - t) for t in offsets) <= TOLERANCE_S, (start, end)


def _seconds(timestamp: str) -> float:
    hours, minutes, seconds = timestamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


async def test_a_stream_cuts_and_says_what_the_plain_request_says(http, recording, verbose):
    audio, _ = recording
    streamed = await transcribe(http, wav_bytes(audio), stream="true")
    lines = [line for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert '"transcript.text.done"' in lines[-1]
    deltas = "".join(_delta(line) for line in lines[:-1])
    assert deltas == verbose["text"]


def _delta(line: str) -> str:
    event = json.loads(line.removeprefix("data: "))
    return event["delta"] if event["type"] == "transcript.text.delta" else ""


def server_memory() -> int:
    """Proportional set size of this process (the app runs in it) and its preprocessing
    processes: memory both map (a recording's samples) counts once."""
    processes = [psutil.Process(), *(child for child in psutil.Process().children()
                                     if WORKER_MODULE in child.cmdline())]
    assert len(processes) > 1, "no preprocessing processes beside the app"
    return sum(int(line.split()[1]) * 1024
               for process in processes
               for line in open(f"/proc/{process.pid}/smaps_rollup")
               if line.startswith("Pss:"))


async def test_half_an_hour_in_bounded_memory(http):
    audio, placed = long_recording(1800, distinct=40, seed=4)
    wav = wav_bytes(audio)
    baseline = peak = server_memory()

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, server_memory())
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    try:
        body = (await transcribe(http, wav, response_format="verbose_json")).json()
    finally:
        watcher.cancel()
    assert body["duration"] >= 1800
    pcm_bytes = audio.size * 4  # float32 at 16 kHz: what the server decodes to
    # Measured: 213 MiB for 110 MiB of PCM (the upload's bytes while decoding, the samples).
    assert peak - baseline < 2.2 * pcm_bytes, f"grew {(peak - baseline) / 2**20:.0f} MiB"
    reference = " ".join(p.text for p in placed)
    assert word_error_rate([reference], [body["text"]]) < 0.05
