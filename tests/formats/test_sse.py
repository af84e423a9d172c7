"""The event stream as text: deltas, the done event, and an error event that carries the
same envelope an HTTP error would. And the formats' purity: nothing of the API, the
web framework or the engine is imported."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from granite_speech_server.asr.transcript import (
    Finished,
    TextDelta,
    TokenLogprob,
    Transcript,
    Usage,
)
from granite_speech_server.errors import EngineError, error_body
from granite_speech_server.formats.sse import event_stream

USAGE = Usage(audio_tokens=12, text_tokens=3, output_tokens=2, seconds=1.0)
DONE = Finished(Transcript(task="transcribe", text="a b", language=None, duration=1.0,
                           segments=[], usage=USAGE, detected_languages=("en",)))


async def events_of(*items, error: BaseException | None = None):
    for item in items:
        yield item
    if error is not None:
        raise error


async def lines(stream) -> list[dict]:
    raw = [line async for line in stream.events]
    assert all(line.startswith("data: ") and line.endswith("\n\n") for line in raw), raw
    return [json.loads(line.removeprefix("data: ")) for line in raw]


async def test_deltas_then_done_with_usage():
    stream = event_stream(events_of(TextDelta("a"), TextDelta(" b"), DONE), include_logprobs=False)
    assert stream.media_type == "text/event-stream"
    assert stream.headers == {"Cache-Control": "no-cache"}
    events = await lines(stream)
    assert [e["type"] for e in events] == ["transcript.text.delta"] * 2 + ["transcript.text.done"]
    assert [e.get("delta") for e in events[:2]] == ["a", " b"]
    assert "logprobs" not in events[0] and "logprobs" not in events[2]
    assert events[2]["usage"]["total_tokens"] == 17
    assert events[2]["languages"] == [{"code": "en"}]


async def test_logprobs_when_asked():
    delta = TextDelta("é", [TokenLogprob("é", -0.5)])
    first, _ = await lines(event_stream(events_of(delta, DONE), include_logprobs=True))
    assert first["logprobs"] == [{"token": "é", "logprob": -0.5, "bytes": [0xC3, 0xA9]}]


async def test_a_server_error_mid_stream_is_its_envelope_as_the_last_event():
    failure = EngineError("The engine stopped.")
    events = await lines(event_stream(events_of(TextDelta("a"), error=failure),
                                      include_logprobs=False))
    assert events[0]["delta"] == "a"
    assert events[1] == {"type": "error", **error_body(failure)}
    assert events[1]["error"] == {"message": "The engine stopped.", "type": "server_error",
                                  "param": None, "code": "engine_unavailable"}


async def test_a_bug_mid_stream_is_the_500_envelope_and_is_logged(caplog):
    caplog.set_level(logging.ERROR)
    events = await lines(event_stream(events_of(TextDelta("a"), error=KeyError("secret")),
                                      include_logprobs=False))
    assert events[-1] == {"type": "error", "error": {"message": "Internal server error.",
                                                     "type": "server_error", "param": None,
                                                     "code": None}}
    assert "secret" not in json.dumps(events)
    assert any(record.exc_info for record in caplog.records)


async def test_the_stream_closes_its_source():
    closed = []

    async def source():
        try:
            yield TextDelta("a")
            yield TextDelta("b")
        finally:
            closed.append(True)

    stream = event_stream(source(), include_logprobs=False)
    await anext(stream.events)
    await stream.events.aclose()
    assert closed == [True]


@pytest.mark.parametrize("module", ["render", "sse", "openai", "subtitles"])
def test_the_formats_import_nothing_of_the_api_the_framework_or_the_engine(module):
    code = (f"import sys, granite_speech_server.formats.{module}; "
            "print('\\n'.join(sys.modules))")
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                text=True).stdout.split())
    forbidden = {"granite_speech_server.api", "granite_speech_server.asr.engine",
                 "granite_speech_server.asr.transcriber", "fastapi", "starlette", "vllm",
                 "torch"}
    assert loaded & forbidden == set()
    assert f"granite_speech_server.formats.{module}" in loaded
