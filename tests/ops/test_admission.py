"""Admission control on a live server: a flood gets immediate 429s while every
accepted request completes correctly; audio seconds in flight are bounded; the
admission is given back however a request ends."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from tests.conftest import live_server
from tests.ops.conftest import (
    MODEL,
    assert_envelope,
    headers_only,
    long_speech_wav,
    metrics,
    value,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

AUDIO = "/v1/audio/transcriptions"


def post(client: httpx.AsyncClient, audio: bytes, **data: str):
    return client.post(AUDIO, files={"file": ("speech.wav", audio)},
                       data={"model": MODEL, **data})


async def test_a_flood_gets_429s_and_every_accepted_request_completes(settings, engine,
                                                                     speech_wav):
    limited = settings.model_copy(update={"max_concurrent_requests": 3})
    async with live_server(limited, engine) as url, \
            httpx.AsyncClient(base_url=url, timeout=300) as client:
        single = await post(client, speech_wav)
        assert single.status_code == 200
        responses = await asyncio.gather(*(post(client, speech_wav) for _ in range(12)))
        samples = await metrics(client)
    statuses = Counter(response.status_code for response in responses)
    assert set(statuses) == {200, 429}, statuses
    assert statuses[200] >= 3 and statuses[429] >= 1
    for response in responses:
        if response.status_code == 429:
            assert_envelope(response, 429, "overloaded", "requests")
            assert response.headers["retry-after"] == "1"
        else:
            assert response.json()["text"] == single.json()["text"]
    assert value(samples, "granite_speech_admission_rejections_total",
                 limit="requests") == statuses[429]
    assert value(samples, "granite_speech_inflight_requests") == 0


async def test_a_client_that_sends_its_next_request_at_once_finds_the_slot_free(
        settings, engine, speech_wav):
    single = settings.model_copy(update={"max_concurrent_requests": 1})
    async with live_server(single, engine) as url, \
            httpx.AsyncClient(base_url=url, timeout=300) as client:
        for stream in ("false", "true", "false", "true", "false"):
            assert (await post(client, speech_wav, stream=stream)).status_code == 200


async def test_the_concurrency_bound_answers_before_the_body_is_read(settings, engine,
                                                                     speech, speech_wav):
    limited = settings.model_copy(update={"max_concurrent_requests": 1,
                                          "max_segment_seconds": 2.0})
    async with live_server(limited, engine) as url, \
            httpx.AsyncClient(base_url=url, timeout=300) as client:
        running = asyncio.create_task(post(client, long_speech_wav(speech, 120)))
        await _until(client, lambda s: value(s, "granite_speech_inflight_requests") == 1)
        status, _ = await headers_only(url, AUDIO, 50_000_000)
        assert status == 429
        assert (await running).status_code == 200


async def test_audio_seconds_in_flight_are_bounded(settings, engine, speech, speech_wav):
    bounded = settings.model_copy(update={"max_segment_seconds": 2.0, "max_audio_seconds": 150,
                                          "max_inflight_audio_seconds": 150})
    long = long_speech_wav(speech, 120)
    async with live_server(bounded, engine) as url, \
            httpx.AsyncClient(base_url=url, timeout=300) as client:
        first = asyncio.create_task(post(client, long))
        await _until(client, lambda s: value(s, "granite_speech_inflight_audio_seconds") == 120)
        second = await post(client, long)  # 120 + 120 > 150
        assert_envelope(second, 429, "overloaded", "audio_seconds")
        assert second.headers["retry-after"] == "1"
        small = await post(client, speech_wav)  # 120 + 3 fits
        assert small.status_code == 200
        assert (await first).status_code == 200
        retried = await post(client, long)
        assert retried.status_code == 200
        samples = await metrics(client)
    assert value(samples, "granite_speech_admission_rejections_total",
                 limit="audio_seconds") == 1
    assert value(samples, "granite_speech_inflight_audio_seconds") == 0


async def test_admission_is_given_back_however_a_request_ends(settings, engine, speech):
    """Success, a refused upload, a client gone mid-stream: nothing stays in flight."""
    busy = settings.model_copy(update={"max_segment_seconds": 2.0})
    async with live_server(busy, engine) as url, \
            httpx.AsyncClient(base_url=url, timeout=300) as client:
        assert (await post(client, b"not audio at all" * 100)).status_code == 400
        assert (await post(client, long_speech_wav(speech, 5), model="nope")).status_code == 404
        # Long enough to still run when checked: 2 s segments go fast on the test model.
        async with client.stream("POST", AUDIO, files={"file": ("long.wav",
                                                                long_speech_wav(speech, 300))},
                                 data={"model": MODEL, "stream": "true"}) as response:
            assert response.status_code == 200
            # Held, not left with `break`: a dropped line iterator is finalized and closes
            # the response, and the server would see the client go before the check.
            lines = response.aiter_lines()
            await anext(lines)
            samples = await metrics(client)
            assert value(samples, "granite_speech_inflight_requests") == 1
            assert value(samples, "granite_speech_inflight_audio_seconds") == \
                pytest.approx(300, abs=0.01)
        idle = await _until(client, lambda s: value(s, "granite_speech_inflight_requests") == 0)
    assert value(idle, "granite_speech_inflight_audio_seconds") == 0
    assert value(idle, "granite_speech_requests_total", endpoint=AUDIO, method="POST",
                 status="499", response_format="sse") == 1


async def _until(client: httpx.AsyncClient, condition, timeout_s: float = 30) -> dict:
    for _ in range(int(timeout_s / 0.05)):
        samples = await metrics(client)
        if condition(samples):
            return samples
        await asyncio.sleep(0.05)
    raise TimeoutError("the metrics never showed the expected state")
