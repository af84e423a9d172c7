"""Uploads decoded and planned in preprocessing processes (``granite_speech_server.preprocess``):
the same answers as in the API process's threads, and every guarantee kept: refusals,
errors found late, a client that goes away, a process that dies."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time

import httpx
import numpy as np
import psutil
import pytest
import pytest_asyncio
import soundfile as sf

from granite_speech_server.audio.segment import PlanOptions
from granite_speech_server.preprocess.shared import UploadSpool
from tests import audio_samples
from tests.api.conftest import MODEL, api_settings, serving
from tests.api.fake_engine import FakeEngine
from tools.long_audio import long_recording
from tools.speech_corpus import wav_bytes

AUDIO = "/v1/audio/transcriptions"


@pytest.fixture(scope="module")
def long_mp3(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """90 s of utterances and pauses as mp3: past the decoded head, several windows."""
    samples, _ = long_recording(90, seed=5, distinct=12, pause_s=(0.6, 2.0))
    folder = tmp_path_factory.mktemp("preprocess")
    (folder / "long.wav").write_bytes(wav_bytes(samples))
    return audio_samples.encode(folder / "long.wav", "mp3", folder / "long.mp3").read_bytes()


@pytest_asyncio.fixture(scope="module")
async def processes(tokenizer):
    """An app with one preprocessing process, its engine, and a client."""
    engine = FakeEngine(tokenizer)
    async with serving(api_settings(preprocess_workers=1), engine) as client:
        yield client, engine, client._transport.app.state.server.preprocess  # noqa: SLF001


@pytest_asyncio.fixture(scope="module")
async def threads(tokenizer):
    engine = FakeEngine(tokenizer)
    async with serving(api_settings(), engine) as client:
        yield client, engine


def post(client: httpx.AsyncClient, data: bytes, name: str = "long.mp3", **fields: str):
    return client.post(AUDIO, files={"file": (name, data)},
                       data={"model": MODEL, "response_format": "verbose_json", **fields})


async def test_the_plan_and_the_audio_are_the_threads_own(processes, threads, long_mp3):
    (remote, remote_engine, _), (local, local_engine) = processes, threads
    remote_engine.requests.clear()
    local_engine.requests.clear()
    here, there = await post(local, long_mp3), await post(remote, long_mp3)
    assert here.status_code == there.status_code == 200
    spans = [(s["start"], s["end"]) for s in there.json()["segments"]]
    assert len(spans) > 3  # several windows of the plan
    assert spans == [(s["start"], s["end"]) for s in here.json()["segments"]]
    assert there.json()["duration"] == here.json()["duration"]
    sent = [r.audio for r in remote_engine.requests]
    assert len(sent) == len(local_engine.requests)
    for a, b in zip(sent, (r.audio for r in local_engine.requests)):
        np.testing.assert_array_equal(a, b)


async def test_a_stream_delivers_every_segment_in_order(processes, long_mp3):
    client, engine, _ = processes
    engine.requests.clear()
    response = await post(client, long_mp3, stream="true", response_format="json")
    events = [json.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: ")]
    assert events[-1]["type"] == "transcript.text.done"
    deltas = "".join(e["delta"] for e in events if e["type"] == "transcript.text.delta")
    assert deltas.strip() == events[-1]["text"]
    assert engine.requests and [r.priority for r in engine.requests] == \
        list(range(len(engine.requests)))


async def test_an_upload_refused_in_the_process_gets_its_own_error(processes):
    client, _, _ = processes
    response = await post(client, b"not audio at all" * 64, name="x.mp3")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_audio"


async def test_an_upload_broken_past_its_head_fails_late_with_its_error(tokenizer):
    """The head decodes; the rest, found too long while planning in the process, fails
    the plain request with a 400 and the stream with an error event."""
    speech, _ = long_recording(60, seed=2, distinct=6)
    buffer = io.BytesIO()
    sf.write(buffer, speech[: 60 * 16000], 16000, format="FLAC")
    lying = audio_samples.flac_declaring(buffer.getvalue(), 5 * 16000)
    settings = api_settings(preprocess_workers=1, max_audio_seconds=40,
                            max_inflight_audio_seconds=0)
    async with serving(settings, FakeEngine(tokenizer)) as client:
        plain = await post(client, lying, name="long.flac")
        assert plain.status_code == 400
        assert plain.json()["error"]["code"] == "audio_too_long"
        streamed = await post(client, lying, name="long.flac", stream="true",
                              response_format="json")
        assert streamed.status_code == 200  # the stream began before the end was decoded
        last = [line for line in streamed.text.splitlines() if line.startswith("data: ")][-1]
        assert json.loads(last[6:])["error"]["code"] == "audio_too_long"


def job_threads(pool) -> int:
    return psutil.Process(pool.workers[0].process.pid).num_threads()


async def until(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def spool_of(data: bytes) -> UploadSpool:
    """An upload spooled as the audio routes' parser spools it."""
    spool = UploadSpool()
    spool.write(data)
    return spool


async def test_closing_the_audio_stops_its_job_in_the_process(processes):
    """A client that goes away closes the request's audio: the job's decoder and planner
    in the process stop (its threads end) instead of reading on through the file."""
    _, _, pool = processes
    idle = job_threads(pool)
    samples, _ = long_recording(1800, seed=1, distinct=6)  # half an hour: long to decode
    decoded = await pool.decode(spool_of(wav_bytes(samples)), plan=PlanOptions(),
                                niceness=0,
                                head_s=20.0, max_duration_s=7200.0, min_duration_s=0.1)
    assert job_threads(pool) > idle  # the job and its decoder run on
    decoded.audio.close()
    await until(lambda: job_threads(pool) == idle)
    assert pool.workers[0].jobs == {}


async def test_a_process_that_dies_fails_its_requests_and_is_replaced(processes, long_mp3):
    client, engine, pool = processes
    engine.hold()  # requests wait in the engine while their process is killed
    try:
        request = asyncio.create_task(post(client, long_mp3))
        await until(lambda: pool.workers[0].jobs)
        os.kill(pool.workers[0].process.pid, signal.SIGKILL)
        await until(lambda: not pool.workers[0].jobs)
    finally:
        engine.release()
    response = await request
    assert response.status_code == 500
    assert "preprocessing process" in response.json()["error"]["message"]
    await until(lambda: pool.workers[0].alive)
    assert (await post(client, long_mp3)).status_code == 200
    assert (await client.get("/ready")).status_code == 200


async def test_the_process_maps_the_uploads_own_memory(processes, long_mp3, monkeypatch):
    """No copy of the upload: the process gets a descriptor of the very spool the parser
    wrote, and the API process keeps none once the job is sent."""
    _, _, pool = processes
    sent = []
    send_job = pool.workers[0].send_job

    def recording(job_id, job, fd):
        sent.append(os.fstat(fd).st_ino)
        send_job(job_id, job, fd)

    monkeypatch.setattr(pool.workers[0], "send_job", recording)
    spool = spool_of(long_mp3)
    decoded = await pool.decode(spool, plan=PlanOptions(), niceness=0, head_s=20.0)
    assert sent == [os.fstat(spool.fileno()).st_ino]
    spool.close()
    assert decoded.audio.whole().size > 0  # read from the spool after the API closed it
    decoded.audio.close()
