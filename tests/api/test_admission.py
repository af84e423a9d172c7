"""The gate and the readiness answer on a fake engine: 429 beyond the limits, 503 while
starting and once the engine died; a refused request never reaches the engine."""

from __future__ import annotations

import asyncio
import re

from tests.api.conftest import api_settings, post, serving, until_ready


def rejections(scraped: str, limit: str) -> float:
    match = re.search(rf'granite_speech_admission_rejections_total{{limit="{limit}"}} (\S+)',
                      scraped)
    return float(match.group(1)) if match else 0.0


async def test_beyond_the_request_limit_is_a_429_with_retry_after(fake_engine, speech_wav):
    async with serving(api_settings(max_concurrent_requests=1), fake_engine) as client:
        fake_engine.hold()
        first = asyncio.create_task(post(client, speech_wav))
        await fake_engine.arrived.wait()
        refused = await post(client, speech_wav)
        fake_engine.release()
        assert (await first).status_code == 200
        again = await post(client, speech_wav)  # the slot was released
        scraped = (await client.get("/metrics")).text
    assert refused.status_code == 429 and refused.headers["retry-after"]
    assert refused.json()["error"]["type"] == "requests"
    assert refused.json()["error"]["code"] == "overloaded"
    assert again.status_code == 200
    assert len(fake_engine.requests) == 2
    assert rejections(scraped, "requests") == 1


async def test_beyond_the_audio_in_flight_is_a_429(fake_engine, speech_wav):
    settings = api_settings(max_inflight_audio_seconds=5, max_audio_seconds=5)
    async with serving(settings, fake_engine) as client:
        fake_engine.hold()
        first = asyncio.create_task(post(client, speech_wav))  # ~3 s of audio
        await fake_engine.arrived.wait()
        refused = await post(client, speech_wav)
        fake_engine.release()
        assert (await first).status_code == 200
        scraped = (await client.get("/metrics")).text
    assert refused.status_code == 429 and refused.headers["retry-after"]
    assert refused.json()["error"]["type"] == "audio_seconds"
    assert len(fake_engine.requests) == 1
    assert rejections(scraped, "audio_seconds") == 1


async def test_before_the_warm_up_answered_requests_are_503_not_ready(fake_engine,
                                                                      speech_wav):
    fake_engine.hold()  # the warm-up request waits in the engine
    async with serving(api_settings(), fake_engine, wait_ready=False) as client:
        ready = await client.get("/ready")
        refused = await post(client, speech_wav)
        fake_engine.release()
        await until_ready(client)
        served = await post(client, speech_wav)
    assert (ready.status_code, ready.json()) == (503, {"status": "starting"})
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert refused.json()["error"]["code"] == "not_ready"
    assert served.status_code == 200
    assert len(fake_engine.requests) == 1


async def test_once_the_engine_died_requests_are_503_engine_unavailable(fake_engine,
                                                                        speech_wav):
    async with serving(api_settings(), fake_engine) as client:
        fake_engine.alive = False
        ready = await client.get("/ready")
        refused = await post(client, speech_wav)
        health = await client.get("/health")
    assert (ready.status_code, ready.json()) == (503, {"status": "engine_dead"})
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "engine_unavailable"
    assert health.status_code == 200  # liveness is the process's, not the engine's
    assert fake_engine.requests == []


async def test_other_routes_pass_the_gate_while_not_ready(fake_engine):
    fake_engine.hold()
    async with serving(api_settings(), fake_engine, wait_ready=False) as client:
        models = await client.get("/v1/models")
        fake_engine.release()
    assert models.status_code == 200
    assert [card["id"] for card in models.json()["data"]] == ["tiny-granite-speech", "whisper-1"]
