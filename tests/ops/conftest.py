"""Helpers for the operations tests: speech of any length, metric scraping, and a
server run as its own process (for the tests that kill its engine or signal it)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from prometheus_client.parser import text_string_to_metric_families

from granite_speech_server.audio.decode import decode_audio
from tests import audio_samples
from tests.conftest import ROOT, _free_port

MODEL = "tiny-granite-speech"
SPEECH_TEXT = "three one four one five nine two six"


def wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """One espeak-ng utterance, 16 kHz float32."""
    out = tmp_path_factory.mktemp("ops-speech")
    wav = audio_samples.synthesize_speech(SPEECH_TEXT, out / "speech.wav")
    return decode_audio(Path(wav).read_bytes()).samples


@pytest.fixture(scope="session")
def speech_wav(speech: np.ndarray) -> bytes:
    return wav_bytes(speech)


def long_speech_wav(speech: np.ndarray, seconds: float) -> bytes:
    """The utterance repeated (pauses between repeats) to ``seconds`` of audio."""
    repeats = int(seconds * 16000) // len(speech) + 1
    return wav_bytes(np.tile(speech, repeats)[: int(seconds * 16000)])


def scrape(text: str) -> dict[tuple[str, tuple], float]:
    """Exposition text -> {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series doesn't exist (yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def metrics(client: httpx.AsyncClient) -> dict[tuple[str, tuple], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return scrape(response.text)


def assert_envelope(response: httpx.Response, status: int, code: str,
                    error_type: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]
    if error_type is not None:
        assert error["type"] == error_type
    return error


async def headers_only(url: str, path: str, content_length: int, *,
                       headers: dict[str, str] | None = None,
                       timeout_s: float = 10) -> tuple[int, bytes]:
    """POST the request line and headers (announcing ``content_length`` bytes of
    multipart body) and none of the body; return the status and body the server
    answers with regardless. A server that waited for the body would time out here."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {content_length}",
             "Content-Type: multipart/form-data; boundary=x",
             *(f"{name}: {value}" for name, value in (headers or {}).items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        body = await asyncio.wait_for(reader.readexactly(length), timeout_s)
    finally:
        writer.close()
    return status, body


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    url: str
    log_path: Path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)


@contextlib.contextmanager
def server_process(model_dir: Path, log_dir: Path, *args: str,
                   ready_timeout_s: float = 420) -> Iterator[ServerProcess]:
    """``python -m granite_speech_server`` on a free port, in its own process group; yields once /ready
    says 200. On the way out, whatever is left of the group (the server, its engine
    core and workers) is killed."""
    port = _free_port()
    log_path = log_dir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "granite_speech_server", "--model", str(model_dir), "--host", "127.0.0.1",
           "--port", str(port), "--served-model-name", MODEL, "--log-format", "json", *args]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        _wait_ready(server, ready_timeout_s)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _wait_ready(server: ServerProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited ({server.proc.returncode}) during start-up:\n"
                               f"{server.logs()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{server.url}/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"server not ready after {timeout_s} s:\n{server.logs()[-3000:]}")
