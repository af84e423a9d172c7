"""Realtime transcription sessions on the scripted engine (Starlette's TestClient speaks
WebSocket in-process): the protocol's shapes, checked against the OpenAI SDK's own types,
refusals before the upgrade, session configuration, limits and keyword biasing."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai.types.realtime import (
    ConversationItemInputAudioTranscriptionCompletedEvent,
    InputAudioBufferCommittedEvent,
    InputAudioBufferSpeechStartedEvent,
    RealtimeErrorEvent,
    RealtimeTranslationOutputTranscriptDeltaEvent,
    RealtimeTranslationSessionCreatedEvent,
    RealtimeTranslationSessionUpdatedEvent,
    SessionCreatedEvent,
    SessionUpdatedEvent,
)
from starlette.testclient import WebSocketDenialResponse

from granite_speech_server.app import create_app
from tests import audio_samples
from tests.api.conftest import api_settings
from tests.api.fake_engine import FakeEngine

URL = "/v1/realtime?intent=transcription"


@pytest.fixture(scope="module")
def speech_pcm(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("realtime-api")
    clip = audio_samples.synthesize_speech("three one four one five nine", out / "clip.wav")
    return audio_samples.realtime_stream([clip, clip], "audio/pcm", out / "stream.raw")


@contextlib.contextmanager
def app_client(engine: FakeEngine, **settings: Any) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings(**settings), engine)) as client:
        for _ in range(500):
            if client.get("/ready").status_code == 200:
                break
            time.sleep(0.01)
        yield client


@pytest.fixture
def client(fake_engine) -> Iterator[TestClient]:
    with app_client(fake_engine) as client:
        yield client


def send(ws, event_type: str, **fields: Any) -> None:
    ws.send_text(json.dumps({"type": event_type, **fields}))


def append_all(ws, pcm: bytes, chunk: int = 4800) -> None:
    for start in range(0, len(pcm), chunk):
        send(ws, "input_audio_buffer.append",
             audio=base64.b64encode(pcm[start:start + chunk]).decode())


def until(ws, event_type: str) -> list[dict]:
    events = []
    while True:
        events.append(json.loads(ws.receive_text()))
        if events[-1]["type"] == event_type:
            return events


def update(ws, **session: Any) -> dict:
    send(ws, "session.update", session={"type": "transcription", **session})
    return json.loads(ws.receive_text())


def test_session_events_are_the_sdk_s_types(client, speech_pcm):
    with client.websocket_connect(URL) as ws:
        created = SessionCreatedEvent.model_validate_json(ws.receive_text())
        assert created.session.type == "transcription"
        assert created.session.audio.input.turn_detection.type == "server_vad"
        append_all(ws, speech_pcm)
        events = until(ws, "conversation.item.input_audio_transcription.completed")
    started = InputAudioBufferSpeechStartedEvent.model_validate(events[0])
    committed = InputAudioBufferCommittedEvent.model_validate(
        next(e for e in events if e["type"] == "input_audio_buffer.committed"))
    done = ConversationItemInputAudioTranscriptionCompletedEvent.model_validate(events[-1])
    assert started.item_id == committed.item_id == done.item_id
    assert done.transcript == "hello world" and done.usage.type == "tokens"
    assert [lang.code for lang in done.languages] == ["en"]
    assert done.logprobs is None  # not asked for


def test_an_update_changes_only_what_it_names(client):
    with client.websocket_connect(URL) as ws:
        ws.receive_text()
        first = update(ws, audio={"input": {"transcription": {"language": "fr"}}})
        second = SessionUpdatedEvent.model_validate(
            update(ws, audio={"input": {"turn_detection": None,
                                        "format": {"type": "audio/pcmu"}}},
                   include=["item.input_audio_transcription.logprobs"]))
    assert first["session"]["audio"]["input"]["transcription"]["language"] == "fr"
    audio_input = second.session.audio.input
    assert audio_input.transcription.language == "fr"  # kept
    assert audio_input.turn_detection is None and audio_input.format.type == "audio/pcmu"
    assert second.session.include == ["item.input_audio_transcription.logprobs"]


@pytest.mark.parametrize(("session", "param"), [
    ({"audio": {"input": {"noise_reduction": {"type": "far_field"}}}},
     "session.audio.input.noise_reduction"),
    ({"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}},
     "session.audio.input.turn_detection.type"),
    ({"audio": {"input": {"transcription": {"delay": "low"}}}},
     "session.audio.input.transcription.delay"),
    ({"audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}}},
     "audio.input.transcription.model"),
    ({"audio": {"input": {"transcription": {"languages": ["en", "xx"]}}}}, "languages"),
    ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
     "session.audio.input.format.audio/pcm.rate"),
])
def test_what_a_session_can_t_do_is_an_error_naming_it(client, session, param):
    with client.websocket_connect(URL) as ws:
        ws.receive_text()
        error = RealtimeErrorEvent.model_validate(update(ws, **session))
        assert error.error.param == param, error
        # The session is unchanged and alive.
        assert update(ws)["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"


def test_keywords_and_logprobs_as_in_the_file_api(client, fake_engine, speech_pcm):
    with client.websocket_connect(URL) as ws:
        ws.receive_text()
        update(ws, audio={"input": {"turn_detection": None, "transcription": {
            "prompt": "IBM", "keywords": ["Granite", "vLLM"]}}},
            include=["item.input_audio_transcription.logprobs"])
        append_all(ws, speech_pcm)
        send(ws, "input_audio_buffer.commit")
        events = until(ws, "conversation.item.input_audio_transcription.completed")
    prompt = fake_engine.tokenizer.decode(fake_engine.requests[-1].prompt_token_ids)
    assert "Keywords: IBM, Granite, vLLM" in prompt
    deltas = [e for e in events if e["type"].endswith(".delta")]
    assert all(e["logprobs"] for e in deltas)
    assert len(events[-1]["logprobs"]) == events[-1]["usage"]["output_tokens"]


def test_a_monologue_is_committed_in_pieces(fake_engine, speech_pcm):
    with app_client(fake_engine, max_segment_seconds=2) as client, \
            client.websocket_connect(URL) as ws:
        ws.receive_text()
        append_all(ws, speech_pcm)
        events = until(ws, "input_audio_buffer.speech_stopped")
    types = [e["type"] for e in events]
    first_stop = types.index("input_audio_buffer.speech_stopped")
    # Each utterance is ~2.4 s: cut once before its end, each piece an item of its own.
    assert types[:first_stop].count("input_audio_buffer.committed") >= 1
    assert types.count("input_audio_buffer.speech_started") == 1


def test_the_uncommitted_audio_is_bounded(fake_engine, speech_pcm):
    with app_client(fake_engine, realtime_max_buffer_seconds=1) as client, \
            client.websocket_connect(URL) as ws:
        ws.receive_text()
        update(ws, audio={"input": {"turn_detection": None}})
        append_all(ws, speech_pcm[:48_000])  # 1 s: fits
        append_all(ws, speech_pcm[:4800])
        error = json.loads(ws.receive_text())
        assert error["error"]["code"] == "input_audio_buffer_full"
        send(ws, "input_audio_buffer.commit")
        assert json.loads(ws.receive_text())["type"] == "input_audio_buffer.committed"
        until(ws, "conversation.item.input_audio_transcription.completed")


def test_an_idle_session_is_told_and_closed(fake_engine):
    with app_client(fake_engine, realtime_idle_timeout_seconds=0.3) as client, \
            client.websocket_connect(URL) as ws:
        ws.receive_text()
        error = json.loads(ws.receive_text())
        assert error["error"]["code"] == "session_idle_timeout"
        assert ws.receive()["code"] == 1008


@pytest.mark.parametrize(("url", "status", "param"), [
    ("/v1/realtime", 400, "intent"),
    ("/v1/realtime?intent=conversation", 400, "intent"),
    ("/v1/realtime?intent=transcription&model=gpt-realtime", 404, "model"),
])
def test_refusals_come_before_the_upgrade(client, url, status, param):
    with pytest.raises(WebSocketDenialResponse) as denied:
        with client.websocket_connect(url):
            pass
    assert denied.value.status_code == status
    assert denied.value.json()["error"]["param"] == param


def test_api_keys_and_the_session_limit_are_checked_before_the_upgrade(fake_engine):
    with app_client(fake_engine, api_key=["k"], realtime_max_sessions=1) as client:
        with pytest.raises(WebSocketDenialResponse) as denied:
            with client.websocket_connect(URL):
                pass
        assert denied.value.status_code == 401
        auth = {"Authorization": "Bearer k"}
        with client.websocket_connect(URL, headers=auth) as ws:
            ws.receive_text()
            with pytest.raises(WebSocketDenialResponse) as full:
                with client.websocket_connect(URL, headers=auth):
                    pass
            assert full.value.status_code == 429
        with client.websocket_connect(URL, headers=auth) as ws:  # the slot is free again
            assert json.loads(ws.receive_text())["type"] == "session.created"


TRANSLATIONS = "/v1/realtime/translations?model=whisper-1"


def test_a_translation_session_in_the_sdk_s_shapes(tokenizer, speech_pcm):
    engine = FakeEngine(tokenizer, texts=[" bonjour"])
    with app_client(engine) as client, client.websocket_connect(TRANSLATIONS) as ws:
        created = RealtimeTranslationSessionCreatedEvent.model_validate_json(ws.receive_text())
        assert created.session.audio.output.language == "en"
        assert created.session.model_extra["output_modalities"] == ["text"]
        send(ws, "session.update", session={"audio": {"output": {"language": "fr"}}})
        updated = RealtimeTranslationSessionUpdatedEvent.model_validate_json(ws.receive_text())
        assert updated.session.audio.output.language == "fr"
        for start in range(0, len(speech_pcm), 4800):
            send(ws, "session.input_audio_buffer.append",
                 audio=base64.b64encode(speech_pcm[start:start + 4800]).decode())
        send(ws, "session.close")
        events = until(ws, "session.closed")
        assert ws.receive()["code"] == 1000
    deltas = [RealtimeTranslationOutputTranscriptDeltaEvent.model_validate(e)
              for e in events if e["type"] == "session.output_transcript.delta"]
    assert "".join(d.delta for d in deltas) == "bonjour bonjour"  # two turns, in order
    assert deltas[-1].elapsed_ms % 200 == 0 and deltas[-1].elapsed_ms > deltas[0].elapsed_ms
    assert not any(e["type"] == "session.input_transcript.delta" for e in events)  # not asked
    prompts = {engine.tokenizer.decode(r.prompt_token_ids) for r in engine.requests}
    assert all("translate the speech to French" in prompt for prompt in prompts)


@pytest.mark.parametrize(("session", "param"), [
    ({"audio": {"output": {"language": "ko"}}}, "session.audio.output.language"),
    ({"audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}}}, "model"),
    ({"audio": {"input": {"noise_reduction": {"type": "near_field"}}}},
     "session.audio.input.noise_reduction"),
    ({"voice": "alloy"}, "session.voice"),
])
def test_what_a_translation_session_can_t_do_is_an_error(client, session, param):
    with client.websocket_connect(TRANSLATIONS) as ws:
        ws.receive_text()
        send(ws, "session.update", session=session)
        error = RealtimeErrorEvent.model_validate_json(ws.receive_text())
        assert error.error.param == param
        send(ws, "session.update", session={})
        assert json.loads(ws.receive_text())["session"]["audio"]["output"]["language"] == "en"


def metric(client: TestClient, name: str) -> float:
    line = next(line for line in client.get("/metrics").text.splitlines()
                if line.startswith(name))
    return float(line.rsplit(" ", 1)[1])


def test_sessions_turns_audio_and_latency_are_metrics(client, speech_pcm):
    with client.websocket_connect(URL) as ws:
        ws.receive_text()
        assert metric(client, "granite_speech_realtime_sessions") == 1
        append_all(ws, speech_pcm)
        until(ws, "conversation.item.input_audio_transcription.completed")
        until(ws, "conversation.item.input_audio_transcription.completed")
        send(ws, "no.such.event")  # answered after every append before it was taken in
        until(ws, "error")
    turns = 'granite_speech_realtime_turns_total{session="transcription"}'
    assert metric(client, turns) == 2
    audio = 'granite_speech_realtime_audio_received_seconds_total{session="transcription"}'
    assert metric(client, audio) == pytest.approx(len(speech_pcm) / 48_000, abs=0.01)
    latency = 'granite_speech_realtime_turn_latency_seconds_count{session="transcription"}'
    assert metric(client, latency) == 2
    transcribed = 'granite_speech_audio_transcribed_seconds_total{endpoint="/v1/realtime"}'
    assert 0 < metric(client, transcribed) < len(speech_pcm) / 48_000
    assert metric(client, "granite_speech_realtime_sessions") == 0
    assert metric(client, "granite_speech_inflight_audio_seconds") == 0  # every turn released


def test_a_client_faster_than_the_engine_is_told_and_bounded(fake_engine, speech_pcm):
    with app_client(fake_engine, realtime_max_buffer_seconds=5) as client, \
            client.websocket_connect(URL) as ws:
        ws.receive_text()
        fake_engine.hold()  # the engine takes nothing: every turn stays pending
        append_all(ws, speech_pcm * 3)
        errors = [e for e in until(ws, "error") if e["type"] == "error"]
        assert errors[0]["error"]["code"] == "input_audio_buffer_full"
        assert "being transcribed" in errors[0]["error"]["message"]
        fake_engine.release()
        until(ws, "conversation.item.input_audio_transcription.completed")


def test_a_client_that_vanishes_frees_its_session_at_once(fake_engine, speech_pcm):
    with app_client(fake_engine) as client:
        with client.websocket_connect(URL) as ws:
            ws.receive_text()
            fake_engine.hold()  # the turn stays in the engine until cancelled
            append_all(ws, speech_pcm[:len(speech_pcm) // 2])
            until(ws, "input_audio_buffer.committed")
            assert metric(client, "granite_speech_inflight_audio_seconds") > 0
        # Gone mid-turn: its work is cancelled (aborted in the engine), its share released.
        for _ in range(100):
            if metric(client, "granite_speech_realtime_sessions") == 0 and \
                    metric(client, "granite_speech_inflight_audio_seconds") == 0:
                break
            time.sleep(0.01)
        assert metric(client, "granite_speech_realtime_sessions") == 0
        assert metric(client, "granite_speech_inflight_audio_seconds") == 0
        fake_engine.release()
