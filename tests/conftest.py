"""Shared fixtures. The expensive ones (the real vLLM engine, the live HTTP server)
are session-scoped: the engine starts once, on the project's tiny model."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import uvicorn

from granite_speech_server.app import create_app
from granite_speech_server.asr.engine import SpeechEngine
from granite_speech_server.asr.vllm_engine import VllmEngine
from granite_speech_server.audio.silero import SileroNetwork
from granite_speech_server.config import Settings

ROOT = Path(__file__).resolve().parents[1]
TRAINED_MODEL = ROOT / "tests" / "fixtures" / "tiny-granite-speech"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's tiny Granite speech checkpoint (random weights until the
    trained test model is committed)."""
    if (TRAINED_MODEL / "model.safetensors").is_file():
        return TRAINED_MODEL
    from tools import tiny_model

    out = tmp_path_factory.mktemp("tiny-granite-speech")
    tokenizer = tiny_model.build_tokenizer()
    model = tiny_model.build_model(tiny_model.build_config(tokenizer), seed=0)
    tiny_model.save_checkpoint(model, tokenizer, out)
    return out


@pytest.fixture(scope="session")
def vad_network() -> SileroNetwork:
    """Silero VAD's network, loaded once and handed in, as the app does at start-up."""
    return SileroNetwork()


@pytest.fixture(scope="session")
def settings(model_dir: Path) -> Settings:
    return Settings(model=str(model_dir), served_model_name=["tiny-granite-speech", "whisper-1"])


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def engine(settings: Settings) -> AsyncIterator[SpeechEngine]:
    speech_engine = await asyncio.to_thread(VllmEngine.start, settings)
    yield speech_engine
    speech_engine.shutdown()


@contextlib.asynccontextmanager
async def live_server(settings: Settings, engine: SpeechEngine,
                      headers: dict[str, str] | None = None) -> AsyncIterator[str]:
    """A real uvicorn server on a loopback port, in the tests' event loop, so tests
    can also call the very same engine directly. Yields its base URL once ready
    (asked with ``headers``, e.g. an API key when probes need one)."""
    app = create_app(settings, engine)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_ready(url, task, headers=headers)
        yield url
    finally:
        server.should_exit = True
        await task


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def server_url(settings: Settings, engine: SpeechEngine) -> AsyncIterator[str]:
    async with live_server(settings, engine) as url:
        yield url


@pytest_asyncio.fixture(loop_scope="session")
async def http(server_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server_url, timeout=120) as client:
        yield client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _wait_ready(url: str, task: asyncio.Task, timeout_s: float = 300,
                      headers: dict[str, str] | None = None) -> None:
    async with httpx.AsyncClient(base_url=url, headers=headers) as client:
        for _ in range(int(timeout_s * 10)):
            if task.done():
                task.result()
                raise RuntimeError("the server stopped during start-up")
            try:
                if (await client.get("/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"server at {url} not ready after {timeout_s} s")


class SegmentsCounted:
    """The engine, counting the segment requests the flow starts and how each ended: run
    to its last result, or closed early (which aborts it in vLLM)."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.started = self.completed = self.aborted = 0

    @property
    def running(self) -> int:
        return self.started - self.completed - self.aborted

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    async def generate(self, request, request_id=None):
        self.started += 1
        completed = False
        try:
            async for result in self._engine.generate(request, request_id):
                yield result
            completed = True
        finally:
            if completed:
                self.completed += 1
            else:
                self.aborted += 1


async def engine_idle(engine, deadline_s: float = 60) -> bool:
    """Nothing left in the engine; the deadline only ends a hang."""
    for _ in range(int(deadline_s / 0.05)):
        if engine.unfinished_requests == 0:
            return True
        await asyncio.sleep(0.05)
    return False
