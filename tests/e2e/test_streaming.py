"""stream=true: OpenAI's transcript.text.* events, readable by the SDK; disconnects abort."""

from __future__ import annotations

import json

import httpx
import numpy as np
import openai
import pytest

from granite_speech_server.audio.decode import decode_audio
from tests.conftest import SegmentsCounted, engine_idle, live_server
from tests.e2e.test_transcriptions import MODEL, wav_bytes

pytestmark = pytest.mark.asyncio(loop_scope="session")


def parse_events(body: str) -> list[dict]:
    lines = [line for line in body.splitlines() if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [json.loads(line.removeprefix("data: ")) for line in lines]


async def test_stream_deltas_add_up_to_the_done_text_and_the_json_text(http, speech_files):
    form = {"file": ("speech.mp3", speech_files["mp3"])}
    streamed = await http.post("/v1/audio/transcriptions", files=form,
                               data={"model": MODEL, "stream": "true"})
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = parse_events(streamed.text)
    *deltas, done = events
    assert all(event["type"] == "transcript.text.delta" for event in deltas)
    assert done["type"] == "transcript.text.done"
    assert "".join(event["delta"] for event in deltas) == done["text"]
    assert done["usage"]["type"] == "tokens" and done["usage"]["output_tokens"] >= len(deltas)

    plain = await http.post("/v1/audio/transcriptions", files=form, data={"model": MODEL})
    assert plain.json()["text"] == done["text"]
    assert plain.json()["usage"]["input_tokens"] == done["usage"]["input_tokens"]


async def test_the_openai_sdk_reads_the_stream(server_url, speech_files):
    client = openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0)
    stream = await client.audio.transcriptions.create(
        model=MODEL, file=("speech.wav", speech_files["wav"]), stream=True,
        include=["logprobs"],
    )
    events = [event async for event in stream]
    assert events[-1].type == "transcript.text.done"
    text = "".join(e.delta for e in events if e.type == "transcript.text.delta")
    assert text == events[-1].text
    assert events[-1].usage.input_tokens > 0


@pytest.mark.parametrize("fmt", ["srt", "vtt", "verbose_json"])
async def test_streaming_a_subtitle_format_is_refused(http, speech_files, fmt):
    response = await http.post("/v1/audio/transcriptions",
                               files={"file": ("speech.wav", speech_files["wav"])},
                               data={"model": MODEL, "stream": "true", "response_format": fmt})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "stream"


async def test_a_client_that_disconnects_aborts_its_engine_requests(engine, settings,
                                                                    speech_files):
    """Many short segments of speech keep the engine busy well past the first delta."""
    busy = settings.model_copy(update={"max_segment_seconds": 2.0})
    speech = decode_audio(speech_files["wav"]).samples
    audio = np.tile(speech, 120 * 16000 // len(speech) + 1)
    counted = SegmentsCounted(engine)
    async with live_server(busy, counted) as url, httpx.AsyncClient(base_url=url) as client:
        async with client.stream("POST", "/v1/audio/transcriptions",
                                 files={"file": ("long.wav", wav_bytes(audio))},
                                 data={"model": MODEL, "stream": "true"}) as response:
            assert response.status_code == 200
            async for _ in response.aiter_lines():
                break
            assert counted.running > 0, "precondition: segments still running"
        assert await engine_idle(engine)
    # Run to their end, they would all have completed.
    assert counted.aborted > 0 and counted.running == 0
