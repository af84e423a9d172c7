"""GET /metrics after real requests on the real engine: every metric moves as it should."""

from __future__ import annotations

import asyncio
import io
import json

import httpx
import numpy as np
import pytest
import pytest_asyncio
import soundfile as sf

from tests import audio_samples
from tests.conftest import live_server
from tests.ops.conftest import MODEL, long_speech_wav, metrics, value, wav_bytes

pytestmark = pytest.mark.asyncio(loop_scope="session")

AUDIO = "/v1/audio/transcriptions"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(settings, engine):
    busy = settings.model_copy(update={"max_segment_seconds": 2.0})
    async with live_server(busy, engine) as url, \
            httpx.AsyncClient(base_url=url, timeout=300) as http:
        yield http


def post(client: httpx.AsyncClient, audio: bytes, name: str = "speech.wav", **data: str):
    return client.post(AUDIO, files={"file": (name, audio)}, data={"model": MODEL, **data})


async def test_exposition_is_prometheus_text(client):
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert "# TYPE granite_speech_requests_total counter" in response.text


async def test_requests_latency_audio_seconds_rtf_and_segments(client, speech, speech_wav):
    before = await metrics(client)
    for fmt in ("json", "verbose_json", "json"):
        assert (await post(client, speech_wav, response_format=fmt)).status_code == 200
    assert (await client.get("/v1/models")).status_code == 200
    assert (await post(client, speech_wav, model="nope")).status_code == 404
    after = await metrics(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = dict(endpoint=AUDIO, method="POST", status="200")
    assert moved("granite_speech_requests_total", **ok, response_format="json") == 2
    assert moved("granite_speech_requests_total", **ok, response_format="verbose_json") == 1
    assert moved("granite_speech_request_duration_seconds_count", **ok,
                 response_format="json") == 2
    assert moved("granite_speech_request_duration_seconds_sum", **ok, response_format="json") > 0
    assert moved("granite_speech_requests_total", endpoint="/v1/models", method="GET",
                 status="200", response_format="none") == 1
    assert moved("granite_speech_requests_total", endpoint=AUDIO, method="POST", status="404",
                 response_format="none") == 1

    seconds = len(speech) / 16000
    endpoint = dict(endpoint=AUDIO)
    assert moved("granite_speech_audio_received_seconds_total", **endpoint) == \
        pytest.approx(3 * seconds, abs=1e-3)
    assert moved("granite_speech_audio_transcribed_seconds_total", **endpoint) == \
        pytest.approx(3 * seconds, abs=1e-3)
    assert moved("granite_speech_real_time_factor_count", **endpoint) == 3
    assert moved("granite_speech_real_time_factor_sum", **endpoint) > 0
    assert moved("granite_speech_segments_per_request_count", **endpoint) == 3
    assert moved("granite_speech_segments_per_request_sum", **endpoint) >= 3


async def test_decode_failures_by_container_codec_and_reason(client, speech, tmp_path):
    video = audio_samples.video_only_mp4(tmp_path / "video.mp4").read_bytes()
    before = await metrics(client)
    assert (await post(client, b"this is not audio" * 50, name="x.mp3")).status_code == 400
    assert (await post(client, video, name="video.mp4")).status_code == 400
    assert (await post(client, wav_bytes(speech[:800]))).status_code == 400  # 0.05 s
    after = await metrics(client)
    for labels in [dict(container="unknown", codec="unknown", reason="invalid_audio"),
                   dict(container="mp4", codec="none", reason="invalid_audio"),
                   dict(container="wav", codec="pcm_s16le", reason="audio_too_short")]:
        name = "granite_speech_decode_failures_total"
        assert value(after, name, **labels) - value(before, name, **labels) == 1, labels
    assert value(after, "granite_speech_requests_total", endpoint=AUDIO, method="POST",
                 status="400", response_format="json") - value(
        before, "granite_speech_requests_total", endpoint=AUDIO, method="POST", status="400",
        response_format="json") == 3


async def test_a_long_upload_broken_past_its_head_fails_cleanly(settings, engine, speech):
    """Only the head of a long upload is decoded before the answer starts. This FLAC
    claims 5 s and runs 60, past the 40 s limit: found while the plan is running, the
    plain request still gets its 400, the stream an error event, and both count as
    decode failures."""
    buffer = io.BytesIO()
    sf.write(buffer, np.tile(speech, 60 * 16000 // len(speech) + 1)[: 60 * 16000], 16000,
             format="FLAC")
    lying = audio_samples.flac_declaring(buffer.getvalue(), 5 * 16000)
    limited = settings.model_copy(update={"max_audio_seconds": 40,
                                          "max_inflight_audio_seconds": 0})
    name = "granite_speech_decode_failures_total"
    labels = dict(container="flac", codec="flac", reason="audio_too_long")
    async with live_server(limited, engine) as url, \
            httpx.AsyncClient(base_url=url, timeout=300) as http:
        before = value(await metrics(http), name, **labels)
        plain = await post(http, lying, name="long.flac")
        assert plain.status_code == 400
        assert plain.json()["error"]["code"] == "audio_too_long"
        streamed = await post(http, lying, name="long.flac", stream="true")
        assert streamed.status_code == 200  # the stream began before the end was decoded
        events = [json.loads(line[len("data: "):]) for line in streamed.text.splitlines()
                  if line.startswith("data: ")]
        assert events[-1]["type"] == "error"
        assert events[-1]["error"]["code"] == "audio_too_long"
        assert (await http.get("/ready")).status_code == 200
        assert value(await metrics(http), name, **labels) - before == 2


async def test_time_to_first_delta_and_stream_completion(client, speech_wav):
    before = await metrics(client)
    response = await post(client, speech_wav, stream="true")
    assert response.status_code == 200
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line]
    deltas = [event for event in events if event["type"] == "transcript.text.delta"]
    assert events[-1]["type"] == "transcript.text.done"
    after = await metrics(client)
    name = "granite_speech_time_to_first_delta_seconds_count"
    assert value(after, name, endpoint=AUDIO) - value(before, name, endpoint=AUDIO) == \
        (1 if deltas else 0)
    assert value(after, "granite_speech_requests_total", endpoint=AUDIO, method="POST",
                 status="200", response_format="sse") - value(
        before, "granite_speech_requests_total", endpoint=AUDIO, method="POST", status="200",
        response_format="sse") == 1
    transcribed = "granite_speech_audio_transcribed_seconds_total"
    assert value(after, transcribed, endpoint=AUDIO) > value(before, transcribed, endpoint=AUDIO)


async def test_in_flight_gauges_and_engine_queue_while_a_request_runs(client, speech):
    """Many 2 s segments of a 120 s upload keep the engine's scheduler busy, in bursts
    between the API process's own steps (decode, VAD, rendering): scrape as often as the
    loop allows, and send the upload again if all its bursts fell between scrapes."""
    upload = long_speech_wav(speech, 120)
    seen_inflight = seen_engine = 0.0
    for _ in range(3):
        request = asyncio.create_task(post(client, upload))
        while not request.done() and not (seen_inflight and seen_engine):
            samples = await metrics(client)
            if value(samples, "granite_speech_inflight_audio_seconds"):
                seen_inflight = value(samples, "granite_speech_inflight_audio_seconds")
                assert value(samples, "granite_speech_inflight_requests") == 1
            seen_engine = max(seen_engine,
                              value(samples, "granite_speech_engine_requests", state="running")
                              + value(samples, "granite_speech_engine_requests", state="waiting"))
        assert (await request).status_code == 200
        if seen_engine:
            break
    assert seen_inflight == pytest.approx(120, abs=0.01)
    assert seen_engine > 0
    idle = await metrics(client)
    assert value(idle, "granite_speech_inflight_requests") == 0
    assert value(idle, "granite_speech_inflight_audio_seconds") == 0
    assert value(idle, "granite_speech_engine_requests", state="running") == 0
    assert value(idle, "granite_speech_engine_requests", state="waiting") == 0

