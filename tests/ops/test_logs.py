"""Access log and request ids on a live server: one line per request, with its id,
shape and outcome, and never a key or the Authorization header."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from granite_speech_server.logs import ACCESS_LOGGER, JsonFormatter, TextFormatter
from tests.conftest import live_server
from tests.ops.conftest import MODEL

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = "sk-live-do-not-log-4f9a2c"
WRONG_KEY = "sk-wrong-do-not-log-77e1"


async def test_one_access_line_per_request_with_id_shape_and_outcome(
        settings, engine, speech, speech_wav, caplog):
    caplog.set_level(logging.INFO)
    keyed = settings.model_copy(update={"api_key": [KEY]})
    auth = {"Authorization": f"Bearer {KEY}"}
    async with live_server(keyed, engine) as url, httpx.AsyncClient(base_url=url) as client:
        ok = await client.post("/v1/audio/transcriptions",
                               files={"file": ("speech.wav", speech_wav)},
                               data={"model": MODEL, "response_format": "verbose_json"},
                               headers={**auth, "X-Request-ID": "trace-42"})
        generated = await client.get("/v1/models", headers={**auth, "X-Request-ID": "bad id"})
        refused = await client.get("/v1/models", headers={"Authorization": f"Bearer {WRONG_KEY}"})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "trace-42"
    assert generated.status_code == 200
    assert generated.headers["x-request-id"] not in ("", "bad id")
    assert refused.status_code == 401 and refused.headers["x-request-id"]

    access = {record.request_id: record for record in caplog.records
              if record.name == ACCESS_LOGGER}
    line = access["trace-42"]
    assert (line.method, line.path, line.status, line.response_format) == (
        "POST", "/v1/audio/transcriptions", 200, "verbose_json")
    assert line.audio_seconds == pytest.approx(len(speech) / 16000, abs=1e-3)
    assert line.duration_s > 0 and line.client == "127.0.0.1"
    assert access[generated.headers["x-request-id"]].path == "/v1/models"
    assert access[refused.headers["x-request-id"]].status == 401

    for formatter in (JsonFormatter(), TextFormatter()):
        text = "\n".join(formatter.format(record) for record in caplog.records)
        assert KEY not in text and WRONG_KEY not in text
        assert "authorization" not in text.lower() and "bearer" not in text.lower()
    entry = json.loads(JsonFormatter().format(line))
    assert entry["request_id"] == "trace-42" and entry["status"] == 200
