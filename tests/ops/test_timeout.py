"""--request-timeout-seconds: past it the engine work is aborted, and the client gets
a 504 in OpenAI's envelope, or, once a stream began, a final error event.

How soon after the deadline the answer comes and the engine is idle again is measured,
not bounded, by ``python -m loadtest.timeout``."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from loadtest.timeout import stalled_upload
from tests.conftest import SegmentsCounted, engine_idle, live_server
from tests.ops.conftest import MODEL, assert_envelope, long_speech_wav, metrics, value

pytestmark = pytest.mark.asyncio(loop_scope="session")

AUDIO = "/v1/audio/transcriptions"
TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def long_upload(speech) -> bytes:
    """1200 s of speech in 2 s segments: several seconds of engine work on this machine
    (300 s took under the 1 s timeout once the encoder and the VAD got faster)."""
    return long_speech_wav(speech, 1200)


def assert_work_stopped_with_the_answer(counted: SegmentsCounted) -> None:
    """The answer is the end of the request's engine work: every segment request it had
    started was over by then (the timeout cancels the flow before it answers), none left
    running on."""
    assert counted.started > 0, "precondition: the upload reached the engine in time"
    assert counted.running == 0


async def test_a_request_past_its_timeout_gets_504_and_its_engine_work_stops(
        settings, engine, long_upload):
    strict = settings.model_copy(update={"max_segment_seconds": 2.0,
                                         "request_timeout_seconds": TIMEOUT_S})
    counted = SegmentsCounted(engine)
    async with live_server(strict, counted) as url, \
            httpx.AsyncClient(base_url=url, timeout=120) as client:
        started = time.monotonic()
        response = await client.post(AUDIO, files={"file": ("long.wav", long_upload)},
                                     data={"model": MODEL})
        elapsed = time.monotonic() - started
        assert_work_stopped_with_the_answer(counted)
        assert_envelope(response, 504, "request_timeout", "server_error")
        assert elapsed >= TIMEOUT_S  # not before its deadline
        assert await engine_idle(engine)
        samples = await metrics(client)
    assert value(samples, "granite_speech_requests_total", endpoint=AUDIO, method="POST",
                 status="504", response_format="json") == 1
    assert value(samples, "granite_speech_audio_transcribed_seconds_total", endpoint=AUDIO) == 0
    assert value(samples, "granite_speech_inflight_requests") == 0


async def test_a_stream_past_its_timeout_ends_with_an_error_event(settings, engine,
                                                                 long_upload):
    strict = settings.model_copy(update={"max_segment_seconds": 2.0,
                                         "request_timeout_seconds": TIMEOUT_S})
    counted = SegmentsCounted(engine)
    async with live_server(strict, counted) as url, \
            httpx.AsyncClient(base_url=url, timeout=120) as client:
        response = await client.post(AUDIO, files={"file": ("long.wav", long_upload)},
                                     data={"model": MODEL, "stream": "true"})
        assert_work_stopped_with_the_answer(counted)
        assert response.status_code == 200
        events = [json.loads(line.removeprefix("data: "))
                  for line in response.text.splitlines() if line]
        assert await engine_idle(engine)
    assert all(event["type"] == "transcript.text.delta" for event in events[:-1])
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["code"] == "request_timeout"
    assert events[-1]["error"]["type"] == "server_error"


async def test_an_upload_still_arriving_at_the_deadline_gets_504(settings, engine):
    """A client that stalls mid-upload doesn't hold its admission past the timeout."""
    strict = settings.model_copy(update={"request_timeout_seconds": TIMEOUT_S})
    async with live_server(strict, engine) as url:
        elapsed, status = await stalled_upload(url)
    assert status.startswith("HTTP/1.1 504")
    # Not before its deadline, which began as the server read the head, a moment before
    # the head was sent and the clock started.
    assert elapsed >= TIMEOUT_S - 0.2
