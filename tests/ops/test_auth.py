"""API keys on a live server: Bearer auth as the OpenAI SDK sends it, 401 in OpenAI's
envelope before the upload is read, probes and metrics open unless told otherwise."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import live_server
from tests.ops.conftest import MODEL, assert_envelope, headers_only

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEYS = ["key-alpha-0123456789", "key-beta-9876543210"]
OPEN = ["/health", "/ready", "/metrics", "/openapi.json", "/docs"]


async def test_requests_need_one_of_the_keys(settings, engine, speech_wav):
    keyed = settings.model_copy(update={"api_key": KEYS})
    async with live_server(keyed, engine) as url, httpx.AsyncClient(base_url=url) as client:
        files = {"file": ("speech.wav", speech_wav)}
        missing = await client.post("/v1/audio/transcriptions", files=files,
                                    data={"model": MODEL})
        error = assert_envelope(missing, 401, "invalid_api_key", "invalid_request_error")
        assert error["param"] is None
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = await client.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert_envelope(wrong, 401, "invalid_api_key")
        assert "nope" not in wrong.text
        for key in KEYS:
            ok = await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
        for path in OPEN:
            assert (await client.get(path)).status_code == 200, path


async def test_the_openai_sdk_sends_its_key_as_bearer(settings, engine, speech_wav):
    keyed = settings.model_copy(update={"api_key": KEYS})
    async with live_server(keyed, engine) as url:
        good = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEYS[1], max_retries=0)
        result = await good.audio.transcriptions.create(model=MODEL,
                                                        file=("speech.wav", speech_wav))
        assert isinstance(result.text, str)
        bad = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as refused:
            await bad.audio.transcriptions.create(model=MODEL, file=("speech.wav", speech_wav))
        assert refused.value.status_code == 401
        assert refused.value.code == "invalid_api_key"


async def test_auth_all_endpoints_closes_probes_metrics_and_docs(settings, engine):
    closed = settings.model_copy(update={"api_key": KEYS, "auth_all_endpoints": True})
    key = {"Authorization": f"Bearer {KEYS[0]}"}
    async with live_server(closed, engine, headers=key) as url, \
            httpx.AsyncClient(base_url=url) as client:
        for path in OPEN:
            assert_envelope(await client.get(path), 401, "invalid_api_key")
            authorized = await client.get(path, headers=key)
            assert authorized.status_code == 200, path


async def test_the_key_is_checked_before_the_upload_is_read(settings, engine):
    """Headers alone, announcing a 50 MB body that never comes: the 401 arrives anyway."""
    keyed = settings.model_copy(update={"api_key": KEYS})
    async with live_server(keyed, engine) as url:
        status, body = await headers_only(url, "/v1/audio/transcriptions", 50_000_000)
    assert status == 401
    assert json.loads(body)["error"]["code"] == "invalid_api_key"
