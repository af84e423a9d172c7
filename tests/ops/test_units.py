"""The pure pieces of operations: admission counting, API keys, settings, log
formatting, deadlines and the metrics registry. No engine, no HTTP."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from pydantic import ValidationError
from pydantic_settings import CliApp

from granite_speech_server.admission import Admission
from granite_speech_server.api.auth import ApiKeys
from granite_speech_server.api.context import incoming_request_id
from granite_speech_server.api.deadline import Deadline, iterate_within, within
from granite_speech_server.config import Settings
from granite_speech_server.errors import (
    RequestTimeout,
    TooManyRequests,
    TooMuchAudioInFlight,
    Unauthorized,
)
from granite_speech_server.logs import JsonFormatter, RequestIdFilter, TextFormatter, request_id_var
from granite_speech_server.metrics import Metrics
from starlette.datastructures import Headers

# --- admission ---------------------------------------------------------------------


def test_admission_bounds_requests_and_releases_once():
    admission = Admission(max_requests=2)
    first, second = admission.admit(), admission.admit()
    with pytest.raises(TooManyRequests) as refused:
        admission.admit()
    assert refused.value.status_code == 429 and refused.value.headers["Retry-After"]
    assert refused.value.error_type == "requests" and refused.value.code == "overloaded"
    first.release()
    first.release()  # idempotent: a double release must not free a slot it doesn't hold
    assert admission.requests == 1
    admission.admit()
    with pytest.raises(TooManyRequests):
        admission.admit()
    second.release()
    assert admission.requests == 1


def test_admission_bounds_audio_seconds_in_flight():
    admission = Admission(max_requests=0, max_audio_seconds=100)
    a, b, c = admission.admit(), admission.admit(), admission.admit()
    a.add_audio(60)
    b.add_audio(40)  # exactly at the bound: admitted
    with pytest.raises(TooMuchAudioInFlight) as refused:
        c.add_audio(0.5)
    assert refused.value.status_code == 429 and refused.value.error_type == "audio_seconds"
    assert admission.audio_seconds == 100 and c.audio_seconds == 0
    a.release()
    c.add_audio(50)
    assert admission.audio_seconds == 90
    b.release(), c.release()
    assert (admission.requests, admission.audio_seconds) == (0, 0.0)


def test_admission_float_drift_resets_when_idle():
    admission = Admission(max_audio_seconds=10)
    tickets = [admission.admit() for _ in range(3)]
    for ticket in tickets:
        ticket.add_audio(0.1)
    for ticket in tickets:
        ticket.release()
    assert admission.audio_seconds == 0.0


def test_zero_means_no_limit():
    admission = Admission(0, 0)
    tickets = [admission.admit() for _ in range(1000)]
    for ticket in tickets:
        ticket.add_audio(1e6)


# --- API keys ----------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic a2V5", "key-one",
                                    "Bearer key-on", "Bearer key-one2", "Bearer KEY-ONE"])
def test_api_keys_refuse(header):
    keys = ApiKeys(["key-one", "key-two"])
    with pytest.raises(Unauthorized) as refused:
        keys.check(header)
    error = refused.value
    assert (error.status_code, error.error_type, error.code, error.param) == (
        401, "invalid_request_error", "invalid_api_key", None)
    assert "key-one" not in error.message and "key-two" not in error.message


@pytest.mark.parametrize("header", ["Bearer key-one", "Bearer key-two", "bearer key-two",
                                    "  Bearer   key-one  "])
def test_api_keys_accept_any_configured_key(header):
    ApiKeys(["key-one", "key-two"]).check(header)


def test_no_keys_means_auth_is_off():
    assert not ApiKeys([]).enabled and not ApiKeys(["", ""]).enabled


def test_keys_from_flags_environment_and_file(tmp_path, monkeypatch):
    key_file = tmp_path / "keys"
    key_file.write_text("# rotated 2026-01\nfile-key-1\n\n  file-key-2  \nflag-key\n")
    settings = CliApp.run(Settings, cli_args=["--api-key", "flag-key", "--api-key", "other",
                                              "--api-key-file", str(key_file)])
    assert settings.load_api_keys() == ["flag-key", "other", "file-key-1", "file-key-2"]
    monkeypatch.setenv("GRANITE_SPEECH_API_KEY", "env-1, env-2,")
    assert CliApp.run(Settings, cli_args=[]).load_api_keys() == ["env-1", "env-2"]


def test_keys_never_show_in_settings_repr_or_validation_errors():
    settings = Settings(api_key=["sekrit-key"])
    assert "sekrit-key" not in repr(settings) and "sekrit-key" not in str(settings)
    with pytest.raises(ValidationError) as invalid:
        Settings(api_key=["sekrit-key"], max_inflight_audio_seconds=10)
    assert "sekrit-key" not in str(invalid.value)


def test_inflight_audio_budget_must_hold_the_longest_upload():
    with pytest.raises(ValidationError, match="max_inflight_audio_seconds"):
        Settings(max_audio_seconds=600, max_inflight_audio_seconds=599)
    Settings(max_audio_seconds=600, max_inflight_audio_seconds=600)
    Settings(max_audio_seconds=600, max_inflight_audio_seconds=0)  # no limit


# --- request ids and logs ----------------------------------------------------------


@pytest.mark.parametrize("incoming, kept", [
    ("abc-123", True), ("4bf92f3577b34da6a3ce929d0e0e4736", True), ("a" * 128, True),
    ("a" * 129, False), ("has space", False), ("line\nbreak", False), ("", False),
    ('quote"d', False)])
def test_incoming_request_id_is_kept_only_when_sane(incoming, kept):
    headers = Headers(raw=[(b"x-request-id", incoming.encode())])
    request_id = incoming_request_id(headers)
    assert (request_id == incoming) is kept
    assert request_id and len(request_id) <= 128


def _record(**extra) -> logging.LogRecord:
    record = logging.LogRecord("granite_speech.access", logging.INFO, __file__, 1,
                               "%s %s %d", ("POST", "/v1/audio/transcriptions", 200), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_formatter_writes_one_object_with_the_extra_fields():
    record = _record(request_id="r-1", status=200, duration_s=0.25, audio_seconds=None)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "POST /v1/audio/transcriptions 200"
    assert (entry["level"], entry["logger"]) == ("info", "granite_speech.access")
    assert (entry["request_id"], entry["status"], entry["duration_s"]) == ("r-1", 200, 0.25)
    assert "audio_seconds" not in entry  # None is left out
    assert entry["time"].endswith("Z")


def test_json_formatter_keeps_tracebacks_inside_the_object():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exc_info"]


def test_text_formatter_appends_fields_as_key_values():
    line = TextFormatter().format(_record(request_id="r-2", status=200))
    assert line.endswith("POST /v1/audio/transcriptions 200 request_id=r-2 status=200")


def test_request_id_filter_tags_records_logged_inside_a_request():
    record = _record()
    token = request_id_var.set("inside")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_id_var.reset(token)
    assert record.request_id == "inside"


# --- deadlines ---------------------------------------------------------------------

asyncio_test = pytest.mark.asyncio(loop_scope="session")


def _deadline(seconds: float) -> Deadline:
    return Deadline(asyncio.get_running_loop().time() + seconds, seconds)


@asyncio_test
async def test_within_cancels_the_work_at_the_deadline():
    cancelled = asyncio.Event()

    async def work():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(RequestTimeout) as timed_out:
        await within(_deadline(0.05), work())
    assert cancelled.is_set()
    assert timed_out.value.status_code == 504 and timed_out.value.code == "request_timeout"
    assert await within(None, asyncio.sleep(0, "done")) == "done"
    assert await within(_deadline(5), asyncio.sleep(0, "done")) == "done"


@asyncio_test
async def test_within_lets_the_works_own_timeouts_through():
    async def work():
        raise TimeoutError("its own")

    with pytest.raises(TimeoutError, match="its own"):
        await within(_deadline(5), work())


@asyncio_test
async def test_iterate_within_stops_and_closes_the_stream_at_the_deadline():
    closed = asyncio.Event()

    async def events():
        try:
            for n in range(100):
                await asyncio.sleep(0.02)
                yield n
        finally:
            closed.set()

    got = []
    with pytest.raises(RequestTimeout):
        async for item in iterate_within(_deadline(0.1), events()):
            got.append(item)
            await asyncio.sleep(0.2)  # the consumer's time counts, but is never cancelled
    assert got == [0]
    assert closed.is_set()


@asyncio_test
async def test_iterate_within_passes_everything_before_the_deadline():
    async def events():
        for n in range(3):
            yield n

    assert [n async for n in iterate_within(_deadline(5), events())] == [0, 1, 2]
    assert [n async for n in iterate_within(None, events())] == [0, 1, 2]


# --- metrics registry --------------------------------------------------------------


def test_every_app_has_its_own_registry():
    """Two apps in one process (as in the tests) must not collide."""
    first = Metrics(engine_load=lambda: None, inflight_requests=lambda: 0,
                    inflight_audio_seconds=lambda: 0)
    second = Metrics(engine_load=lambda: (2, 3), inflight_requests=lambda: 1,
                     inflight_audio_seconds=lambda: 4.5)
    first.observe_request("/x", "GET", 200, None, 0.1)
    text = second.render()[0].decode()
    assert 'granite_speech_engine_requests{state="waiting"} 3.0' in text
    assert "granite_speech_inflight_audio_seconds 4.5" in text
    assert 'endpoint="/x"' not in text
    assert 'endpoint="/x"' in first.render()[0].decode()
    assert "granite_speech_engine_requests{" not in first.render()[0].decode()


# --- request context middleware ------------------------------------------------------


@asyncio_test
async def test_an_unhandled_error_is_a_500_envelope_with_the_request_id(caplog):
    """In the real middleware stack (no lifespan, no engine: just a route that fails)."""
    import httpx

    from granite_speech_server.app import create_app

    async def broken():
        raise RuntimeError("bug")

    app = create_app(Settings(model="m"))
    app.add_api_route("/broken", broken)
    caplog.set_level(logging.INFO)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as client:
        response = await client.get("/broken", headers={"X-Request-ID": "r-500"})
        scraped = (await client.get("/metrics")).text
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "r-500"
    assert response.json() == {"error": {"message": "Internal server error.",
                                         "type": "server_error", "param": None, "code": None}}
    error = next(record for record in caplog.records if record.levelno == logging.ERROR)
    assert "RuntimeError: bug" in logging.Formatter().formatException(error.exc_info)
    assert 'endpoint="/broken",method="GET",response_format="none",status="500"' in scraped


@asyncio_test
async def test_an_engine_dead_before_the_watcher_looks_is_engine_unavailable_everywhere():
    """Between the engine's death and the watcher's next look (0.2 s), /ready and the
    gate agree: ``engine_dead`` and ``engine_unavailable``, not "starting" and
    "not_ready" (as a refused upload said in a CI run)."""
    import httpx

    from granite_speech_server.app import create_app

    class DeadEngine:
        alive = False

    app = create_app(Settings(model="m"), engine=DeadEngine())
    app.state.server.phase.started_serving()  # it had served
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as client:
        ready = await client.get("/ready")
        upload = await client.post("/v1/audio/transcriptions", data={"model": "m"},
                                   files={"file": ("a.wav", b"RIFF")})
    assert (ready.status_code, ready.json()) == (503, {"status": "engine_dead"})
    assert upload.status_code == 503
    assert upload.json()["error"]["code"] == "engine_unavailable"
