"""The whole app on a scripted engine (``FakeEngine``): no vLLM, a request in milliseconds.

Apps are driven in-process over ``httpx.ASGITransport``, with raw requests and with the
real ``openai.AsyncOpenAI`` client (as speaches tests its server)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from transformers import AutoTokenizer

from granite_speech_server.app import create_app
from granite_speech_server.config import Settings
from tests import audio_samples
from tests.api.fake_engine import FakeEngine
from tests.conftest import TRAINED_MODEL

MODEL = "tiny-granite-speech"
SPEECH_TEXT = "three one four one five nine two six"
BASE_URL = "http://test"


def api_settings(**changes: Any) -> Settings:
    """Uploads are decoded in the app's own threads unless a test asks for processes
    (``preprocess_workers``): starting them takes seconds per app. tests/api/
    test_preprocess.py runs the HTTP layer through them, and the e2e tests' server
    has them as a user's does."""
    return Settings(model=str(TRAINED_MODEL), served_model_name=[MODEL, "whisper-1"],
                    **{"preprocess_workers": 0, **changes})


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(TRAINED_MODEL)


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A few seconds of espeak-ng speech: the speech detector plans one segment of it."""
    path = tmp_path_factory.mktemp("api-speech") / "speech.wav"
    return audio_samples.synthesize_speech(SPEECH_TEXT, path).read_bytes()


@pytest.fixture
def fake_engine(tokenizer: Any) -> FakeEngine:
    return FakeEngine(tokenizer)


@contextlib.asynccontextmanager
async def serving(settings: Settings, engine: FakeEngine, *,
                  wait_ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running (as uvicorn would run it), and a client of it."""
    app = create_app(settings, engine)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as client:
        if wait_ready:
            await until_ready(client)
        yield client


async def until_ready(client: httpx.AsyncClient) -> None:
    for _ in range(1000):
        if (await client.get("/ready")).status_code == 200:
            return
        await asyncio.sleep(0.01)
    raise RuntimeError("the app never became ready on the fake engine")


@pytest_asyncio.fixture
async def client(fake_engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(api_settings(), fake_engine) as http:
        yield http


def sdk(client: httpx.AsyncClient) -> openai.AsyncOpenAI:
    """The official client, over the same in-process transport."""
    return openai.AsyncOpenAI(base_url=f"{BASE_URL}/v1", api_key="unused", max_retries=0,
                              http_client=client)


async def post(client: httpx.AsyncClient, audio: bytes | None, form: dict | None = None, *,
               path: str = "/v1/audio/transcriptions") -> httpx.Response:
    """A raw multipart request (a list value repeats its field), for ``MODEL`` unless
    ``form`` names another."""
    files = {"file": ("speech.wav", audio)} if audio is not None else None
    return await client.post(path, files=files, data={"model": MODEL, **(form or {})})
