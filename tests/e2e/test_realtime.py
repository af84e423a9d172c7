"""Realtime transcription sessions on the real engine: the official Python SDK's realtime
client (``client.realtime.connect``) and a raw ``websockets`` client, real speech in
OpenAI's three input formats, turns found by the server VAD or committed by hand, and a
client's mistakes answered with error events while the session goes on."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import openai
import pytest
import pytest_asyncio
import websockets

from tests import audio_samples
from tests.e2e.test_transcriptions import MODEL

pytestmark = pytest.mark.asyncio(loop_scope="session")

CLIPS = ["three one four one five nine", "two six five three five"]
CHUNK_MS = 100


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("realtime")
    return [audio_samples.synthesize_speech(text, out / f"clip{i}.wav")
            for i, text in enumerate(CLIPS)]


@pytest.fixture(scope="module")
def streams(clips, tmp_path_factory) -> dict[str, bytes]:
    """Both clips with pauses around them, in each Realtime input format."""
    out = tmp_path_factory.mktemp("realtime-streams")
    return {fmt: audio_samples.realtime_stream(clips, fmt, out / f"stream-{i}.raw")
            for i, fmt in enumerate(audio_samples.REALTIME_CODECS)}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def file_texts(server_url, clips) -> list[str]:
    """What the file API makes of each clip: what each turn should read."""
    client = openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0)
    return [(await client.audio.transcriptions.create(
        model=MODEL, file=(clip.name, clip.read_bytes()))).text for clip in clips]


def chunks(stream: bytes, fmt: str) -> list[str]:
    """The stream as base64 appends of CHUNK_MS each, as a live client sends them."""
    _, rate = audio_samples.REALTIME_CODECS[fmt]
    size = rate * CHUNK_MS // 1000 * (2 if fmt == "audio/pcm" else 1)
    return [base64.b64encode(stream[i:i + size]).decode() for i in range(0, len(stream), size)]


def session(fmt: str, **changes) -> dict:
    audio_format = {"type": fmt, **({"rate": 24000} if fmt == "audio/pcm" else {})}
    return {"type": "transcription",
            "audio": {"input": {"format": audio_format, **changes}}}


async def completed_turns(events, count: int) -> list[dict]:
    """Events until ``count`` items completed (a failed one fails the test)."""
    seen = []
    async for event in events:
        seen.append(event)
        assert event["type"] != "conversation.item.input_audio_transcription.failed", event
        if sum(e["type"].endswith("transcription.completed") for e in seen) == count:
            return seen
    raise AssertionError(f"the socket closed after {seen}")


def transcripts(seen: list[dict]) -> list[str]:
    """Each item's final transcript, in the order the items were committed."""
    done = {e["item_id"]: e["transcript"] for e in seen
            if e["type"].endswith("transcription.completed")}
    return [done[e["item_id"]] for e in seen if e["type"] == "input_audio_buffer.committed"]


@pytest.mark.parametrize("fmt", list(audio_samples.REALTIME_CODECS))
async def test_sdk_session_transcribes_each_turn(server_url, streams, file_texts, fmt):
    client = openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0)
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        created = await connection.recv()
        assert created.type == "session.created"
        await connection.session.update(session=session(fmt))
        updated = await connection.recv()
        assert updated.type == "session.updated"
        assert updated.session.audio.input.format.type == fmt
        for chunk in chunks(streams[fmt], fmt):
            await connection.input_audio_buffer.append(audio=chunk)

        async def events():
            async for event in connection:
                yield event.model_dump()
        seen = await completed_turns(events(), 2)
    types = [event["type"] for event in seen]
    assert types.count("input_audio_buffer.speech_started") == 2
    assert types.count("input_audio_buffer.speech_stopped") == 2
    committed = [e for e in seen if e["type"] == "input_audio_buffer.committed"]
    assert committed[1]["previous_item_id"] == committed[0]["item_id"]
    for item, expected in zip(committed, file_texts):
        mine = [e for e in seen if e.get("item_id") == item["item_id"]]
        deltas = "".join(e["delta"] for e in mine if e["type"].endswith(".delta"))
        (done,) = [e for e in mine if e["type"].endswith(".completed")]
        assert done["transcript"] == deltas == expected
        assert done["usage"]["input_token_details"]["audio_tokens"] > 0
    starts = [e["audio_start_ms"] for e in seen if e["type"].endswith("speech_started")]
    stops = [e["audio_end_ms"] for e in seen if e["type"].endswith("speech_stopped")]
    assert 0 < starts[0] < stops[0] < starts[1] < stops[1]


async def raw_session(server_url: str):
    url = server_url.replace("http", "ws") + "/v1/realtime?intent=transcription"
    return websockets.connect(url, max_size=None)


async def receive(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout=120))


async def test_manual_commits_and_mistakes_over_a_raw_socket(server_url, streams, file_texts):
    fmt = "audio/pcm"
    async with await raw_session(server_url) as ws:
        assert (await receive(ws))["type"] == "session.created"
        await ws.send(json.dumps({"type": "session.update",
                                  "session": session(fmt, turn_detection=None)}))
        updated = await receive(ws)
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        mistakes = [
            ({"type": "input_audio_buffer.commit", "event_id": "c1"},
             "input_audio_buffer_commit_empty"),
            ({"type": "input_audio_buffer.append", "audio": "not base64!"}, "invalid_value"),
            ({"type": "response.create"}, "unsupported_event"),
            ({"type": "no.such.event"}, "invalid_event"),
            ({"type": "session.update", "session": {"type": "transcription",
                                                    "audio": {"input": {"noise_reduction": {
                                                        "type": "near_field"}}}}},
             "invalid_request"),
        ]
        for event, code in mistakes:
            await ws.send(json.dumps(event))
            error = await receive(ws)
            assert (error["type"], error["error"]["code"]) == ("error", code), error
        assert error["error"]["param"] == "session.audio.input.noise_reduction"
        await ws.send("{not json")
        assert (await receive(ws))["error"]["code"] == "invalid_json"
        # The session lives on: the whole stream, committed by hand, is one item.
        for chunk in chunks(streams[fmt], fmt):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))

        async def events():
            while True:
                yield await receive(ws)
        seen = await completed_turns(events(), 1)
    assert not any(e["type"].startswith("input_audio_buffer.speech") for e in seen)
    (done,) = [e for e in seen if e["type"].endswith(".completed")]
    assert done["transcript"] == " ".join(file_texts)
    assert done["languages"] == [{"code": "en"}]


async def test_clear_drops_the_uncommitted_audio(server_url, streams):
    fmt = "audio/pcm"
    async with await raw_session(server_url) as ws:
        await receive(ws)
        await ws.send(json.dumps({"type": "session.update",
                                  "session": session(fmt, turn_detection=None)}))
        await receive(ws)
        for chunk in chunks(streams[fmt], fmt)[:20]:
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        assert (await receive(ws))["type"] == "input_audio_buffer.cleared"
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        assert (await receive(ws))["error"]["code"] == "input_audio_buffer_commit_empty"


async def test_eight_sessions_at_once_are_each_transcribed(server_url, streams, file_texts):
    fmt = "audio/pcmu"

    async def one() -> list[str]:
        async with await raw_session(server_url) as ws:
            await receive(ws)
            await ws.send(json.dumps({"type": "session.update", "session": session(fmt)}))
            await receive(ws)
            for chunk in chunks(streams[fmt], fmt):
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))

            async def events():
                while True:
                    yield await receive(ws)
            seen = await completed_turns(events(), 2)
        return transcripts(seen)

    assert await asyncio.gather(*[one() for _ in range(8)]) == [file_texts] * 8


async def test_sdk_translation_session_into_french(server_url, clips, streams):
    """``client.realtime.translations.connect``: each turn translated as it ends, the
    French in turn order as output deltas, the English as input deltas, then closed."""
    client = openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0)
    expected = [(await client.audio.translations.create(
        model=MODEL, file=(clip.name, clip.read_bytes()),
        extra_body={"to_language": "fr", "language": "en"})).text for clip in clips]
    heard = [(await client.audio.transcriptions.create(
        model=MODEL, file=(clip.name, clip.read_bytes()))).text for clip in clips]
    assert all(expected) and all(heard)
    async with client.realtime.translations.connect(model=MODEL) as connection:
        created = await connection.recv()
        assert created.type == "session.created" and created.session.type == "translation"
        await connection.session.update(session={"audio": {
            "output": {"language": "fr"}, "input": {"transcription": {"model": MODEL}}}})
        updated = await connection.recv()
        assert updated.session.audio.output.language == "fr"
        for chunk in chunks(streams["audio/pcm"], "audio/pcm"):
            await connection.session.input_audio_buffer.append(audio=chunk)
        await connection.session.close()
        events = [event async for event in _until_closed(connection)]
    assert events[-1].type == "session.closed"
    output = "".join(e.delta for e in events if e.type == "session.output_transcript.delta")
    source = "".join(e.delta for e in events if e.type == "session.input_transcript.delta")
    assert output == " ".join(expected)
    assert source == " ".join(heard)
    assert not [e for e in events if e.type in ("error", "session.output_audio.delta")]


async def _until_closed(connection):
    async for event in connection:
        yield event
        if event.type == "session.closed":
            return
