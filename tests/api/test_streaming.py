"""stream=true: OpenAI's transcript.text.* events, read raw and by the SDK; a failure
after the stream began is its last event, in the same envelope as an HTTP error."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from granite_speech_server.errors import EngineError
from tests.api.conftest import MODEL, post, sdk

TEXT = "hello world"


def events_of(response: httpx.Response) -> list[dict]:
    lines = [line for line in response.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [json.loads(line.removeprefix("data: ")) for line in lines]


@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_deltas_then_done(client, speech_wav, fmt):
    response = await post(client, speech_wav, {"stream": "true", "response_format": fmt})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    *deltas, done = events_of(response)
    assert len(deltas) > 1, "the fake engine streams token by token"
    assert all(list(event) == ["type", "delta"] for event in deltas)
    assert {event["type"] for event in deltas} == {"transcript.text.delta"}
    assert done["type"] == "transcript.text.done"
    assert "".join(event["delta"] for event in deltas) == done["text"] == TEXT
    assert done["usage"]["type"] == "tokens" and done["usage"]["output_tokens"] > 0


async def test_the_stream_s_usage_is_the_json_usage(client, speech_wav):
    *_, done = events_of(await post(client, speech_wav, {"stream": "true"}))
    plain = (await post(client, speech_wav)).json()
    assert done["usage"] == plain["usage"]


async def test_logprobs_stream_with_their_deltas(client, speech_wav):
    *deltas, done = events_of(await post(client, speech_wav, {"stream": "true",
                                                              "include[]": "logprobs"}))
    assert all(d["logprobs"] for d in deltas)
    # The first delta loses the text's leading space; its token keeps it.
    streamed = "".join(lp["token"] for d in deltas for lp in d["logprobs"])
    assert streamed.strip() == "".join(d["delta"] for d in deltas) == done["text"]
    assert len(done["logprobs"]) == done["usage"]["output_tokens"]


async def test_the_sdk_reads_the_stream(client, speech_wav):
    stream = await sdk(client).audio.transcriptions.create(
        model=MODEL, file=("speech.wav", speech_wav), stream=True)
    events = [event async for event in stream]
    assert events[-1].type == "transcript.text.done"
    assert "".join(e.delta for e in events[:-1]) == events[-1].text == TEXT


async def test_an_engine_failure_mid_stream_is_the_last_event(client, fake_engine, speech_wav):
    fake_engine.fail_with = EngineError("The inference engine stopped.")
    response = await post(client, speech_wav, {"stream": "true"})
    assert response.status_code == 200  # sent before the failure
    *deltas, last = events_of(response)
    assert [event["type"] for event in deltas] == ["transcript.text.delta"]
    assert last == {"type": "error", "error": {"message": "The inference engine stopped.",
                                               "type": "server_error", "param": None,
                                               "code": "engine_unavailable"}}


async def test_the_same_failure_before_a_stream_is_the_same_envelope(client, fake_engine,
                                                                     speech_wav):
    fake_engine.fail_with = EngineError("The inference engine stopped.")
    response = await post(client, speech_wav)
    assert response.status_code == 503
    assert response.json() == {"error": {"message": "The inference engine stopped.",
                                         "type": "server_error", "param": None,
                                         "code": "engine_unavailable"}}


async def test_a_bug_mid_stream_is_the_500_envelope_without_internals(client, fake_engine,
                                                                     speech_wav):
    fake_engine.fail_with = RuntimeError("secret internals")
    *_, last = events_of(await post(client, speech_wav, {"stream": "true"}))
    assert last == {"type": "error", "error": {"message": "Internal server error.",
                                               "type": "server_error", "param": None,
                                               "code": None}}
    plain = await post(client, speech_wav)
    assert plain.status_code == 500 and plain.json() == {"error": last["error"]}


async def test_the_sdk_raises_the_error_event(client, fake_engine, speech_wav):
    fake_engine.fail_with = EngineError("The inference engine stopped.")
    stream = await sdk(client).audio.transcriptions.create(
        model=MODEL, file=("speech.wav", speech_wav), stream=True)
    received = []
    with pytest.raises(openai.APIError) as raised:
        async for event in stream:
            received.append(event)
    assert [event.type for event in received] == ["transcript.text.delta"]
    assert raised.value.message == "The inference engine stopped."
