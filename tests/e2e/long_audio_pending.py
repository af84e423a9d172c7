"""PENDING (not collected: the name does not match test_*.py): issue 5's long-audio tests.

On the trained model they found three open problems (see the issue note): the long file's WER
(0.068) is 4 points over the short clips' (0.028) where short utterances are merged or split at
0.5 s word gaps; one segment's timestamps fit no utterance; a stream plans head-first and so
cuts differently from the plain request. Rename to test_long_audio.py once they hold.
"""

from __future__ import annotations

import asyncio

import numpy as np
import psutil
import pytest

from tests.e2e.test_transcriptions import MODEL
from tools.long_audio import PlacedUtterance, long_recording
from tools.speech_corpus import SAMPLE_RATE, small_heldout_set, wav_bytes, word_error_rate

pytestmark = pytest.mark.asyncio(loop_scope="session")
DISTINCT = 16


@pytest.fixture(scope="module")
def recording() -> tuple[np.ndarray, list[PlacedUtterance]]:
    return long_recording(240, distinct=DISTINCT, seed=3)


async def transcribe(http, audio: np.ndarray, **data) -> dict:
    response = await http.post("/v1/audio/transcriptions",
                               files={"file": ("long.wav", wav_bytes(audio))},
                               data={"model": MODEL, "response_format": "verbose_json", **data})
    assert response.status_code == 200, response.text
    return response.json()


async def short_clip_wer(http) -> float:
    clips = small_heldout_set(n_speech=DISTINCT, n_empty=0, seed=3)
    texts = await asyncio.gather(*(transcribe(http, clip.audio) for clip in clips))
    return word_error_rate([c.text for c in clips], [t["text"] for t in texts])


async def test_long_file_wer_matches_short_clips(http, recording):
    audio, placed = recording
    body = await transcribe(http, audio)
    long_wer = word_error_rate([" ".join(p.text for p in placed)], [body["text"]])
    assert long_wer <= await short_clip_wer(http) + 0.01
    assert len(body["segments"]) >= len(placed) // 2, "cut in pauses, not in big blocks"


async def test_segment_timestamps_sit_on_the_utterances(http, recording):
    audio, placed = recording
    segments = (await transcribe(http, audio))["segments"]
    for segment in segments:
        inside = [p for p in placed if segment["start"] - 0.3 <= p.start and
                  p.end <= segment["end"] + 0.3]
        assert inside, segment
        assert abs(segment["start"] - inside[0].start) <= 0.3
        assert abs(segment["end"] - inside[-1].end) <= 0.3
    covered = sum(1 for p in placed if any(s["start"] - 0.3 <= p.start and p.end <= s["end"] + 0.3
                                           for s in segments))
    assert covered == len(placed)


async def test_streamed_long_file_equals_the_plain_transcript(http, recording):
    audio, _ = recording
    plain = (await transcribe(http, audio))["text"]
    streamed = await http.post("/v1/audio/transcriptions",
                               files={"file": ("long.wav", wav_bytes(audio))},
                               data={"model": MODEL, "stream": "true"})
    lines = [line for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert '"transcript.text.done"' in lines[-1]
    assert plain in lines[-1]


async def test_thirty_minutes_in_bounded_memory(http):
    audio, placed = long_recording(1800, distinct=DISTINCT, seed=4)
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, process.memory_info().rss)
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    try:
        body = await transcribe(http, audio)
    finally:
        watcher.cancel()
    assert body["duration"] >= 1800
    pcm_bytes = audio.size * 4
    assert peak - baseline < 3 * pcm_bytes, f"grew {(peak - baseline) / 2**20:.0f} MiB"
    reference = " ".join(p.text for p in placed)
    assert word_error_rate([reference], [body["text"]]) < 0.1
