"""The process's life, on a server run as its own process: SIGTERM drains it (readiness
503, new requests refused, in-flight ones finished, exit 0); an engine that dies fails
its requests with 503, readiness with it, and the process exits non-zero."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import psutil
import pytest
import soxr
from websockets.exceptions import ConnectionClosed

from tests.ops.conftest import (
    MODEL,
    assert_envelope,
    long_speech_wav,
    scrape,
    server_process,
    value,
)

KEYS = ["ops-key-one", "ops-key-two"]
AUTH = {"Authorization": f"Bearer {KEYS[1]}"}
AUDIO = "/v1/audio/transcriptions"
# Two sequences at a time in the engine: a long upload's ~750 two-second segments then
# take it many seconds however fast the engine's steps are.
ARGS = ("--max-segment-seconds", "2", "--max-num-seqs", "2", "--shutdown-delay-seconds", "3",
        "--shutdown-grace-seconds", "60", "--request-timeout-seconds", "0")


@pytest.fixture
def keys_in_env(monkeypatch):
    """The server process inherits the keys as GRANITE_SPEECH_API_KEY (a comma list)."""
    monkeypatch.setenv("GRANITE_SPEECH_API_KEY", ",".join(KEYS))


def post(url: str, upload: bytes, timeout: float = 300) -> httpx.Response:
    return httpx.post(f"{url}{AUDIO}", files={"file": ("speech.wav", upload)},
                      data={"model": MODEL}, headers=AUTH, timeout=timeout)


def in_background(call, *args) -> Future:
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(call, *args)
    pool.shutdown(wait=False)
    return future


def wait_for(call, condition, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = call()
        if condition(result):
            return result
        time.sleep(0.05)
    raise TimeoutError("the server never showed the expected state")


def wait_for_metric(url: str, condition, timeout_s: float = 60) -> dict:
    return wait_for(lambda: scrape(httpx.get(f"{url}/metrics", timeout=5).text), condition,
                    timeout_s)


def json_log_lines(text: str) -> list[dict]:
    """The JSON log lines (vLLM's engine processes may add plain ones of their own)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_sigterm_drains_finishes_in_flight_work_and_exits_zero(model_dir, tmp_path, speech,
                                                               keys_in_env):
    # Long enough to outlast the 3 s shutdown delay on a fast machine: ~750 two-second
    # segments, two at a time (ARGS).
    seconds = 1500
    upload = long_speech_wav(speech, seconds)
    with server_process(model_dir, tmp_path, *ARGS) as server:
        running = in_background(post, server.url, upload)
        wait_for_metric(server.url, lambda s: value(s, "granite_speech_inflight_requests") == 1)
        server.proc.send_signal(signal.SIGTERM)

        ready = wait_for(lambda: httpx.get(f"{server.url}/ready", timeout=5),
                         lambda r: r.status_code == 503)
        assert ready.json() == {"status": "draining"}
        refused = post(server.url, long_speech_wav(speech, 3), timeout=30)
        assert_envelope(refused, 503, "shutting_down", "server_error")
        assert refused.headers["retry-after"]
        assert not running.done(), "precondition: the request is still in flight"

        listener_closed_while_running = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{server.url}/health", timeout=2)
            # Refused, or accepted into the backlog just as the listener closed and dropped
            # (closed without an answer, or reset).
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
                listener_closed_while_running = not running.done()
                break
            time.sleep(0.1)
        assert listener_closed_while_running, "the listener closed with the request in flight"

        response = running.result(timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["seconds"] == pytest.approx(seconds, abs=0.01)
        assert server.wait(timeout=90) == 0
        logs = server.logs()
    entries = json_log_lines(logs)
    assert any("draining" in entry["message"] for entry in entries)
    access = [entry for entry in entries if entry["logger"] == "granite_speech.access"]
    assert {(entry["path"], entry["status"]) for entry in access} >= {(AUDIO, 200), (AUDIO, 503)}
    assert all(key not in logs for key in KEYS)


def engine_core(server_pid: int) -> psutil.Process:
    for child in psutil.Process(server_pid).children(recursive=True):
        with_cmdline = " ".join([child.name(), *child.cmdline()])
        if "EngineCore" in with_cmdline:
            return child
    raise LookupError("no EngineCore process under the server")


def test_engine_death_fails_the_request_with_503_and_the_process_exits_nonzero(
        model_dir, tmp_path, speech, keys_in_env):
    # Long enough to outlast the 3 s shutdown delay on a fast machine: ~750 two-second
    # segments, two at a time (ARGS).
    seconds = 1500
    upload = long_speech_wav(speech, seconds)
    with server_process(model_dir, tmp_path, *ARGS) as server:
        running = in_background(post, server.url, upload)
        wait_for_metric(server.url, lambda s: value(
            s, "granite_speech_engine_requests", state="running") > 0)
        core = engine_core(server.proc.pid)
        os.kill(core.pid, signal.SIGKILL)

        # Within the 3 s shutdown delay, counted from when the server saw the death (the
        # in-flight request's own 503 may come later, on a busy machine after it).
        ready = wait_for(lambda: httpx.get(f"{server.url}/ready", timeout=5),
                         lambda r: r.status_code == 503)
        assert ready.json() == {"status": "engine_dead"}
        refused = post(server.url, long_speech_wav(speech, 3), timeout=30)
        assert_envelope(refused, 503, "engine_unavailable")
        response = running.result(timeout=60)
        error = assert_envelope(response, 503, "engine_unavailable", "server_error")
        assert "engine" in error["message"]
        assert server.wait(timeout=90) == 1
        logs = server.logs()
    assert any(entry["level"] == "error" and "engine died" in entry["message"]
               for entry in json_log_lines(logs))


def test_sigterm_finishes_a_realtime_turn_then_closes_the_session(model_dir, tmp_path, speech):
    """A live speaker mid-turn when SIGTERM comes: the turn so far is committed and
    transcribed, then the socket closes with 1001 (going away) and the process exits 0."""
    from websockets.sync.client import connect

    pcm = (soxr.resample(speech, 16_000, 24_000) * 32767
           ).astype("<i2").tobytes()
    with server_process(model_dir, tmp_path, "--shutdown-grace-seconds", "60") as server:
        url = server.url.replace("http", "ws") + "/v1/realtime?intent=transcription"
        with connect(url, open_timeout=30) as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
            for start in range(0, len(pcm), 4800):  # speech, and no pause after it
                ws.send(json.dumps({"type": "input_audio_buffer.append",
                                    "audio": base64.b64encode(pcm[start:start + 4800]).decode()}))
            events = [json.loads(ws.recv(timeout=30))]
            assert events[0]["type"] == "input_audio_buffer.speech_started"
            server.proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    events.append(json.loads(ws.recv(timeout=60)))
        assert closed.value.rcvd.code == 1001
        types = [event["type"] for event in events]
        assert "input_audio_buffer.committed" in types
        (done,) = [e for e in events if e["type"].endswith("transcription.completed")]
        assert done["transcript"]
        assert server.wait(timeout=90) == 0
