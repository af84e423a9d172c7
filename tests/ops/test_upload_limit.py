"""The upload limit, enforced while the body streams in, and the memory uploads are spooled
to: none outlives its request, however the request ends."""

from __future__ import annotations

import asyncio
import json
import os

import httpx
import pytest
from starlette.requests import Request

from granite_speech_server.api.upload_limit import InMemoryUploadRequest
from granite_speech_server.preprocess.shared import UPLOAD_MEMORY_NAME, UploadSpool
from tests.conftest import live_server
from tests.ops.conftest import MODEL, assert_envelope, headers_only, long_speech_wav

pytestmark = pytest.mark.asyncio(loop_scope="session")

AUDIO = "/v1/audio/transcriptions"
CHUNK = 64 * 1024


async def test_a_declared_length_over_the_limit_is_refused_before_the_body(settings, engine):
    small = settings.model_copy(update={"max_upload_mb": 1.0})
    async with live_server(small, engine) as url:
        status, body = await headers_only(url, AUDIO, 10_000_000_000)
    assert status == 413
    error = json.loads(body)["error"]
    assert (error["code"], error["type"], error["param"]) == (
        "upload_too_large", "invalid_request_error", "file")


async def test_a_streamed_body_is_refused_as_soon_as_it_crosses_the_limit(settings, engine):
    """Chunked, so no length is declared: the 413 arrives while the client is still
    sending, a chunk or two past the limit."""
    small = settings.model_copy(update={"max_upload_mb": 0.5})
    limit = 500_000 + 64 * 1024  # the file's limit plus room for the form around it
    async with live_server(small, engine) as url:
        status, body, sent = await _send_chunked_until_answered(url, total=20_000_000)
    assert status == 413 and json.loads(body)["error"]["code"] == "upload_too_large"
    assert limit < sent <= limit + 4 * CHUNK, sent


async def test_httpx_and_the_sdk_see_the_413(settings, engine, speech):
    import openai

    small = settings.model_copy(update={"max_upload_mb": 1.0})
    big = long_speech_wav(speech, 60)  # ~1.9 MB
    async with live_server(small, engine) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post(AUDIO, files={"file": ("big.wav", big)},
                                     data={"model": MODEL})
        assert_envelope(response, 413, "upload_too_large")
        sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as refused:
            await sdk.audio.transcriptions.create(model=MODEL, file=("big.wav", big))
        assert refused.value.status_code == 413


def _multipart_request(request_class: type[Request], upload: bytes) -> Request:
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"a.wav\"\r\n\r\n").encode() + upload + f"\r\n--{boundary}--\r\n".encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": AUDIO, "headers": [
        (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
        (b"content-length", str(len(body)).encode())]}
    return request_class(scope, receive)


async def test_the_audio_routes_spool_uploads_in_memory_a_process_can_map():
    """Starlette rolls an upload over 1 MB to a temporary file; the audio routes' request
    writes it into an ``UploadSpool`` (a memfd), whose descriptor goes to a preprocessing
    process as it is."""
    upload = os.urandom(3 * 2**20)
    async with _multipart_request(InMemoryUploadRequest, upload).form() as form:
        spool = form["file"].file
        assert isinstance(spool, UploadSpool) and spool.size == len(upload)
        assert os.readlink(f"/proc/self/fd/{spool.fileno()}").startswith("/memfd:")
        assert await form["file"].read() == upload
    assert spool.closed
    async with _multipart_request(Request, upload).form() as form:
        assert form["file"].file._rolled  # Starlette's own, for every other route


def test_importing_the_server_leaves_starlettes_parser_as_it_is():
    import subprocess
    import sys

    script = ("from starlette.formparsers import MultiPartParser as P; before = P.spool_max_size; "
              "import granite_speech_server.app, granite_speech_server.__main__; "
              "print(before, P.spool_max_size)")
    before, after = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                   text=True, check=True).stdout.split()
    assert after == before


def open_spools() -> list[str]:
    """This process's open upload spools (``UploadSpool``'s memfds)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"/memfd:{UPLOAD_MEMORY_NAME}"):
            found.append(target)
    return found


async def test_no_spooled_upload_outlives_its_request(settings, engine, speech):
    limited = settings.model_copy(update={"max_upload_mb": 6.0, "max_segment_seconds": 30.0})
    upload = long_speech_wav(speech, 90)  # 2.9 MB
    async with live_server(limited, engine) as url, \
            httpx.AsyncClient(base_url=url, timeout=300) as client:
        # The check can see a spooled upload: one held open mid-upload.
        reader, writer = await _start_multipart(url, len(upload))
        writer.write(upload[: 2_000_000])
        await writer.drain()
        for _ in range(100):
            if open_spools():
                break
            await asyncio.sleep(0.05)
        assert open_spools(), "precondition: the upload is spooled"
        writer.close()  # the client gives up mid-upload
        await _until_no_open_spools()

        ok = await client.post(AUDIO, files={"file": ("speech.wav", upload)},
                               data={"model": MODEL})
        assert ok.status_code == 200
        assert open_spools() == []

        garbage = await client.post(AUDIO, files={"file": ("x.wav", os.urandom(3_000_000))},
                                    data={"model": MODEL})
        assert garbage.status_code == 400
        assert open_spools() == []

        status, _, _ = await _send_chunked_until_answered(url, total=20_000_000)
        assert status == 413
        await _until_no_open_spools()


# --- raw HTTP ----------------------------------------------------------------------

BOUNDARY = "ops-test-boundary"


def _part_head() -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{MODEL}\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n").encode()


async def _start_multipart(url: str, file_size: int):
    """Open a multipart upload of a file of ``file_size`` bytes; the caller sends the file."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = _part_head()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    writer.write((f"POST {AUDIO} HTTP/1.1\r\nHost: {host}\r\n"
                  f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                  f"Content-Length: {len(head) + file_size + len(tail)}\r\n\r\n").encode() + head)
    await writer.drain()
    return reader, writer


async def _send_chunked_until_answered(url: str, total: int) -> tuple[int, bytes, int]:
    """Send a chunked multipart body (a file of zeros) a chunk at a time, looking for
    an answer after each one. Returns (status, body, bytes sent when it came)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write((f"POST {AUDIO} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
                  f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n").encode())
    sent = 0
    try:
        while sent < total:
            data = _part_head() if sent == 0 else b"\0" * CHUNK
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            sent += len(data)
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.05)
            except TimeoutError:
                continue
            status = int(head.split(b" ", 2)[1])
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            return status, await reader.readexactly(length), sent
    finally:
        writer.close()
    raise AssertionError(f"no answer after {sent} bytes")


async def _until_no_open_spools(timeout_s: float = 10) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if not open_spools():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still open: {open_spools()}")
